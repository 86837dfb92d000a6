"""The LLM simulated user: local JSON repair, one retry, the counted scripted fallback,
content validation, metrics by verifiers (not by the model's claims), grading of the draft
answer, the LLM answer judge, the engine wiring, and a whole session on SmolLM2."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from msgspec.structs import replace

from tests.test_llm_extractor import CannedLLM
from vars_core.answer_judge import ANSWER_SCHEMA, LLMAnswerJudge
from vars_core.config import load_config
from vars_core.engine import Engine
from vars_core.json_repair import RepairError, parse_object
from vars_core.llm.base import LLMError
from vars_core.llm.openai import OpenAIChat
from vars_core.llm.scripted import ScriptedChat
from vars_core.llm_user import (
    EMPTY_RESPONSE_MESSAGE,
    LLMUser,
    ReplyError,
    read_reply,
    user_schema,
)
from vars_core.problems import load_problems
from vars_core.runner import run_lane
from vars_core.scripted.profiles import generate_profiles
from vars_core.scripted.rating import rate_reply
from vars_core.scripted.user import ScriptedUserParams, opening_message, simulate_turn
from vars_core.store import StateStore
from vars_core.types import Message, Problem, SimulatorTurn

pytest_plugins = ["tests.llm_servers"]

PROFILE = generate_profiles(1, seed=3)[0]  # fmt_bullets, math_steps, fmt_no_bold, math_latex, ...
IDS = [p.pref_id for p in PROFILE.preferences]
MATH = Problem("p-add", "math-500", "What is $2+2$?", "4")
FREE = Problem("p-free", "trivia", "Who wrote Hamlet?", "William Shakespeare")
REPLY_PLAIN = "2 + 2 = 4.\n\nFinal answer: 4"  # no bullets, no steps, no LaTeX


def _conversation(problem: Problem = MATH, reply: str = REPLY_PLAIN) -> tuple[str, list[Message]]:
    opening, _ = opening_message(PROFILE, problem, np.random.default_rng(0), ScriptedUserParams())
    return opening, [Message("user", opening, 1), Message("assistant", reply, 1)]


def _turn(user: LLMUser, problem: Problem = MATH, reply: str = REPLY_PLAIN, turn: int = 2, max_turns: int = 4):
    opening, history = _conversation(problem, reply)
    return user(PROFILE, problem, opening, history, turn, max_turns, np.random.default_rng(7))


def _json(**fields) -> str:
    base = {"preferences_satisfied": {}, "enforce": False, "draft_answer": "4", "terminate": False,
            "response": "Could you check that again?"}
    return json.dumps({**base, **fields})


# --------------------------------------------------------------------------- repair


BROKEN: list[tuple[str, str, dict, set[str]]] = [
    # (case, model output, expected fields, repairs that must be reported)
    (
        "fenced",
        '```json\n{"preferences_satisfied": {"fmt_bullets": false}, "enforce": true, '
        '"draft_answer": "4", "terminate": false, "response": "Please use bullet points."}\n```',
        {"preferences_satisfied": {"fmt_bullets": False}, "enforce": True, "draft_answer": "4",
         "terminate": False, "response": "Please use bullet points."},
        {"fence"},
    ),
    (
        "prose before and after",
        'Sure! Here is my reply as the user:\n{"enforce": false, "draft_answer": "4", '
        '"terminate": true, "response": "Thanks! TERMINATE"}\nI hope this helps.',
        {"enforce": False, "draft_answer": "4", "terminate": True, "response": "Thanks! TERMINATE"},
        {"prose"},
    ),
    (
        "single quotes and Python literals",
        "{'preferences_satisfied': {'fmt_bullets': True, 'math_steps': False}, 'enforce': True, "
        "'draft_answer': None, 'terminate': False, 'response': 'It's missing the steps.'}",
        {"preferences_satisfied": {"fmt_bullets": True, "math_steps": False}, "enforce": True,
         "draft_answer": "", "terminate": False, "response": "It's missing the steps."},
        {"single_quotes", "python_literals"},
    ),
    (
        "trailing commas",
        '{"preferences_satisfied": {"fmt_bullets": true,}, "enforce": false, "draft_answer": "4", '
        '"terminate": false, "response": "ok, go on",}',
        {"preferences_satisfied": {"fmt_bullets": True}, "response": "ok, go on"},
        {"trailing_comma"},
    ),
    (
        "unquoted keys",
        '{enforce: false, terminate: false, response: "Can you check again?", draft_answer: "5"}',
        {"enforce": False, "terminate": False, "response": "Can you check again?", "draft_answer": "5"},
        {"unquoted_keys"},
    ),
    (
        "truncated inside the response",
        '{"preferences_satisfied": {"fmt_bullets": false}, "enforce": true, "draft_answer": "4", '
        '"terminate": false, "response": "Please use bullet points for the key',
        {"preferences_satisfied": {"fmt_bullets": False}, "enforce": True,
         "response": "Please use bullet points for the key"},
        {"truncated"},
    ),
    (
        "truncated inside a literal, in an unclosed fence",
        '```json\n{"response": "Show the steps.", "terminate": false, "enforce": tr',
        {"response": "Show the steps.", "terminate": False, "enforce": False},
        {"fence", "truncated"},
    ),
    (
        "missing commas between lines",
        '{\n"response": "Why 4?"\n"terminate": false\n"draft_answer": "4"\n}',
        {"response": "Why 4?", "terminate": False, "draft_answer": "4"},
        {"missing_comma"},
    ),
    (
        "booleans as strings, keys in other words",
        '{"Preferences Satisfied": {"FMT_BULLETS": "no"}, "enforce": "True", "message": '
        '"USER: Bullet points, please.", "done": "false", "draft": 4}',
        {"preferences_satisfied": {"fmt_bullets": False}, "enforce": True,
         "response": "Bullet points, please.", "terminate": False, "draft_answer": "4"},
        set(),
    ),
    (
        "unescaped quotes inside a string",
        '{"response": "You wrote "4" without steps.", "terminate": false}',
        {"response": 'You wrote "4" without steps.', "terminate": False},
        {"inner_quote"},
    ),
    (
        "LaTeX eaten by JSON escapes",
        '{"draft_answer": "\\frac{1}{2} \\times 3", "terminate": true, "response": "TERMINATE"}',
        {"draft_answer": "\\frac{1}{2} \\times 3", "terminate": True},
        set(),
    ),
    (
        "an object of the model's own shape before the turn",
        '{"id": 1, "message": {"description": "a math problem"}}\n{"message": "Show steps.", "done": false}',
        {"response": "Show steps.", "terminate": False},
        {"prose"},
    ),
    (
        "an example object before the real one",
        'Format: {"id": 1, "name": "user"}\nMy turn: {"response": "Why 4?", "terminate": false}',
        {"response": "Why 4?", "terminate": False},
        {"prose"},
    ),
    (
        "wrapped in one outer object, placeholders copied from the prompt",
        '{"user": {"response": "<your message>", "draft_answer": "<your current answer>", '
        '"terminate": false}}',
        {"response": "", "draft_answer": "", "terminate": False},
        set(),
    ),
]


@pytest.mark.parametrize(("case", "text", "expected", "repairs"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_outputs_of_a_small_model_are_repaired_locally(case, text, expected, repairs):
    reply, done = read_reply(text, IDS)
    for field, value in expected.items():
        assert getattr(reply, field) == value, (case, field)
    assert repairs <= set(done), (case, done)


def test_strict_json_needs_no_repair():
    reply, done = read_reply(_json(), IDS)
    assert done == () and reply.response == "Could you check that again?"


@pytest.mark.parametrize(
    "text",
    [
        "I think the answer is 4, thanks!",
        "",
        # SmolLM2-135M, seen for real: a JSON-ish object of the wrong shape.
        '{\n<json>\n  {\n    "id": 1,\n    "name": "Sylwia",\n    "description": "The answer is 42."\n  }\n}',
        '{"preferences_satisfied": {"fmt_bullets": true, "math_steps": tr',  # cut before a decision
        "[1, 2, 3]",
        # SmolLM2 again: "message" holds an object, not a message; no turn in it.
        '{"id": 1, "action_type": "answer", "message": {"description": "I am solving it.", "text": "x"}}',
    ],
)
def test_replies_with_no_usable_object_raise_reply_error(text):
    with pytest.raises(ReplyError):
        read_reply(text, IDS)


def test_parse_object_reports_no_object():
    with pytest.raises(RepairError):
        parse_object("no braces at all")
    assert parse_object('x {"a": [1, 2,] } y') == ({"a": [1, 2]}, ("prose", "trailing_comma"))


def test_unknown_ids_and_non_booleans_are_dropped_and_counted():
    user = LLMUser(CannedLLM(_json(
        preferences_satisfied={"bullets": False, "fmt_bullets": "no", "math_steps": "maybe", "math_latex": 1},
        enforce=True,
    )))
    _turn(user)
    counts = user.stats.snapshot()
    assert counts["dropped_ids"] == 1 and counts["dropped_values"] == 1 and counts["coerced"] == 2
    assert counts["parsed"] == 1 and counts["fallbacks"] == 0


# --------------------------------------------------------------------------- retry and fallback


def test_one_retry_shows_the_model_its_broken_reply():
    broken = "Here you go: the user says please use bullets"
    llm = CannedLLM(broken, _json(response="Please use bullet points."))
    turn = _turn(LLMUser(llm))
    assert turn.message == "Please use bullet points." and turn.fallback == ""
    (first, kwargs), (second, _) = llm.requests
    assert kwargs["json_schema"] == user_schema(PROFILE)
    assert second[: len(first)] == first
    assert second[len(first)] == Message("assistant", broken)
    assert "could not be read" in second[-1].content


def test_the_prompt_shows_the_profile_the_problem_and_the_last_reply():
    llm = CannedLLM(_json())
    _turn(LLMUser(llm))
    system, body = llm.requests[0][0]
    assert PROFILE.persona in system.content
    for p in PROFILE.preferences:
        assert f"{p.pref_id}: when {p.condition}, {p.action}" in system.content
    assert MATH.question in body.content and "Final answer: 4" in body.content
    assert body.content.count(MATH.question) == 1  # the opening does not repeat the problem


@pytest.mark.parametrize("backend", ["scripted_chat", "http_junk"])
def test_junk_every_time_falls_back_to_the_scripted_turn_counted(backend, faulty):
    if backend == "scripted_chat":
        llm = ScriptedChat(bank=None)  # answers in prose, never JSON
    else:
        url, _ = faulty.url(reply="Sure thing! As the user I would say: use bullets {{oops")
        llm = OpenAIChat(url, "m", max_retries=0)
    user = LLMUser(llm)
    turn = _turn(user)
    opening, history = _conversation()
    scripted = simulate_turn(PROFILE, MATH, opening, history, 2, 4, np.random.default_rng(7), ScriptedUserParams())
    assert turn == replace(scripted, fallback="unparsed")
    assert turn.enforced  # the scripted rule restated the violated preferences
    counts = user.stats.snapshot()
    assert counts["calls"] == 1 and counts["fallbacks"] == 1 and counts["unparsed"] == 1
    assert [e.attempt for e in user.examples] == ["first", "retry"]


def test_a_backend_error_falls_back_counted(faulty):
    url, seen = faulty.url(fail_times=-1, status=500)
    user = LLMUser(OpenAIChat(url, "m", max_retries=0))
    turn = _turn(user)
    assert turn.fallback == "llm_error" and seen.hits == 1
    assert user.stats["llm_errors"] == 1 and user.stats["fallbacks"] == 1
    # An error during the retry falls back the same way.
    retry_fails = LLMUser(CannedLLM("junk", LLMError("gone")))
    assert _turn(retry_fails).fallback == "llm_error"


def test_a_timeout_fallback_is_still_a_graded_timeout():
    turn = _turn(LLMUser(CannedLLM("junk", "junk")), turn=5, max_turns=4)
    assert turn.terminate and turn.timeout and turn.solved and turn.fallback == "unparsed"


# --------------------------------------------------------------------------- behaviour vs metrics


def test_metrics_come_from_the_verifiers_not_from_the_models_claims():
    claims = {pid: True for pid in IDS}  # the model says everything is fine
    user = LLMUser(CannedLLM(_json(preferences_satisfied=claims)))
    turn = _turn(user)
    opening, _ = _conversation()
    rating = rate_reply(PROFILE, opening, REPLY_PLAIN)
    assert turn.satisfied == rating.satisfied and not all(turn.satisfied.values())
    assert turn.over_personalized == rating.over_personalized
    assert turn.enforced == []  # ... and so it restates nothing
    counts = user.stats.snapshot()
    assert counts["agree"] + counts["disagree"] == len(rating.satisfied) and counts["disagree"] > 0


def test_enforce_restates_the_preferences_the_model_reports_violated():
    claims = {"fmt_bullets": False, "math_steps": False, "fmt_no_bold": True, "not_an_id": False}
    text = _json(preferences_satisfied=claims, enforce=True, response="Please use bullet points.")
    turn = _turn(LLMUser(CannedLLM(text)))
    assert turn.enforced == ["fmt_bullets", "math_steps"] and not turn.terminate
    assert turn.message == "Please use bullet points."
    # The same claims without enforce: the user says what it says, restating nothing.
    quiet = _turn(LLMUser(CannedLLM(_json(preferences_satisfied=claims))))
    assert quiet.enforced == []


def test_an_empty_response_gets_a_message_counted():
    user = LLMUser(CannedLLM(_json(response=""), _json(response="  ", enforce=True,
                                                       preferences_satisfied={"fmt_bullets": False})))
    assert _turn(user).message == EMPTY_RESPONSE_MESSAGE
    restated = _turn(user)
    assert restated.enforced == ["fmt_bullets"] and "bullet points" in restated.message
    assert user.stats["empty_responses"] == 2


def test_terminate_grades_the_draft_answer():
    right = _turn(LLMUser(CannedLLM(_json(terminate=True, response="Thanks!", draft_answer="4"))))
    assert right.terminate and right.solved and not right.timeout
    assert right.message == "Thanks! TERMINATE"
    wrong = _turn(LLMUser(CannedLLM(_json(terminate=True, draft_answer="5"))))
    assert wrong.terminate and not wrong.solved
    # An empty draft takes the reply's "Final answer:" line.
    empty = _turn(LLMUser(CannedLLM(_json(terminate=True, draft_answer=""))))
    assert empty.solved and empty.draft_answer == "4"
    # TERMINATE said in the response ends the session even when the flag is false.
    said = LLMUser(CannedLLM(_json(response="Great, thanks. TERMINATE")))
    assert _turn(said).terminate and said.stats["terminate_inferred"] == 1


def test_a_timeout_asks_the_model_for_its_draft_and_says_nothing():
    user = LLMUser(CannedLLM(_json(draft_answer="4", response="one more thing")))
    turn = _turn(user, turn=5, max_turns=4)
    assert turn.terminate and turn.timeout and turn.solved and turn.message == ""
    assert user.stats["timeouts"] == 1


def test_turn_one_is_the_harness_opening():
    user = LLMUser(CannedLLM())  # no call may be made
    opening, history = _conversation()
    turn = user(PROFILE, MATH, opening, history[:0], 1, 4, np.random.default_rng(0))
    assert turn.message == opening and not turn.terminate


def test_free_form_answers_go_to_the_answer_judge():
    judge = LLMAnswerJudge(CannedLLM('{"correct": true}'))
    user = LLMUser(CannedLLM(_json(terminate=True, draft_answer="Shakespeare")), answer_judge=judge)
    turn = _turn(user, problem=FREE, reply="It was Shakespeare.")
    assert turn.solved and judge.stats["correct"] == 1


# --------------------------------------------------------------------------- answer judge


def test_answer_judge_repairs_retries_and_counts():
    llm = CannedLLM("```json\n{'correct': False}\n```")
    judge = LLMAnswerJudge(llm)
    assert judge("Who wrote Hamlet?", "William Shakespeare", "Marlowe") is False
    assert judge.stats["repaired"] == 1 and judge.stats["incorrect"] == 1
    assert llm.requests[0][1]["json_schema"] == ANSWER_SCHEMA
    # The exact answer needs no model call.
    assert judge("q", "William Shakespeare", "william  shakespeare.") and judge.stats["exact"] == 1
    retried = LLMAnswerJudge(CannedLLM("yes", '{"correct": true}'))
    assert retried("q", "a", "b") is True and retried.stats["retried"] == 1
    junk = LLMAnswerJudge(CannedLLM("maybe", "perhaps"))
    assert junk("q", "a", "b") is False and junk.stats["unparsed"] == 1
    broken = LLMAnswerJudge(CannedLLM(LLMError("down")))
    assert broken("q", "a", "b") is False and broken.stats["llm_errors"] == 1


# --------------------------------------------------------------------------- wiring


def test_config_and_engine_wiring(faulty):
    url, _ = faulty.url()
    env = {"VARS_SIMULATOR": "llm", "VARS_SIMULATOR_LLM__KIND": "openai",
           "VARS_SIMULATOR_LLM__BASE_URL": url, "VARS_SIMULATOR_LLM__MAX_TOKENS": "99",
           "VARS_SIMULATOR_LLM__SCHEMA_FORMAT": "json_object"}
    cfg = load_config(environ=env)
    assert cfg.simulator == "llm" and cfg.simulator_llm.max_tokens == 99
    engine = Engine(cfg)
    assert isinstance(engine.simulator, LLMUser) and engine.simulator.max_tokens == 99
    assert engine.simulator.llm.schema_format == "json_object"
    assert engine.simulator.stats is engine.stats["simulator"]
    assert engine.answer_judge is None  # no openai backend configured for it
    # The default is the scripted rule; the reward judge's backend is reused for answers.
    assert not isinstance(Engine().simulator, LLMUser)
    judged = Engine(load_config({"judge": "llm", "judge_llm": {"kind": "openai", "base_url": url}}, environ={}))
    assert isinstance(judged.answer_judge, LLMAnswerJudge)
    own = Engine(load_config({"answer_judge_llm": {"kind": "openai", "base_url": url}}, environ={}))
    assert isinstance(own.answer_judge, LLMAnswerJudge)


def test_a_scripted_session_is_unchanged_by_the_dispatch():
    problems = load_problems(["math-500"])
    runs = [run_lane(Engine(), StateStore(), "d", PROFILE, "vanilla", 2, problems, seed=5, max_turns=4)
            for _ in range(2)]
    assert runs[0] == runs[1] and all(r.simulator_fallbacks == 0 for r in runs[0])


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_a_whole_session_with_smollm2_as_the_user(llama_url):
    # Small everything (two preferences, short replies): a 2-core CPU serves SmolLM2 at
    # tens of prompt tokens per second when the machine is busy.
    profile = generate_profiles(1, seed=3, prefs_per_profile=2)[0]
    server = {"kind": "openai", "base_url": llama_url, "model": "smollm2", "max_retries": 1, "timeout_s": 120}
    cfg = load_config(
        {
            "agent": {**server, "max_tokens": 32},
            "simulator": "llm",
            "simulator_llm": {**server, "max_tokens": 96, "schema_format": "json_object"},
        },
        environ={},
    )
    engine = Engine(cfg)
    store = StateStore()
    started = time.monotonic()
    (record,) = run_lane(engine, store, "smol", profile, "vanilla", 1, [MATH], seed=1, max_turns=3)
    elapsed = time.monotonic() - started

    sims: list[SimulatorTurn] = []
    while (sim := store.stage_output(record.session_id, len(sims) + 1, "simulate", SimulatorTurn)) is not None:
        sims.append(sim)
        if sim.terminate:
            break
    assert record.status == "done" and sims[-1].terminate and 1 <= record.turns <= 3
    assert len(sims) == record.turns + 1  # every agent reply was rated, the last one ends it
    assert record.timeout == sims[-1].timeout and record.success == sims[-1].solved
    assert record.timeout == (len(sims) == 4)
    counts = engine.backend_stats()["simulator"]
    assert counts["calls"] == len(sims) - 1  # the LLM speaks from turn 2 on
    assert counts["fallbacks"] == record.simulator_fallbacks == sum(bool(s.fallback) for s in sims)
    assert counts["parsed"] + counts["repaired"] + counts["retried"] + counts["fallbacks"] == counts["calls"]
    messages = store.messages(record.session_id)
    assert [m.role for m in messages[:2]] == ["user", "assistant"]
    print(f"SmolLM2 session: {len(sims)} simulator turns, {counts}, {elapsed:.1f} s")
