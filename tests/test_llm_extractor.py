"""LLMExtractor: parsing, one repair, cleaning, counting, and the window it sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from vars_core.backend_stats import BackendStats
from vars_core.llm import make_llm
from vars_core.llm.base import Completion, LLMError
from vars_core.llm_extractor import (
    PREFERENCES_SCHEMA,
    LLMExtractor,
    ReplyError,
    clean_preference,
    parse_reply,
)
from vars_core.notes import format_note, parse_notes
from vars_core.types import ExtractedPreference, Message

pytest_plugins = ["tests.llm_servers"]  # the real llama.cpp server fixture


class CannedLLM:
    """A test double of the ChatLLM protocol: it answers with canned texts in order (an
    Exception in the list is raised instead) and records every request, so each reply shape
    is exercised exactly. The real HTTP client is tested against a real llama.cpp server in
    its own tests and in the server test at the end of this file."""

    name = "canned"

    def __init__(self, *replies: str | Exception) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[list[Message], dict[str, Any]]] = []

    async def complete(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
    ) -> Completion:
        self.requests.append(
            (
                list(messages),
                {"max_tokens": max_tokens, "temperature": temperature, "json_schema": json_schema},
            )
        )
        assert self.replies, "more calls than canned replies"
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return Completion(text=reply)

    async def stream(self, messages: list[Message], **_: Any) -> AsyncIterator[str]:
        yield (await self.complete(messages)).text

    async def aclose(self) -> None:
        pass


CONVERSATION = [
    Message("user", "Solve x^2 = 4. Please use bullet points when listing steps.", turn=1),
    Message("assistant", "x = 2 or x = -2.", turn=1),
    Message("user", "Thanks. Also keep answers short.", turn=2),
]

VALID = json.dumps(
    {
        "preferences": [
            {"condition": "listing steps", "action": "use bullet points", "confidence": 0.9},
            {
                "condition": "answering any request",
                "action": "keep answers short",
                "confidence": 0.8,
            },
        ]
    }
)
EXPECTED = [
    ExtractedPreference("listing steps", "use bullet points", 0.9),
    ExtractedPreference("answering any request", "keep answers short", 0.8),
]


def test_valid_json_gives_typed_preferences_and_passes_the_schema():
    llm = CannedLLM(VALID)
    extractor = LLMExtractor(llm)
    assert extractor.extract(CONVERSATION) == EXPECTED
    ((messages, kwargs),) = llm.requests
    assert kwargs["json_schema"] == PREFERENCES_SCHEMA
    assert kwargs["max_tokens"] == 512 and kwargs["temperature"] == 0.0
    assert messages[0].role == "system" and "JSON" in messages[0].content
    assert extractor.stats.snapshot() == {
        "calls": 1,
        "repaired": 0,
        "failures": 0,
        "llm_errors": 0,
        "dropped": 0,
    }


def test_json_in_a_code_fence_with_prose_around_it():
    reply = f"Sure! Here are the preferences:\n```json\n{VALID}\n```\nLet me know if you need more."
    assert LLMExtractor(CannedLLM(reply)).extract(CONVERSATION) == EXPECTED


def test_json_embedded_in_prose_without_a_fence():
    reply = f"The user said {{not json}} and so: {VALID} (done)"
    assert LLMExtractor(CannedLLM(reply)).extract(CONVERSATION) == EXPECTED


def test_broken_json_then_repaired():
    broken = '{"preferences": [{"condition": "listing steps", "action": '
    llm = CannedLLM(broken, VALID)
    extractor = LLMExtractor(llm)
    assert extractor.extract(CONVERSATION) == EXPECTED
    assert extractor.stats["repaired"] == 1 and extractor.stats["failures"] == 0
    first, second = (messages for messages, _ in llm.requests)
    # The repair request is the original prompt, the bad reply, then the error.
    assert second[: len(first)] == first
    assert second[len(first)] == Message("assistant", broken)
    assert second[-1].role == "user" and "no JSON object found" in second[-1].content
    assert llm.requests[1][1]["json_schema"] == PREFERENCES_SCHEMA


def test_broken_twice_counts_a_failure_and_returns_nothing():
    extractor = LLMExtractor(CannedLLM("I think the user likes bullets.", "{oops"))
    assert extractor.extract(CONVERSATION) == []
    assert extractor.stats["failures"] == 1
    assert extractor.stats["repaired"] == 0 and extractor.stats["calls"] == 1


def test_wrong_schema_is_repaired_with_the_schema_error():
    missing_action = json.dumps(
        {"preferences": [{"condition": "listing steps", "confidence": 0.9}]}
    )
    llm = CannedLLM(missing_action, VALID)
    extractor = LLMExtractor(llm)
    assert extractor.extract(CONVERSATION) == EXPECTED
    assert extractor.stats["repaired"] == 1
    error_text = llm.requests[1][0][-1].content
    assert "does not match the schema" in error_text and "action" in error_text


def test_confidence_outside_the_unit_interval_is_clamped():
    reply = json.dumps(
        {
            "preferences": [
                {"condition": "writing code", "action": "use type hints", "confidence": 7},
                {"condition": "writing prose", "action": "avoid jargon", "confidence": -0.5},
            ]
        }
    )
    prefs = LLMExtractor(CannedLLM(reply)).extract(CONVERSATION)
    assert [p.confidence for p in prefs] == [1.0, 0.0]


def test_an_llm_error_is_counted_and_gives_no_preferences():
    extractor = LLMExtractor(CannedLLM(LLMError("server down after 3 retries")))
    assert extractor.extract(CONVERSATION) == []
    assert extractor.stats["llm_errors"] == 1 and extractor.stats["failures"] == 0


def test_an_llm_error_during_the_repair_is_counted_too():
    extractor = LLMExtractor(CannedLLM("junk", LLMError("timeout")))
    assert extractor.extract(CONVERSATION) == []
    assert extractor.stats["llm_errors"] == 1 and extractor.stats["failures"] == 0


def test_window_limits_what_is_sent():
    history = [
        Message("system", "You are a helpful assistant.", turn=0),
        *(
            Message(role, f"{role} message {turn}", turn=turn)
            for turn in range(1, 6)
            for role in ("user", "assistant")
        ),
    ]
    llm = CannedLLM('{"preferences": []}')
    assert LLMExtractor(llm, window=3).extract(history) == []
    sent = llm.requests[0][0][-1].content
    assert "ASSISTANT: assistant message 4" in sent
    assert "USER: user message 5" in sent and "ASSISTANT: assistant message 5" in sent
    for old in ("user message 4", "message 3", "message 1", "helpful assistant"):
        assert old not in sent
    assert sent.index("message 4") < sent.index("user message 5")  # oldest first


def test_no_user_message_in_the_window_skips_the_call():
    llm = CannedLLM()
    extractor = LLMExtractor(llm, window=1)
    assert extractor.extract([Message("user", "hi"), Message("assistant", "hello")]) == []
    assert llm.requests == [] and extractor.stats["calls"] == 0


def test_cleaning_repairs_punctuation_and_drops_what_cannot_be_a_note():
    reply = json.dumps(
        {
            "preferences": [
                {
                    "condition": " When writing code, especially Python ",
                    "action": "Use Python 3.11.",
                    "confidence": 0.9,
                },
                {
                    "condition": "explaining",
                    "action": "give an example, e.g. a small one. Keep it short",
                    "confidence": 0.7,
                },
                {"condition": "", "action": "be nice", "confidence": 0.9},
                {"condition": "using node.js", "action": "use npm", "confidence": 0.9},
                {
                    "condition": "writing code especially Python",
                    "action": "use Python 3 point 11",
                    "confidence": 0.5,
                },
            ]
        }
    )
    extractor = LLMExtractor(CannedLLM(reply))
    prefs = extractor.extract(CONVERSATION)
    assert prefs == [
        ExtractedPreference("writing code especially Python", "use Python 3 point 11", 0.9),
        ExtractedPreference(
            "explaining", "give an example, for example a small one; Keep it short", 0.7
        ),
    ]
    # Dropped: the empty condition and "node.js"; the last one is a duplicate, not a drop.
    assert extractor.stats["dropped"] == 2
    for p in prefs:
        assert parse_notes(format_note(p.condition, p.action)) == [(p.condition, p.action)]


def test_clean_preference_handles_nan_and_please():
    pref = clean_preference("if asked for code", "please add comments", float("nan"))
    assert pref == ExtractedPreference("asked for code", "add comments", 0.0)


def test_parse_reply_errors_name_the_problem():
    with pytest.raises(ReplyError, match="no JSON object"):
        parse_reply("nothing here")
    with pytest.raises(ReplyError, match="schema"):
        parse_reply('{"preferences": [{"condition": 1, "action": "x", "confidence": 0.5}]}')
    assert parse_reply('{"preferences": [], "note": "extra fields are ignored"}') == []


def test_shared_stats_count_several_extractors_together():
    stats = BackendStats()
    for _ in range(2):
        LLMExtractor(CannedLLM(VALID), stats=stats).extract(CONVERSATION)
    assert stats["calls"] == 2


# --------------------------------------------------------------------------- real server


@pytest.fixture
def small_model(llama_url: str) -> Iterator[Any]:
    """A real client on the SmolLM2-135M llama.cpp server (skipped where it cannot run)."""
    with make_llm("llama.cpp", base_url=llama_url, model="smollm2", max_retries=1) as llm:
        yield llm


def test_against_the_real_small_model_server(small_model):
    extractor = LLMExtractor(small_model, max_tokens=128)
    prefs = extractor.extract(CONVERSATION)
    assert isinstance(prefs, list)
    assert all(isinstance(p, ExtractedPreference) and 0.0 <= p.confidence <= 1.0 for p in prefs)
    for p in prefs:
        assert parse_notes(format_note(p.condition, p.action)) == [(p.condition, p.action)]
    s = extractor.stats
    # A 135M model mostly writes junk: each call ends as a clean result, a repair, a counted
    # failure or a counted backend error, never as an exception.
    assert s["calls"] == 1
    assert s["repaired"] + s["failures"] + s["llm_errors"] <= 1
