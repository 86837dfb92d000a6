"""perf.capacity_server: its model of time (K slots, FIFO, prefill + decode per token,
seeded log-normal lengths capped by max_tokens) and the capacity bound.

Timing checks are one-sided (a request never holds its slot for less than the model
says, never more than K at once, served in arrival order): a slow machine cannot fail them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from perf.capacity_server import Capacity, CapacityServer, bound_sessions_per_hour, prompt_tokens
from vars_core.llm.openai import OpenAIChat
from vars_core.tokens import count_tokens
from vars_core.types import Message


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_output_lengths_are_lognormal_seeded_and_capped() -> None:
    cap = Capacity()
    lengths = [cap.output_tokens("agent", msgs(f"question {i}"), 100_000) for i in range(4000)]
    logs = [math.log(n) for n in lengths]
    assert 140 <= statistics.median(lengths) <= 160
    assert 0.55 <= statistics.stdev(logs) <= 0.65
    # The same request draws the same length; another seed or role another.
    assert cap.output_tokens("agent", msgs("question 7"), 100_000) == lengths[7]
    others = [Capacity(seed=1).output_tokens("agent", msgs(f"question {i}"), 100_000) for i in range(50)]
    assert others != lengths[:50]
    capped = [cap.output_tokens("agent", msgs(f"question {i}"), 128) for i in range(4000)]
    assert max(capped) == 128 and all(c == min(n, 128) for c, n in zip(capped, lengths, strict=True))


def test_service_time_and_bound() -> None:
    cap = Capacity()  # 0.2 ms per prompt token, 20 ms per output token
    assert cap.service_time(1000, 100) == pytest.approx(0.2 + 2.0)
    assert Capacity(time_scale=0.5).service_time(1000, 100) == pytest.approx(1.1)
    # 64 slots, 90 slot-seconds per session: 64 * 3600 / 90 sessions per hour.
    assert bound_sessions_per_hour(64, 90.0) == pytest.approx(2560.0)
    assert prompt_tokens([{"role": "user", "content": "Sort a list, please."}]) == count_tokens("Sort a list, please.")


@pytest.fixture
def server() -> Iterator[CapacityServer]:
    srv = CapacityServer(Capacity(slots=2, time_scale=0.05))  # 1 ms per output token
    srv.start()
    yield srv
    srv.stop()


def test_slots_fifo_and_service_time(server: CapacityServer) -> None:
    cap = server.capacity
    with OpenAIChat(server.url, "agent", max_concurrency=8) as client:
        def call(i: int):
            return client.complete_blocking([Message("user", f"request number {i}")], max_tokens=200)

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(call, range(8)))
    records = httpx.get(server.url + "/stats").json()["requests"]
    assert len(records) == 8
    for role, arrived, started, finished, n_prompt, n_out, service in records:
        assert role == "agent"
        assert service == pytest.approx(cap.service_time(n_prompt, n_out))
        assert finished - started >= service - 1e-3  # the slot is held at least as modelled
        assert started >= arrived
    # Never more than K in service at once.
    events = sorted([(r[2], 1) for r in records] + [(r[3], -1) for r in records])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak <= cap.slots
    # First come, first served: requests start in the order they arrived.
    by_arrival = sorted(records, key=lambda r: r[1])
    assert [r[2] for r in by_arrival] == sorted(r[2] for r in by_arrival)
    # The usage is the server's: the prompt counted as vars_core counts it, the drawn length.
    usages = sorted((r.usage.prompt_tokens, r.usage.completion_tokens) for r in replies)
    assert usages == sorted((r[4], r[5]) for r in records)
    assert all(len(r.text.split()) == r.usage.completion_tokens for r in replies)


def test_stream_sends_every_token_and_the_usage(server: CapacityServer) -> None:
    with OpenAIChat(server.url, "agent") as client:
        chunks = list(client.stream_chunks([Message("user", "stream me something")], max_tokens=40))
    last = chunks[-1]
    text = "".join(c.delta for c in chunks)
    assert last.usage is not None and not last.usage_estimated
    assert len(text.split()) == last.usage.completion_tokens <= 40
    assert last.finish_reason in ("stop", "length")


def test_bad_request_is_refused(server: CapacityServer) -> None:
    resp = httpx.post(server.url + "/v1/chat/completions", json={"messages": []})
    assert resp.status_code == 400 and "messages" in resp.json()["error"]["message"]
