"""The dynamic batcher against one request at a time, with the real all-MiniLM-L6-v2.

C caller threads (as in a worker's threads pool) each embed short texts one at a time.
"direct": every call is its own forward pass on the shared model (what a threads pool does
without the batcher). "batched": the calls go through ``BatchedEmbedder``, which merges
what the threads submit into one forward pass of up to ``max_items`` texts. The two run
alternately in one process, several repetitions each; the figure is the median.

Every text is unique and the embedder's cache is off, so each text costs a forward pass.
``python3 -m perf.batcher`` writes its section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perf import markdown
from vars_core.batched import BatchedEmbedder
from vars_core.embedder import TransformersEmbedder, minilm_path

START = "<!-- perf.batcher: start -->"
END = "<!-- perf.batcher: end -->"

SUBJECTS = ("my python script", "the proof", "this essay", "a SQL query", "the recipe", "my resume")
ASKS = ("keep it short", "use bullet points", "explain each step", "add type hints", "be formal")


def texts(n: int, salt: str) -> list[str]:
    """``n`` distinct short requests (8-12 words), like a user's turn."""
    return [
        f"Please look at {SUBJECTS[i % len(SUBJECTS)]} and {ASKS[(i // 7) % len(ASKS)]}, item {salt}-{i}."
        for i in range(n)
    ]


@dataclass(frozen=True)
class Run:
    mode: str
    callers: int
    texts: int
    seconds: float
    batches: int = 0

    @property
    def rate(self) -> float:
        return self.texts / self.seconds


def drive(embed: Callable[[list[str]], np.ndarray], callers: int, per_caller: int, salt: str) -> float:
    """Wall seconds for ``callers`` threads to embed ``per_caller`` texts each, one per call."""
    work = [texts(per_caller, f"{salt}-{c}") for c in range(callers)]
    barrier = threading.Barrier(callers + 1)
    errors: list[BaseException] = []

    def caller(mine: list[str]) -> None:
        barrier.wait()
        try:
            for text in mine:
                embed([text])
        except BaseException as exc:  # surfaced after join
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(w,)) for w in work]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def measure(
    model: TransformersEmbedder, callers: int, per_caller: int, reps: int, max_items: int, max_wait_ms: float
) -> list[Run]:
    runs: list[Run] = []
    for rep in range(reps):
        seconds = drive(model.embed, callers, per_caller, f"d{rep}")
        runs.append(Run("direct", callers, callers * per_caller, seconds))
        batched = BatchedEmbedder(model, max_items, max_wait_ms)
        seconds = drive(batched.embed, callers, per_caller, f"b{rep}")
        runs.append(Run("batched", callers, callers * per_caller, seconds, batched.batcher.stats.batches))
        batched.close()
    return runs


def median_rate(runs: list[Run], mode: str) -> float:
    return statistics.median(r.rate for r in runs if r.mode == mode)


def section(
    results: dict[int, list[Run]],
    torch_threads: int,
    max_items: int,
    max_wait_ms: float,
    reps: int,
    load: tuple[float, float],
) -> str:
    rows = []
    for callers, runs in results.items():
        direct, batched = median_rate(runs, "direct"), median_rate(runs, "batched")
        mean_batch = statistics.median(r.texts / r.batches for r in runs if r.mode == "batched")
        rows.append(
            f"| {callers} | {direct:,.0f} | {batched:,.0f} | {batched / direct:.1f}x | {mean_batch:.1f} |"
        )
    return "\n".join(
        [
            START,
            "## Dynamic batcher (in-process embedder)",
            "",
            "`python3 -m perf.batcher`: the real all-MiniLM-L6-v2 on CPU, C caller threads each",
            "embedding unique short texts (8-12 words) one call at a time, as the threads of one",
            "worker process do. *direct*: each call is its own forward pass on the shared model",
            "(the threads pool without the batcher). *batched*: calls go through the dynamic",
            f"batcher (`max_items = {max_items}`, `max_wait_ms = {max_wait_ms:g}`), which merges",
            "them into one padded forward pass. Both run alternately in one process; each figure",
            f"is the median of {reps} repetitions. torch threads: {torch_threads}",
            f"(`torch.set_num_threads`); Python {platform.python_version()}, {os.cpu_count()} cores;",
            f"{datetime.date.today().isoformat()}; 1-minute load average {load[0]:.1f} at the start and {load[1]:.1f} at the end (the",
            "machine is shared: absolute rates move with the load, the side-by-side ratio much less).",
            "",
            "| callers | direct (texts/s) | batched (texts/s) | speed-up | mean batch |",
            "|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Merged, the threads' texts share one forward pass, so throughput grows with the",
            "callers while one text at a time stays flat. With one caller there is nothing to",
            "merge and the batcher only adds its wait and a thread hand-off; a worker with",
            "`--concurrency 1` therefore runs without it. Not measured here (no GPU): on a GPU a",
            "pass of 32 short texts costs little more than a pass of one, so the gap should be wider.",
            END,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--texts", type=int, default=320, help="texts per repetition (split over the callers)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-items", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/performance.md"))
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.torch_threads)
    model = TransformersEmbedder(
        minilm_path(), pooling="mean", name="all-MiniLM-L6-v2", batch_invariant=False,
        batch_size=args.max_items, cache_size=0,
    )
    model.embed(texts(64, "warm-up"))  # first passes allocate; not measured
    load_start = os.getloadavg()[0]
    results: dict[int, list[Run]] = {}
    for callers in args.callers:
        results[callers] = measure(
            model, callers, max(1, args.texts // callers), args.reps, args.max_items, args.max_wait_ms
        )
        direct, batched = median_rate(results[callers], "direct"), median_rate(results[callers], "batched")
        print(f"{callers:3d} callers: direct {direct:7.0f} texts/s, batched {batched:7.0f} texts/s", flush=True)
    load = (load_start, os.getloadavg()[0])
    text = section(results, args.torch_threads, args.max_items, args.max_wait_ms, args.reps, load)
    print(text)
    if not args.no_write:
        markdown.write_section(args.out, text, START, END)


if __name__ == "__main__":
    main()
