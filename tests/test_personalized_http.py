"""The facade over real OpenAI-compatible servers on loopback: llama.cpp's server with the
SmolLM2-135M GGUF, and a faulty server for 500s, junk and a server that is gone."""

from __future__ import annotations

import pytest

from vars_core import PersonalizedLLM
from vars_core.embedder import default_embedder
from vars_core.llm.base import LLMError
from vars_core.methods import METHODS

pytest_plugins = ["tests.llm_servers"]
pytestmark = pytest.mark.slow

NOTE = "When writing python code, use snake_case names."


def _facade(agent_url: str, **extra) -> PersonalizedLLM:
    llm = PersonalizedLLM.from_config(
        {
            "agent": {"kind": "openai", "base_url": agent_url, "model": "smollm2", "max_tokens": 24,
                      "max_retries": 1, "timeout_s": 60},
            **extra,
        }
    )
    llm.engine._embedder = default_embedder()
    return llm


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_chat_turn_per_method_against_llama_cpp(llama_url, method):
    llm = _facade(llama_url)
    first = llm.chat("u1", f"{NOTE} How do I reverse a list?", method=method)
    assert first.answer.strip() and first.usage.completion_tokens > 0
    second = llm.chat("u1", "Thanks. And how do I sort it?", method=method)
    assert second.answer.strip() and second.turn == 2
    if method != "vanilla":
        llm.reset_session("u1")
        third = llm.chat_prepare("u1", "Writing python code: names for a helper?", method=method)
        assert "snake_case" in third.messages[0].content


def test_llm_judge_and_extractor_on_the_small_model(llama_url):
    llm = _facade(
        llama_url,
        judge="llm", judge_llm={"kind": "openai", "base_url": llama_url, "model": "smollm2", "max_tokens": 64},
        extractor="llm", extractor_llm={"kind": "openai", "base_url": llama_url, "model": "smollm2", "max_tokens": 96},
    )
    llm.chat("u2", f"{NOTE} Reverse a list?")
    result = llm.chat("u2", "As I mentioned before: when writing python code, use snake_case names.")
    # A 135M model's judgement is noise; what matters is a valid, gated result and no crash.
    assert result.debug.judge is not None and result.debug.judge.label in {
        "neg_constraint_restate", "neg_correction", "neg_confusion", "pos_praise",
        "pos_progress", "neutral", "topic_shift",
    }


def test_server_errors_are_clear_and_the_session_goes_on(faulty, llama_url):
    broken, seen = faulty.url(fail_times=-1, status=500)
    llm = _facade(broken)
    with pytest.raises(LLMError, match="500"):
        llm.chat("u3", f"{NOTE} Reverse a list?")
    assert seen.hits >= 2  # retried before giving up
    # The failed turn is answered empty, so the user's next turn is not stuck behind it:
    # the same store, now served by a healthy server.
    fixed = _facade(llama_url)
    fixed.store = llm.store
    result = fixed.chat("u3", "Let's try again: how do I reverse a list?")
    assert result.turn == 2 and result.answer.strip()
    assert [m.role for m in fixed.store.messages(result.session_id)] == ["user", "assistant", "user", "assistant"]


def test_junk_replies_and_a_server_that_is_gone(faulty, closed_url):
    junk, _ = faulty.url(junk_times=-1)
    with pytest.raises(LLMError, match="not JSON"):
        _facade(junk).chat("u4", "Hello?")
    with pytest.raises(LLMError):
        _facade(closed_url).chat("u5", "Hello?")


def test_an_llm_extractor_on_a_broken_server_falls_back_counted(faulty):
    junk, _ = faulty.url(junk_times=-1)
    llm = _facade(
        faulty.url()[0],  # a healthy agent
        extractor="llm", extractor_llm={"kind": "openai", "base_url": junk, "model": "m", "max_retries": 0},
    )
    result = llm.chat("u6", f"{NOTE} Reverse a list?")
    assert result.answer == "hello from the faulty server"
    assert result.debug.extracted == []  # no cards from a broken extractor, and no crash

