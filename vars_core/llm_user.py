"""The LLM simulated user (the MultiSessionCollab protocol), behind the scripted user's
interface: ``LLMUser(...)(profile, problem, opening, history, turn, max_turns, rng)``
returns a ``SimulatorTurn``.

Each turn from 2 on, the user model sees its profile (persona and every preference with
its id, condition and action), the problem and the conversation so far, and returns JSON
``{"preferences_satisfied": {pref_id: bool}, "enforce": bool, "draft_answer": str,
"terminate": bool, "response": str}``. Turn 1 is the harness-built opening, the same for
both kinds of simulated user (conflict probes are built identically).

What the model decides and what is measured are kept apart:

- the model's ``preferences_satisfied`` decides what the user *does*: ``enforced`` is the
  preferences it reports violated when ``enforce`` is true (ids of the profile only);
- the metrics (``satisfied``, ``conflict_correct``, ``over_personalized``) come from the
  catalog verifiers (``rate_reply``), never from the model's claims; how often the two
  agree is counted (``agree`` / ``disagree``), a measure of the simulator's reliability;
- the session's success is the graded draft answer (``vars_core.grading.grade``) on the
  turn that ends it, by TERMINATE or by timeout.

A small model's reply is read in three tries: strict JSON, then a local repair
(``vars_core.json_repair``), then ONE retry that shows the model its reply and asks for
valid JSON. When all fail, or the backend fails (``LLMError``), the turn is the scripted
user's (``simulate_turn`` with the same inputs) with ``fallback`` set to the reason, and
counted. Content is validated too: unknown pref ids are dropped, non-booleans coerced or
dropped, an empty response gets a neutral message; all counted. Nothing raises out of
``__call__`` for bad model output.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
from msgspec.structs import replace

from vars_core.backend_stats import BackendStats
from vars_core.grading import AnswerJudge, grade
from vars_core.json_repair import RepairError, parse_object, unmangle_latex
from vars_core.llm.base import ChatLLM, LLMError, complete_sync
from vars_core.scripted.rating import rate_reply
from vars_core.scripted.user import ScriptedUserParams, enforcement, final_answer, simulate_turn
from vars_core.types import Message, Problem, Profile, SimulatorTurn

log = logging.getLogger(__name__)

COUNTERS = (
    "calls",  # model turns asked for (turn >= 2)
    "parsed",  # first reply was strict JSON of the right shape
    "repaired",  # first reply needed the local repair
    "retried",  # the retry's reply was used
    "fallbacks",  # turns replaced by the scripted rule (all reasons)
    "unparsed",  # ... because neither reply could be read
    "llm_errors",  # ... because the backend failed
    "internal_errors",  # ... because reading the reply raised (a bug; logged)
    "dropped_ids",  # unknown pref ids in preferences_satisfied
    "coerced",  # non-boolean / non-string values turned into the right type
    "dropped_values",  # values that could not be
    "renamed_keys",  # "message" for "response" and the like
    "empty_responses",  # no response and no TERMINATE: a neutral message was used
    "placeholders",  # a field that copied the prompt's "<...>" placeholder, read as empty
    "terminate_inferred",  # TERMINATE in the response but terminate=false
    "timeouts",  # turns past max_turns (graded, no message)
    "agree",  # model claim == verifier, per (preference, turn) both rated
    "disagree",
)

TERMINATE = "TERMINATE"
EMPTY_RESPONSE_MESSAGE = "Please continue."
REVISE = " Please revise your answer."

# Keys a small model uses for the protocol's fields.
_ALIASES: dict[str, str] = {
    "preference_satisfied": "preferences_satisfied",
    "preferences": "preferences_satisfied",
    "satisfied": "preferences_satisfied",
    "ratings": "preferences_satisfied",
    "enforced": "enforce",
    "draft": "draft_answer",
    "answer": "draft_answer",
    "final_answer": "draft_answer",
    "terminated": "terminate",
    "done": "terminate",
    "message": "response",
    "reply": "response",
    "user_response": "response",
}
FIELDS = ("preferences_satisfied", "enforce", "draft_answer", "terminate", "response")
_TRUE = frozenset({"true", "yes", "y", "1", "satisfied", "followed", "ok"})
_FALSE = frozenset({"false", "no", "n", "0", "violated", "not satisfied", "unsatisfied"})
_ROLE_PREFIX = re.compile(r"^\s*(?:user|you|me)\s*:\s*", re.I)
_PLACEHOLDER = re.compile(r"^<[^<>]{0,60}>$")

# What the model reads of the assistant's replies: the last in full up to this, earlier
# ones shorter, so a small model's context holds the profile, the problem and the turn.
_LAST_REPLY_CHARS = 1200
_EARLIER_REPLY_CHARS = 400
_MAX_MESSAGES = 8
_MAX_EXAMPLES = 40


class UserReply(msgspec.Struct, frozen=True):
    """One model turn, validated."""

    preferences_satisfied: dict[str, bool]
    enforce: bool
    draft_answer: str
    terminate: bool
    response: str


class ReplyError(ValueError):
    """A user-model reply with no usable object, with the reason (shown to the model)."""


class BrokenReply(msgspec.Struct, frozen=True):
    """A reply that was not strict JSON: what it was and what became of it, for reports."""

    attempt: str  # "first" | "retry"
    outcome: str  # "repaired" | "unparsed"
    repairs: list[str]
    error: str
    text: str


# --------------------------------------------------------------------------- prompt


def user_schema(profile: Profile) -> dict[str, Any]:
    """The reply's JSON schema, with this profile's pref ids as the only rating keys."""
    return {
        "type": "object",
        "properties": {
            "preferences_satisfied": {
                "type": "object",
                "properties": {p.pref_id: {"type": "boolean"} for p in profile.preferences},
                "additionalProperties": False,
            },
            "enforce": {"type": "boolean"},
            "draft_answer": {"type": "string"},
            "terminate": {"type": "boolean"},
            "response": {"type": "string"},
        },
        "required": list(FIELDS),
        "additionalProperties": False,
    }


_SHAPE = (
    '{"preferences_satisfied": {"<pref_id>": true, "<pref_id>": false}, "enforce": true, '
    '"draft_answer": "<your current answer>", "terminate": false, "response": "<your message>"}'
)

SYSTEM_TEMPLATE = """\
You play a USER chatting with an AI ASSISTANT that solves a problem for you. Never solve \
it yourself.
Persona: {persona}
Your preferences (id: when CONDITION, ACTION):
{preferences}
Each turn, after the assistant's last reply:
1. preferences_satisfied: for each preference whose condition holds, true if the reply \
follows it, else false. Skip the others.
2. If one is violated: enforce true, and in response restate it in your own words and ask \
for a revised answer.
3. draft_answer: the final answer you would take away now (a number, an expression, or \
the option as printed); "" if none yet.
4. If the problem is solved to your satisfaction, or you are stuck: terminate true, and \
end response with TERMINATE.
5. Else response is a short user message: a question, a problem you see, or a request \
to check the answer.
Reply with JSON only, in this form:
{shape}"""


def system_prompt(profile: Profile) -> str:
    prefs = "\n".join(f"- {p.pref_id}: when {p.condition}, {p.action}" for p in profile.preferences)
    return SYSTEM_TEMPLATE.format(persona=profile.persona.strip(), preferences=prefs, shape=_SHAPE)


def _cut(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [...] {text[-half:]}"


def build_prompt(
    profile: Profile, problem: Problem, opening: str, history: list[Message]
) -> list[Message]:
    shown = [m for m in history if m.role != "system"]
    first = shown[:1]
    rest = shown[1:][-(_MAX_MESSAGES - 1) :]
    kept = first + rest
    last_assistant = max((i for i, m in enumerate(kept) if m.role == "assistant"), default=-1)
    lines = []
    for i, m in enumerate(kept):
        if m.role == "user":
            text = m.content.strip()
            if text == opening.strip():
                # The opening is the request line and the problem; the problem is above.
                text = opening.strip().split("\n\n", 1)[0] + " [the problem above]"
            lines.append(f"YOU: {text}")
        else:
            limit = _LAST_REPLY_CHARS if i == last_assistant else _EARLIER_REPLY_CHARS
            lines.append(f"ASSISTANT: {_cut(m.content, limit)}")
    conversation = "\n\n".join(lines)
    body = (
        f"The problem you are working on:\n<problem>\n{problem.question.strip()}\n</problem>\n\n"
        f"The conversation so far:\n<conversation>\n{conversation}\n</conversation>\n\n"
        "Write your next turn as the JSON object."
    )
    return [Message("system", system_prompt(profile)), Message("user", body)]


def retry_messages(bad_reply: str, error: str) -> list[Message]:
    return [
        Message("assistant", bad_reply),
        Message(
            "user",
            f"That reply could not be read: {error}. Reply again with only the JSON object, "
            f"nothing before or after it, in this form: {_SHAPE}",
        ),
    ]


# --------------------------------------------------------------------------- reading


class _Tally:
    """Counts made while validating one reply; added to the stats only if it is used."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def incr(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


def read_reply(
    text: str, pref_ids: list[str], tally: _Tally | None = None
) -> tuple[UserReply, tuple[str, ...]]:
    """The validated turn in ``text`` and the local repairs it needed. Raises
    ``ReplyError`` when no object of the protocol's shape can be read."""
    tally = tally if tally is not None else _Tally()
    try:
        # The first object with a decision in it: an example object or a wrapper
        # ({"user": {...}}) before the real one is skipped.
        raw, repairs = parse_object(text, want=_has_decision)
    except RepairError as err:
        raise ReplyError(str(err)) from None
    fields = _normalize_keys(raw, tally)
    return _validate(fields, pref_ids, tally), repairs


def _has_decision(obj: Mapping[Any, Any]) -> bool:
    """Whether ``obj`` is a turn: it has "terminate", or a response that is text (small
    models also write objects of their own shape, {"id": 1, "message": {...}}, that only
    look like a turn)."""
    for key, value in obj.items():
        name = _key_name(key)
        name = name if name in FIELDS else _ALIASES.get(name, name)
        if name == "terminate" or (name == "response" and isinstance(value, str)):
            return True
    return False


def _key_name(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _normalize_keys(raw: Mapping[Any, Any], tally: _Tally) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = _key_name(key)
        if name not in FIELDS and name in _ALIASES:
            tally.incr("renamed_keys")
            name = _ALIASES[name]
        out.setdefault(name, value)
    return out


def _as_bool(value: Any, tally: _Tally) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        tally.incr("coerced")
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower().rstrip(".")
        if word in _TRUE or word in _FALSE:
            tally.incr("coerced")
            return word in _TRUE
    tally.incr("dropped_values")
    return None


def _as_text(value: Any, tally: _Tally) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        text = unmangle_latex(value).strip()
        if _PLACEHOLDER.match(text):
            tally.incr("placeholders")
            return ""
        return text
    if isinstance(value, bool):
        tally.incr("coerced")
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        tally.incr("coerced")
        return str(value)
    tally.incr("dropped_values")  # an object or a list is not a message or an answer
    return ""


def _validate(fields: dict[str, Any], pref_ids: list[str], tally: _Tally) -> UserReply:
    known = {pid: pid for pid in pref_ids}
    folded = {pid.lower(): pid for pid in pref_ids}
    claims: dict[str, bool] = {}
    raw_claims = fields.get("preferences_satisfied")
    if isinstance(raw_claims, Mapping):
        for key, value in raw_claims.items():
            pid = known.get(str(key).strip()) or folded.get(str(key).strip().lower())
            if pid is None:
                tally.incr("dropped_ids")
                continue
            ok = _as_bool(value, tally)
            if ok is not None:
                claims[pid] = ok
    elif raw_claims is not None:
        tally.incr("dropped_values")
    enforce = fields.get("enforce", False)
    terminate = fields.get("terminate", False)
    return UserReply(
        preferences_satisfied=claims,
        enforce=bool(_as_bool(enforce, tally)) if "enforce" in fields else False,
        draft_answer=_as_text(fields.get("draft_answer"), tally),
        terminate=bool(_as_bool(terminate, tally)) if "terminate" in fields else False,
        response=_ROLE_PREFIX.sub("", _as_text(fields.get("response"), tally)),
    )


# --------------------------------------------------------------------------- the user


class LLMUser:
    """The simulated user played by a chat model; see the module docstring.

    answer_judge: grades free-form answers (``vars_core.grading``); None compares text.
    params: the scripted user's, used by the fallback turn.
    """

    def __init__(
        self,
        llm: ChatLLM,
        max_tokens: int = 256,
        temperature: float = 0.0,
        params: ScriptedUserParams | None = None,
        answer_judge: AnswerJudge | None = None,
        stats: BackendStats | None = None,
    ) -> None:
        self.llm = llm
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.params = params or ScriptedUserParams()
        self.answer_judge = answer_judge
        self.stats = stats if stats is not None else BackendStats()
        self.stats.declare(COUNTERS)
        self._lock = threading.Lock()
        self.examples: list[BrokenReply] = []  # the first few non-strict replies, for reports
        self.samples: list[str] = []  # the first few replies as they came, for reports

    def __call__(
        self,
        profile: Profile,
        problem: Problem,
        opening: str,
        history: list[Message],
        turn: int,
        max_turns: int,
        rng: np.random.Generator,
    ) -> SimulatorTurn:
        if turn <= 1:
            # The harness-built opening: the same for both kinds of simulated user.
            return simulate_turn(profile, problem, opening, history, turn, max_turns, rng, self.params)
        self.stats.incr("calls")
        try:
            reply = self._ask(build_prompt(profile, problem, opening, history), profile)
        except LLMError as err:
            self.stats.incr("llm_errors")
            log.warning("user model backend failed, scripted turn instead: %s", err)
            return self._fallback("llm_error", profile, problem, opening, history, turn, max_turns, rng)
        except ReplyError:
            self.stats.incr("unparsed")
            return self._fallback("unparsed", profile, problem, opening, history, turn, max_turns, rng)
        except Exception:  # a bug in reading a reply must not fail the session
            self.stats.incr("internal_errors")
            log.exception("reading the user model's reply failed, scripted turn instead")
            return self._fallback("internal_error", profile, problem, opening, history, turn, max_turns, rng)
        return self._turn(reply, profile, problem, opening, history, turn, max_turns)

    # ------------------------------------------------------------------ model
    def _ask(self, prompt: list[Message], profile: Profile) -> UserReply:
        pref_ids = [p.pref_id for p in profile.preferences]
        schema = user_schema(profile)
        text = self._complete(prompt, schema)
        with self._lock:
            if len(self.samples) < _MAX_EXAMPLES:
                self.samples.append(text[:600])
        tally = _Tally()
        try:
            reply, repairs = read_reply(text, pref_ids, tally)
        except ReplyError as err:
            error = str(err)
            self._example("first", "unparsed", [], error, text)
        else:
            self._count(tally)
            if repairs:
                self.stats.incr("repaired")
                self._count_repairs(repairs)
                self._example("first", "repaired", list(repairs), "", text)
            else:
                self.stats.incr("parsed")
            return reply
        text = self._complete(prompt + retry_messages(text, error), schema)
        tally = _Tally()
        try:
            reply, repairs = read_reply(text, pref_ids, tally)
        except ReplyError as err:
            self._example("retry", "unparsed", [], str(err), text)
            log.warning("user model reply unusable after a retry: %s; reply %.200r", err, text)
            raise
        self._count(tally)
        self._count_repairs(repairs)
        if repairs:
            self._example("retry", "repaired", list(repairs), "", text)
        self.stats.incr("retried")
        return reply

    def _complete(self, messages: list[Message], schema: dict[str, Any]) -> str:
        completion = complete_sync(
            self.llm,
            messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            json_schema=schema,
        )
        return completion.text

    def _count(self, tally: _Tally) -> None:
        for name, n in tally.counts.items():
            self.stats.incr(name, n)

    def _count_repairs(self, repairs: tuple[str, ...]) -> None:
        for name in repairs:
            self.stats.incr(f"repair_{name}")

    def _example(self, attempt: str, outcome: str, repairs: list[str], error: str, text: str) -> None:
        with self._lock:
            if len(self.examples) < _MAX_EXAMPLES:
                self.examples.append(BrokenReply(attempt, outcome, repairs, error, text[:600]))

    # ------------------------------------------------------------------ turns
    def _turn(
        self,
        reply: UserReply,
        profile: Profile,
        problem: Problem,
        opening: str,
        history: list[Message],
        turn: int,
        max_turns: int,
    ) -> SimulatorTurn:
        agent_reply = next((m.content for m in reversed(history) if m.role == "assistant"), "")
        rating = rate_reply(profile, opening, agent_reply)
        for pid, ok in reply.preferences_satisfied.items():
            if pid in rating.satisfied:
                self.stats.incr("agree" if ok == rating.satisfied[pid] else "disagree")
        draft = reply.draft_answer or final_answer(agent_reply)
        rated = SimulatorTurn(
            message="",
            terminate=False,
            satisfied=rating.satisfied,
            draft_answer=draft,
            conflict_probe=bool(rating.conflict_correct),
            conflict_correct=rating.conflict_correct,
            over_personalized=rating.over_personalized,
        )
        if turn > max_turns:
            self.stats.incr("timeouts")
            return replace(rated, terminate=True, timeout=True, solved=self._solved(problem, agent_reply, draft))

        by_id = {p.pref_id: p for p in profile.preferences}
        enforced = (
            [pid for pid, ok in reply.preferences_satisfied.items() if not ok and pid in by_id]
            if reply.enforce
            else []
        )
        message = reply.response
        terminate = reply.terminate
        if not terminate and TERMINATE in message:
            self.stats.incr("terminate_inferred")
            terminate = True
        if terminate:
            if TERMINATE not in message:
                message = f"{message} {TERMINATE}".strip()
            return replace(
                rated,
                message=message,
                terminate=True,
                enforced=enforced,
                solved=self._solved(problem, agent_reply, draft),
            )
        if not message:
            self.stats.incr("empty_responses")
            message = (
                " ".join(enforcement(by_id[pid]) for pid in enforced) + REVISE
                if enforced
                else EMPTY_RESPONSE_MESSAGE
            )
        return replace(rated, message=message, enforced=enforced)

    def _solved(self, problem: Problem, reply: str, draft: str) -> bool:
        try:
            return grade(problem, reply, draft, self.answer_judge).success
        except Exception:  # a grader failure is a failed answer, not a failed session
            log.exception("grading %s failed; counted as not solved", problem.problem_id)
            return False

    def _fallback(
        self,
        reason: str,
        profile: Profile,
        problem: Problem,
        opening: str,
        history: list[Message],
        turn: int,
        max_turns: int,
        rng: np.random.Generator,
    ) -> SimulatorTurn:
        """The scripted user's turn for the same inputs, marked with ``reason``."""
        self.stats.incr("fallbacks")
        result = simulate_turn(
            profile, problem, opening, history, turn, max_turns, rng, self.params, self.answer_judge
        )
        if turn > max_turns:
            self.stats.incr("timeouts")
        return replace(result, fallback=reason)
