"""LLMJudge: labels through the shared gate, junk and backend errors as neutral, the cache."""

from __future__ import annotations

import json
import threading

import pytest

from tests.test_llm_extractor import CannedLLM, small_model  # noqa: F401 (a fixture)
from vars_core.judge import LABEL_REWARDS, LABELS
from vars_core.llm.base import LLMError
from vars_core.llm_judge import JUDGE_SCHEMA, LABEL_DEFINITIONS, LLMJudge, cache_key
from vars_core.types import JudgeResult

pytest_plugins = ["tests.llm_servers"]  # the real llama.cpp server fixture

TURN = ("Solve x^2 = 4 in bullet points.", "x = 2 or x = -2.", "As I said, use bullet points.")


def _reply(label: str, confidence: float) -> str:
    return json.dumps({"label": label, "confidence": confidence})


@pytest.mark.parametrize("label", sorted(LABELS))
def test_each_label_is_parsed_and_gated(label):
    judge = LLMJudge(CannedLLM(_reply(label, 0.9), _reply(label, 0.5)))
    confident = judge.judge(*TURN)
    assert confident.label == label and confident.parsed
    assert confident.reward == LABEL_REWARDS[label]
    if label == "topic_shift":
        assert not confident.apply and confident.g == 0.0
    else:
        assert confident.apply and confident.g == pytest.approx(0.9)
    unsure = judge.judge(TURN[0], TURN[1], "another message")
    assert unsure.label == label and unsure.parsed
    assert not unsure.apply and unsure.g == 0.0
    assert judge.stats["unparsed"] == 0


def test_the_prompt_defines_every_label_and_passes_the_schema():
    llm = CannedLLM(_reply("neutral", 0.7))
    LLMJudge(llm, max_tokens=64).judge(*TURN)
    ((messages, kwargs),) = llm.requests
    assert set(LABEL_DEFINITIONS) == LABELS
    assert all(label in messages[0].content for label in LABELS)
    assert all(text in messages[1].content for text in TURN)
    assert kwargs == {"max_tokens": 64, "temperature": 0.0, "json_schema": JUDGE_SCHEMA}


def test_a_reply_in_prose_still_parses():
    judge = LLMJudge(
        CannedLLM('Label:\n```json\n{"label": "neg_constraint_restate", "confidence": 0.8}\n```')
    )
    result = judge.judge(*TURN)
    assert result.label == "neg_constraint_restate" and result.apply


@pytest.mark.parametrize(
    "junk",
    [
        "I think the user is unhappy.",
        '{"label": "angry", "confidence": 0.9}',
        '{"label": "pos_praise", "confidence": 3}',
        "",
    ],
)
def test_junk_is_neutral_unparsed_and_counted(junk):
    judge = LLMJudge(CannedLLM(junk))
    result = judge.judge(*TURN)
    assert (result.label, result.parsed, result.apply, result.g) == ("neutral", False, False, 0.0)
    assert judge.stats["unparsed"] == 1


def test_the_same_turn_is_judged_once():
    llm = CannedLLM(_reply("neg_constraint_restate", 0.9))
    judge = LLMJudge(llm)
    first = judge.judge(*TURN)
    assert judge.judge(*TURN) == first
    assert len(llm.requests) == 1
    assert judge.stats["cache_hits"] == 1 and judge.stats["calls"] == 2


def test_the_cache_is_bounded_and_least_recently_used_goes_first():
    llm = CannedLLM(*(_reply("neutral", 0.7) for _ in range(4)))
    judge = LLMJudge(llm, cache_size=2)
    judge.judge("a", "b", "1")
    judge.judge("a", "b", "2")
    judge.judge("a", "b", "1")  # hit: "1" is now the most recent
    judge.judge("a", "b", "3")  # evicts "2"
    judge.judge("a", "b", "1")  # still cached
    judge.judge("a", "b", "2")  # judged again
    assert len(llm.requests) == 4 and judge.stats["cache_hits"] == 2


def test_cache_key_separates_the_three_texts():
    assert cache_key("ab", "c", "d") != cache_key("a", "bc", "d")
    assert cache_key("a", "b", "c") == cache_key("a", "b", "c")


def test_an_llm_error_is_neutral_counted_and_not_cached():
    llm = CannedLLM(LLMError("server down"), _reply("pos_praise", 0.9))
    judge = LLMJudge(llm)
    failed = judge.judge(*TURN)
    assert (failed.label, failed.apply, failed.parsed) == ("neutral", False, False)
    assert judge.stats["llm_errors"] == 1 and judge.stats["unparsed"] == 0
    assert judge.judge(*TURN).label == "pos_praise"  # the retry reaches the model
    assert len(llm.requests) == 2


def test_concurrent_judging_is_safe():
    turns = [("q", "a", f"message {i}") for i in range(40)]
    llm = CannedLLM(*(_reply("pos_progress", 0.7) for _ in turns))
    judge = LLMJudge(llm, cache_size=16)
    results: list[JudgeResult] = []

    def work(chunk):
        results.extend(judge.judge(*t) for t in chunk)

    threads = [threading.Thread(target=work, args=(turns[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40 and all(r.label == "pos_progress" for r in results)
    assert len(judge._cache) == 16


# --------------------------------------------------------------------------- real server


def test_against_the_real_small_model_server(small_model):  # noqa: F811 (the fixture)
    judge = LLMJudge(small_model, max_tokens=48)
    result = judge.judge(*TURN)
    assert isinstance(result, JudgeResult) and result.label in LABELS
    assert result.apply == (
        result.parsed and result.label != "topic_shift" and result.confidence >= 0.6
    )
    s = judge.stats
    assert s["calls"] == 1
    assert s["unparsed"] + s["llm_errors"] == (0 if result.parsed else 1)
