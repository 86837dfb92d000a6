"""The LLM clients against real servers on loopback: llama-cpp-python with SmolLM2-135M for
the happy path, a scripted faulty server for retries and errors, a closed port for "down"."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from vars_core.llm import Completion, LLMError, complete_sync, known_kinds, make_llm
from vars_core.llm.openai import OpenAIChat
from vars_core.llm.scripted import ScriptedChat
from vars_core.types import Message

if TYPE_CHECKING:  # imported by pytest_plugins below; importing it here too stops rewriting
    from tests.llm_servers import FaultyServer

pytest_plugins = ["tests.llm_servers"]

HELLO = [Message("system", "You are terse."), Message("user", "Name one colour.")]
FAST = {"backoff_base_s": 0.01, "backoff_cap_s": 0.05}  # retries without slow sleeps


def fast_client(url: str, **options: Any) -> OpenAIChat:
    return OpenAIChat(url, "test-model", **{"timeout_s": 5.0, **FAST, **options})


async def collect(stream: Any) -> list[str]:
    return [delta async for delta in stream]


# --------------------------------------------------------------------------- llama.cpp


def test_complete_returns_text_and_real_usage(llama_url: str) -> None:
    with OpenAIChat(llama_url + "/v1", "smollm2") as llm:
        out = asyncio.run(llm.complete(HELLO, max_tokens=24))
        assert out.text.strip()
        assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
        assert not out.usage_estimated
        assert out.finish_reason in ("stop", "length")
        assert llm.stats()["prompt_tokens"] == out.usage.prompt_tokens
        assert (llm.requests, llm.retries, llm.failures) == (1, 0, 0)


def test_stream_yields_deltas(llama_url: str) -> None:
    with OpenAIChat(llama_url, "smollm2") as llm:
        deltas = asyncio.run(collect(llm.stream(HELLO, max_tokens=24)))
    assert len(deltas) >= 3
    assert "".join(deltas).strip()


def test_parallel_calls_all_complete(llama_url: str) -> None:
    prompts = [[Message("user", f"Count to {n}.")] for n in range(8)]

    async def main(llm: OpenAIChat) -> list[Completion]:
        return await asyncio.gather(*(llm.complete(p, max_tokens=12) for p in prompts))

    with OpenAIChat(llama_url, "smollm2", max_concurrency=4) as llm:
        outs = asyncio.run(main(llm))
        assert llm.requests == 8 and llm.failures == 0
    assert all(o.text.strip() and o.usage.completion_tokens > 0 for o in outs)


def test_schema_the_server_refuses_falls_back_to_plain_once(llama_url: str) -> None:
    # llama-cpp-python validates response_format.type as text|json_object only.
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    with OpenAIChat(llama_url, "smollm2", **FAST) as llm:
        first = llm.complete_blocking(HELLO, max_tokens=12, json_schema=schema)
        second = llm.complete_blocking(HELLO, max_tokens=12, json_schema=schema)
        assert first.text.strip() and second.text.strip()
        assert llm.schema_fallbacks == 1 and not llm.schema_supported
        assert llm.requests == 3 and llm.retries == 0  # refused once, then plain twice


def test_llama_cpp_alias_enforces_the_schema(llama_url: str) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    llm = make_llm("llama.cpp", base_url=llama_url, model="smollm2")
    try:
        out = complete_sync(
            llm,
            [Message("user", "Is water wet? Answer in JSON.")],
            max_tokens=32,
            json_schema=schema,
        )
    finally:
        llm.close()
    assert isinstance(json.loads(out.text)["ok"], bool)


# --------------------------------------------------------------------------- faulty server


def test_semaphore_bounds_requests_in_flight(faulty: FaultyServer) -> None:
    url, seen = faulty.url(delay_s=0.15)

    async def main(llm: OpenAIChat) -> list[Completion]:
        return await asyncio.gather(*(llm.complete(HELLO) for _ in range(10)))

    with fast_client(url, max_concurrency=3) as llm:
        outs = asyncio.run(main(llm))
    assert len(outs) == 10 and seen.hits == 10
    assert seen.max_in_flight == 3


def test_server_errors_are_retried_until_success(faulty: FaultyServer) -> None:
    url, seen = faulty.url(fail_times=2, status=503)
    with fast_client(url) as llm:
        out = llm.complete_blocking(HELLO)
        assert out.text == "hello from the faulty server"
        assert (llm.requests, llm.retries, llm.failures) == (3, 2, 0)
    assert seen.hits == 3


def test_persistent_500_gives_up_after_max_retries(faulty: FaultyServer) -> None:
    url, seen = faulty.url(fail_times=-1, status=500)
    with fast_client(url, max_retries=2) as llm:
        with pytest.raises(LLMError, match=r"HTTP 500 .*scripted failure.*after 3 attempts") as e:
            llm.complete_blocking(HELLO)
        assert e.value.status == 500
        assert (llm.retries, llm.failures) == (2, 1)
    assert seen.hits == 3


def test_other_4xx_is_not_retried(faulty: FaultyServer) -> None:
    url, seen = faulty.url(fail_times=-1, status=401)
    with fast_client(url) as llm:
        with pytest.raises(LLMError, match="HTTP 401") as e:
            llm.complete_blocking(HELLO)
    assert e.value.status == 401 and seen.hits == 1


def test_junk_body_is_retried_once_then_fails(faulty: FaultyServer) -> None:
    url, seen = faulty.url(junk_times=-1)
    with fast_client(url) as llm:
        with pytest.raises(LLMError, match="not JSON.*upstream hiccup"):
            llm.complete_blocking(HELLO)
    assert seen.hits == 2


def test_junk_body_once_then_success(faulty: FaultyServer) -> None:
    url, _ = faulty.url(junk_times=1)
    with fast_client(url) as llm:
        assert llm.complete_blocking(HELLO).text == "hello from the faulty server"
        assert llm.retries == 1


def test_reply_without_choices_is_an_error(faulty: FaultyServer) -> None:
    url, _ = faulty.url(junk_times=-1, junk=b'{"error": "model overloaded"}')
    with fast_client(url) as llm:
        with pytest.raises(LLMError, match="lacks choices"):
            llm.complete_blocking(HELLO)


def test_retry_after_is_honoured(faulty: FaultyServer) -> None:
    url, seen = faulty.url(fail_times=1, status=429, retry_after="0.6")
    with fast_client(url, backoff_base_s=0.0, backoff_cap_s=5.0) as llm:
        llm.complete_blocking(HELLO)
    assert seen.hits == 2
    assert seen.arrivals[1] - seen.arrivals[0] >= 0.55  # backoff alone would be 0


def test_hang_past_timeout_is_an_error(faulty: FaultyServer) -> None:
    url, seen = faulty.url(delay_s=3.0)
    started = time.monotonic()
    with fast_client(url, timeout_s=0.3, max_retries=1) as llm:
        with pytest.raises(LLMError, match=r"no reply .* within 0.3s"):
            llm.complete_blocking(HELLO)
    assert time.monotonic() - started < 2.0
    assert seen.hits == 2


def test_server_down_fails_fast(closed_url: str) -> None:
    started = time.monotonic()
    with fast_client(closed_url, max_retries=2) as llm:
        with pytest.raises(LLMError, match="cannot connect") as e:
            llm.complete_blocking(HELLO)
        assert e.value.status is None and llm.requests == 3
    assert time.monotonic() - started < 2.0


def test_missing_usage_is_estimated(faulty: FaultyServer) -> None:
    url, _ = faulty.url(usage=False)
    with fast_client(url) as llm:
        out = llm.complete_blocking(HELLO)
        assert out.usage_estimated and out.usage.completion_tokens == 5
        assert llm.estimated_usage == 1


def test_schema_rejected_with_400_is_remembered(faulty: FaultyServer) -> None:
    url, seen = faulty.url(reject_schema=True)
    with fast_client(url) as llm:
        for _ in range(2):
            llm.complete_blocking(HELLO, json_schema={"type": "object", "title": "Verdict"})
    assert seen.bodies[0]["response_format"]["json_schema"]["name"] == "Verdict"
    assert ["response_format" in b for b in seen.bodies] == [True, False, False]


def test_stream_retries_before_the_first_delta(faulty: FaultyServer) -> None:
    url, seen = faulty.url(fail_times=1)
    with fast_client(url) as llm:
        deltas = asyncio.run(collect(llm.stream(HELLO)))
        assert "".join(deltas) == "hello from the faulty server" and len(deltas) == 5
        assert llm.retries == 1 and llm.completion_tokens == 5  # from the usage chunk
    assert seen.bodies[-1]["stream"] is True


def test_complete_sync_from_threads_shares_one_client(faulty: FaultyServer) -> None:
    url, seen = faulty.url(delay_s=0.3)
    with fast_client(url, max_concurrency=8) as llm:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: complete_sync(llm, HELLO), range(4)))
        elapsed = time.monotonic() - started
    assert [o.text for o in outs] == ["hello from the faulty server"] * 4
    assert seen.max_in_flight == 4 and elapsed < 1.0  # together, not one after another


def test_complete_works_from_several_event_loops(faulty: FaultyServer) -> None:
    url, _ = faulty.url()
    with fast_client(url) as llm:
        # Each asyncio.run is a new loop; the client's connections live on its own loop.
        texts = [asyncio.run(llm.complete(HELLO)).text for _ in range(2)]
        results: list[str] = []
        t = threading.Thread(target=lambda: results.append(asyncio.run(llm.complete(HELLO)).text))
        t.start()
        t.join()
    assert texts + results == ["hello from the faulty server"] * 3


def test_closed_client_refuses_calls(faulty: FaultyServer) -> None:
    url, _ = faulty.url()
    llm = fast_client(url)
    llm.complete_blocking(HELLO)
    llm.close()
    with pytest.raises(LLMError, match="closed"):
        llm.complete_blocking(HELLO)


# --------------------------------------------------------------------------- scripted, registry


def test_scripted_chat_is_deterministic() -> None:
    prompt = [Message("system", "Be brief."), Message("user", "What is 2 + 2?")]
    a, b = ScriptedChat(seed=7, bank=None), ScriptedChat(seed=7, bank=None)
    first = complete_sync(a, prompt)
    assert first.text and first.usage.completion_tokens > 0
    assert complete_sync(b, prompt) == first == asyncio.run(a.complete(prompt))
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: complete_sync(a, prompt).text, range(8))) == {first.text}
    assert "".join(asyncio.run(collect(a.stream(prompt)))) == first.text
    others = {complete_sync(ScriptedChat(seed=s, bank=None), prompt).text for s in range(10)}
    assert len(others) > 1  # the seed matters


def test_registry_builds_backends_and_names_unknown_kinds() -> None:
    assert isinstance(make_llm("scripted", seed=1), ScriptedChat)
    vllm = make_llm("vllm", base_url="http://127.0.0.1:9/v1", model="m")
    llama = make_llm("llama.cpp", base_url="http://127.0.0.1:9", model="m")
    assert isinstance(vllm, OpenAIChat) and vllm.base_url == "http://127.0.0.1:9"
    assert vllm.schema_format == "json_schema" and llama.schema_format == "json_object"
    with pytest.raises(ValueError, match=r"unknown LLM kind 'gpt5'.*openai.*scripted"):
        make_llm("gpt5")
    with pytest.raises(ValueError, match="bad options for LLM kind 'openai'"):
        make_llm("openai", base_url="http://x", model="m", temprature=0.2)
    assert set(known_kinds()) == {"openai", "vllm", "llama.cpp", "scripted"}
