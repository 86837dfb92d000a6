"""The conflict check: the generic table, the LLM judge (canned replies and the real small
model server), and which judge a lane gets."""

from __future__ import annotations

import pytest

from tests.test_llm_extractor import CannedLLM, small_model  # noqa: F401 (a fixture)
from vars_core.config import load_config
from vars_core.conflicts import (
    CONFLICT_SCHEMA,
    LLMConflictJudge,
    parse_conflict_reply,
    table_conflict,
)
from vars_core.engine import Engine
from vars_core.llm.base import LLMError

pytest_plugins = ["tests.llm_servers"]  # the real llama.cpp server fixture


@pytest.mark.parametrize(
    ("a", "b", "conflict"),
    [
        # compatible, though about the same request
        ("answer with numbered steps", "prefer short answers", False),
        ("show every derivation step", "write the math in latex", False),
        ("remind me to consult a doctor", "state your confidence level", False),
        ("use bullet points", "do not use jargon", False),
        ("put the final answer in bold", "put the final answer in bold", False),
        # opposite poles of one dimension
        ("prefer short answers", "give me long detailed answers", True),
        ("keep the reply under 100 words", "give a detailed explanation of at least 250 words", True),
        ("use bullet points for the key points", "use a numbered list for the key points", True),
        ("use a formal tone", "keep the tone casual and friendly", True),
        ("use a formal tone", "use an informal tone", True),
        ("show every derivation step", "skip the working and state only the result", True),
        ("use snake_case names", "use camelCase names", True),
        ("walk me through the solution one part at a time", "give the whole solution in one piece", True),
        # one negates the other
        ("organize the reply under markdown headers", "do not use headers", True),
        ("end with a question that checks my understanding", "do not end with a question", True),
        ("include a worked example", "leave out examples", True),
        # the same words with another figure
        ("use at most 100 words", "use at most 200 words", True),
    ],
)
def test_the_generic_table(a, b, conflict):
    assert table_conflict(a, b) is conflict
    assert table_conflict(b, a) is conflict  # symmetric


def test_an_action_on_both_poles_is_ambiguous_and_kept():
    # "short but detailed" names both poles of length: in doubt, no conflict
    assert table_conflict("keep it short but detailed", "give me a long answer") is False


def _judge(*replies):
    return LLMConflictJudge(CannedLLM(*replies))


def test_the_llm_judge_reads_the_verdict_and_sends_the_schema():
    llm = CannedLLM('{"conflict": true}')
    judge = LLMConflictJudge(llm, max_tokens=16)
    assert judge("prefer short answers", "give me long answers") is True
    ((messages, kwargs),) = llm.requests
    assert "give me long answers" in messages[1].content and "prefer short answers" in messages[1].content
    assert kwargs == {"max_tokens": 16, "temperature": 0.0, "json_schema": CONFLICT_SCHEMA}


def test_the_llm_judge_asks_once_per_unordered_pair():
    llm = CannedLLM('{"conflict": false}')
    judge = LLMConflictJudge(llm)
    assert judge("a b", "c d") is False
    assert judge("c d", "A  B") is False  # the other order, other case and spacing: cached
    assert len(llm.requests) == 1 and judge.stats["cache_hits"] == 1


@pytest.mark.parametrize("junk", ["Yes, they conflict.", '{"conflict": "maybe"}', "", '{"verdict": true}'])
def test_junk_or_a_failed_call_keeps_both(junk):
    judge = _judge(junk)
    assert judge("x", "y") is False and judge.stats["unparsed"] == 1
    failing = _judge(LLMError("server down", status=503))
    assert failing("x", "y") is False and failing.stats["llm_errors"] == 1


def test_verdicts_in_prose_parse():
    assert parse_conflict_reply('Sure.\n```json\n{"conflict": true}\n```') is True
    assert parse_conflict_reply('{"conflict": "false"}') is False
    assert parse_conflict_reply("no json") is None


def test_an_llm_judge_is_picked_when_configured():
    engine = Engine(load_config({"memory": {"conflict_llm": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}}}))
    assert isinstance(engine.conflict_check_for("live"), LLMConflictJudge)
    assert engine.conflict_check_for("campaign") is engine.conflict_check_for("live")


def test_against_the_real_small_model_server(small_model):  # noqa: F811 (the fixture)
    judge = LLMConflictJudge(small_model)
    verdict = judge("prefer short answers", "give me long detailed answers")
    assert isinstance(verdict, bool)
    s = judge.stats
    assert s["calls"] == 1 and s["unparsed"] + s["llm_errors"] <= 1
