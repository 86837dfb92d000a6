"""The dynamic batcher: merging, time-outs, errors, shutdown; and the batched models."""

from __future__ import annotations

import threading
import time

import msgspec
import numpy as np
import pytest

from vars_core.batched import BatchedEmbedder, BatchedReranker, batching_on
from vars_core.batcher import Batcher, BatcherClosed
from vars_core.config import BatcherConfig, ConfigError, EngineConfig, load_config


class Recorder:
    """A batch function that doubles numbers and records each call's batch."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.calls.append(list(items))
        time.sleep(self.delay_s)
        return [2 * i for i in items]


def concurrently(n: int, fn) -> list:
    """Run fn(i) for i in range(n) on n threads started together; results by i."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_callers_share_calls_and_each_gets_its_own_results_in_order():
    fn = Recorder()
    with Batcher(fn, max_items=64, max_wait_ms=200) as batcher:
        results = concurrently(16, lambda i: batcher.run([10 * i, 10 * i + 1, 10 * i + 2]))
    assert results == [[20 * i, 20 * i + 2, 20 * i + 4] for i in range(16)]
    assert len(fn.calls) < 16  # merged: fewer batch calls than callers
    assert sum(len(c) for c in fn.calls) == 48
    for call in fn.calls:  # a caller's items stay together and in order
        for k in range(0, len(call), 3):
            assert call[k + 1] == call[k] + 1 and call[k + 2] == call[k] + 2


def test_max_items_caps_a_batch():
    fn = Recorder()
    with Batcher(fn, max_items=4, max_wait_ms=50) as batcher:
        assert batcher.run(list(range(10))) == [2 * i for i in range(10)]
    assert [len(c) for c in fn.calls] == [4, 4, 2]
    assert batcher.stats.batches == 3 and batcher.stats.items == 10 and batcher.stats.largest == 4


def test_a_lone_item_is_flushed_after_max_wait():
    fn = Recorder()
    with Batcher(fn, max_items=100, max_wait_ms=80) as batcher:
        started = time.monotonic()
        assert batcher.submit(21).result(timeout=5) == 42
        waited = time.monotonic() - started
    assert 0.07 <= waited < 2.0
    assert fn.calls == [[21]]


def test_items_arriving_while_a_batch_runs_form_the_next_batch():
    release = threading.Event()
    calls: list[list[int]] = []

    def slow(items: list[int]) -> list[int]:
        calls.append(list(items))
        release.wait(10)  # the first batch runs until the others are queued
        return [2 * i for i in items]

    with Batcher(slow, max_items=32, max_wait_ms=0) as batcher:
        first = batcher.submit(1)
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        later = [batcher.submit(i) for i in range(2, 7)]
        release.set()
        assert [f.result(5) for f in [first, *later]] == [2, 4, 6, 8, 10, 12]
    assert calls == [[1], [2, 3, 4, 5, 6]]


def test_an_exception_reaches_every_caller_of_the_batch_and_the_batcher_goes_on():
    calls = []

    def fails(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("model exploded")
        return items

    with Batcher(fails, max_items=8, max_wait_ms=300) as batcher:
        results = concurrently(5, lambda i: batcher.run([i]))
        assert all(isinstance(r, ValueError) and "model exploded" in str(r) for r in results), results
        assert len(calls) == 1
        assert batcher.run([7, 8]) == [7, 8]


def test_a_wrong_number_of_results_is_an_error_for_every_caller():
    with Batcher(lambda items: items[:-1], max_items=8, max_wait_ms=100) as batcher:
        results = concurrently(3, lambda i: batcher.run([i]))
    assert all(isinstance(r, RuntimeError) and "results for" in str(r) for r in results), results


def test_close_flushes_what_is_queued_then_refuses_new_items():
    fn = Recorder()
    batcher = Batcher(fn, max_items=100, max_wait_ms=10_000)
    futures = batcher.submit_many([1, 2, 3])
    started = time.monotonic()
    batcher.close()
    assert time.monotonic() - started < 5  # did not wait out max_wait_ms
    assert [f.result(0) for f in futures] == [2, 4, 6]
    with pytest.raises(BatcherClosed):
        batcher.submit(4)
    assert batcher._thread is not None and not batcher._thread.is_alive()


def test_close_without_use_starts_no_thread():
    batcher = Batcher(Recorder())
    batcher.close()
    assert batcher._thread is None


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_items"):
        Batcher(Recorder(), max_items=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Batcher(Recorder(), max_wait_ms=-1)


# --------------------------------------------------------------------------- batched models
class FakeEmbedder:
    dim = 3
    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def _vec(self, text: str) -> np.ndarray:
        return np.array([len(text), text.count("a"), 1.0], dtype=np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(("embed", list(texts)))
        return np.stack([self._vec(t) for t in texts])

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        self.calls.append(("embed_queries", list(texts)))
        return np.stack([self._vec("q:" + t) for t in texts])


def test_batched_embedder_merges_documents_and_queries_and_keeps_each_callers_rows():
    inner = FakeEmbedder()
    batched = BatchedEmbedder(inner, max_items=64, max_wait_ms=200)

    def call(i: int) -> tuple[np.ndarray, np.ndarray]:
        if i % 2:
            return "q", batched.embed_queries([f"a{i}", "b" * i])
        return "d", batched.embed([f"a{i}", "b" * i])

    results = concurrently(8, call)
    batched.close()
    assert len(inner.calls) < 8  # fewer model calls than callers
    for i, (kind, rows) in enumerate(results):
        direct = inner.embed_queries if kind == "q" else inner.embed
        np.testing.assert_array_equal(rows, direct([f"a{i}", "b" * i]))
    assert batched.embed([]).shape == (0, 3)


class FakeReranker:
    name = "fake-reranker"

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def score_pairs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        self.calls.append(list(pairs))
        return np.array([1.0 / (1 + len(q) + len(d)) for q, d in pairs])


def test_batched_reranker_scores_each_callers_documents():
    inner = FakeReranker()
    batched = BatchedReranker(inner, max_items=64, max_wait_ms=200)
    results = concurrently(6, lambda i: batched.score("q" * i, ["x", "yy", "zzz"]))
    batched.close()
    for i, scores in enumerate(results):
        np.testing.assert_allclose(scores, [1 / (2 + i), 1 / (3 + i), 1 / (4 + i)])
    assert len(inner.calls) < 6
    assert batched.score("q", []).shape == (0,)


def test_the_real_minilm_gives_the_same_vectors_batched_as_alone():
    from vars_core.embedder import make_embedder

    inner = make_embedder("minilm", batch_invariant=False)
    sentences = [f"when I ask about topic {i}, keep the answer to {i} lines" for i in range(12)]
    alone = np.stack([inner.embed([s])[0] for s in sentences])
    inner._cache.clear()
    batched = BatchedEmbedder(inner, max_items=16, max_wait_ms=100)
    rows = concurrently(12, lambda i: batched.embed([sentences[i]])[0])
    batched.close()
    assert batched.batcher.stats.batches < 12
    np.testing.assert_allclose(np.stack(rows), alone, atol=1e-5)


# --------------------------------------------------------------------------- config and engine
def test_batching_applies_to_in_process_models_on_a_gpu_unless_told_otherwise():
    auto, on, off = BatcherConfig(), BatcherConfig(enabled=True), BatcherConfig(enabled=False)
    assert batching_on(auto, True, "cuda:0") and batching_on(auto, True, "cuda")
    assert not batching_on(auto, True, "cpu")  # one text per pass: bit-reproducible
    assert batching_on(on, True, "cpu")
    assert not batching_on(off, True, "cuda")
    assert not batching_on(on, False, "")  # a server batches for itself


def test_batcher_section_loads_from_toml_and_names_a_bad_field(tmp_path):
    path = tmp_path / "vars.toml"
    path.write_text("[batcher]\nenabled = true\nmax_items = 16\nmax_wait_ms = 2.5\n")
    assert load_config(path, environ={}).batcher == BatcherConfig(True, 16, 2.5)
    assert load_config(None, environ={"VARS_BATCHER__ENABLED": "auto"}).batcher.enabled == "auto"
    assert load_config(None, environ={"VARS_BATCHER__ENABLED": "false"}).batcher.enabled is False
    path.write_text('[batcher]\nenabled = "sometimes"\n')
    with pytest.raises(ConfigError, match="batcher.enabled"):
        load_config(path, environ={})


def test_the_engine_batches_its_embedder_only_when_configured():
    from vars_core.embedder import TransformersEmbedder, default_embedder
    from vars_core.engine import Engine

    assert Engine(EngineConfig()).embedder is default_embedder()
    config = msgspec.structs.replace(EngineConfig(), batcher=BatcherConfig(enabled=True, max_wait_ms=1))
    engine = Engine(config)
    embedder = engine.embedder
    assert isinstance(embedder, BatchedEmbedder)
    assert isinstance(embedder.inner, TransformersEmbedder) and embedder.inner is not default_embedder()
    assert embedder.inner.batch_size > 1  # a merged batch is one padded forward pass
    assert embedder.embed(["use bullet points"]).shape == (1, embedder.dim)
    embedder.close()
