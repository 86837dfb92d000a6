"""Retrieve latency at 100, 1,000 and 10,000 cards per user, and memory per 1,000 cards.

One user holds N active cards in a real Redis (an embedded redis-server, as the workers
use). The figure is the retrieve stage handler (`vars_core.stages.retrieve.handle`, what a
retrieve worker runs per event): the store reads, FAISS `IndexIDMap(IndexFlatIP)` top-64,
s0, the policy's list of 5 (method rag_vector), the trace and its commit.

Cards: the scripted catalog's 51 preferences, each card a variant ("<condition> in case
<i>"). Their embeddings are the real MiniLM embeddings of the 51 notes and conditions, each
card a perturbed copy (Gaussian noise of norm 0.5, renormalized: cosine about 0.9 to its
base), and the item vectors the engine's projection of the perturbed note: embedding
10,000 distinct notes is not what is measured. Query embeddings are MiniLM's, computed
before the timing (the embedder's text cache serves them), so embedding is not in the
figures either.

Measured per N: queries on the cached index (the steady state); a query right after one
card was written (the version moved: the cached index is patched from the change log); a
query with nothing cached (the index built from the store); the search and policy alone;
and, side by side, the handler as it was before the index held the item vectors and notes
(every card and embedding read from Redis per query). Memory: Redis `MEMORY USAGE` of the
user's cards and embeddings, the in-process index (FAISS, item vectors, notes), and the
trace one retrieve stores.

    python -m perf.retrieval_latency                # writes its section of docs/performance.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from perf import markdown

START = "<!-- perf.retrieval: start -->"
END = "<!-- perf.retrieval: end -->"
NOISE = 0.5


@dataclass
class Result:
    n: int
    steady: list[float] = field(default_factory=list)  # seconds per handler call
    before: list[float] = field(default_factory=list)
    core: list[float] = field(default_factory=list)  # search + policy, no store
    search: list[float] = field(default_factory=list)  # FAISS alone, one OpenMP thread
    search_omp: list[float] = field(default_factory=list)  # FAISS alone, its default threads
    after_write: list[float] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    cold_load: list[float] = field(default_factory=list)  # store reads of a cold build
    redis_bytes: dict[str, int] = field(default_factory=dict)
    index_bytes: dict[str, int] = field(default_factory=dict)
    trace_bytes: int = 0


def _ms(values: list[float], q: float, digits: int = 1) -> str:
    return f"{np.percentile(values, q) * 1000:,.{digits}f}" if values else "n/a"


OMP_DEFAULT = faiss.omp_get_max_threads()  # FAISS's threads before anything sets them


class Bench:
    def __init__(self, url: str) -> None:
        from vars_core.engine import Engine
        from vars_core.problems import load_problems
        from vars_core.scripted.catalog import catalog
        from vars_core.stages.retrieve import query_vector
        from vars_core.store import StateStore
        from vars_core.store.connect import connect
        from vars_core.store.redis_backend import RedisBackend

        self.client = connect(url)
        self.store = StateStore(RedisBackend(self.client))
        self.engine = Engine()
        self.catalog = catalog()
        embedder = self.engine.embedder
        self.note_base = embedder.embed([e.note for e in self.catalog])
        self.cond_base = embedder.embed([e.condition for e in self.catalog])
        self.problem = load_problems(["math-500"])[0]
        self.opening = f"Quick question: I'm working on a math problem.\n\n{self.problem.question}"
        self.messages = [f"Please {e.action}." for e in self.catalog]
        for message in self.messages:  # fill the embedder's cache: embedding is not timed
            query_vector(embedder, self.opening, message)
        self.rng = np.random.default_rng(0)

    def _perturbed(self, base: np.ndarray) -> np.ndarray:
        noise = self.rng.standard_normal(base.shape).astype(np.float32) * (NOISE / np.sqrt(base.shape[0]))
        v = base + noise
        return (v / np.linalg.norm(v)).astype(np.float32)

    def card(self, user_id: str, i: int):
        from vars_core.memory import card_id_for
        from vars_core.notes import format_note
        from vars_core.types import Card, CardEmbedding

        entry = self.catalog[i % len(self.catalog)]
        condition = f"{entry.condition} in case {i}"
        note = format_note(condition, entry.action)
        note_vec = self._perturbed(self.note_base[i % len(self.catalog)])
        cond_vec = self._perturbed(self.cond_base[i % len(self.catalog)])
        proj = self.engine.projection
        card = Card(card_id_for(user_id, note), user_id, condition, entry.action, note, 0.9, f"{i:06d}")
        emb = CardEmbedding(note_vec.tolist(), cond_vec.tolist(), proj.project(note_vec).tolist(), proj.version)
        return card, emb

    def populate(self, user_id: str, n: int) -> None:
        from vars_core.types import UserVector

        user = self.store.user(user_id)
        ops, ids = [], []
        for i in range(n):
            card, emb = self.card(user_id, i)
            ops += user.put_card_ops(card, emb)
            ids.append(card.card_id)
            if len(ops) >= 1000:
                self.store.backend.apply(ops)
                ops = []
        z = (self.rng.standard_normal(self.engine.config.projection_dim) * 0.05).tolist()
        vector = UserVector(z, [0.0] * len(z), projection_version=self.engine.projection.version)
        self.store.backend.apply([*ops, *user.bump_version_ops(ids), user.put_vector_op(vector)])

    def session(self, user_id: str, turns: int):
        from vars_core.types import SessionState, SimulatorTurn

        state = SessionState(f"{user_id}:s1", user_id, "rag_vector", "p0", 1, self.problem, 10**6, 0, opening=self.opening)
        ops = [self.store.put_session_op(state)]
        ops += [
            self.store.stage_output_op(state.session_id, t, "simulate", SimulatorTurn(self.messages[t % len(self.messages)], False))
            for t in range(1, turns + 1)
        ]
        for start in range(0, len(ops), 500):
            self.store.backend.apply(ops[start : start + 500])
        return state

    def measure(self, n: int, queries: int, before_budget_s: float, reps: int) -> Result:
        from vars_core.retrieval import retrieve
        from vars_core.stages import retrieve as stage
        from vars_core.stages.context import StageContext

        user_id = f"perf-retrieval-n{n}"
        self.populate(user_id, n)
        turns = iter(range(1, 10**6))
        state = self.session(user_id, queries * 2 + 4 * reps + 64)
        engine, store, res = self.engine, self.store, Result(n)

        def timed(handler, ctx_turn: int) -> float:
            ctx = StageContext(engine, store, state, ctx_turn)
            started = time.perf_counter()
            handler(ctx)
            return time.perf_counter() - started

        timed(stage.handle, next(turns))  # builds the index
        spent_before = 0.0
        for _ in range(queries):
            res.steady.append(timed(stage.handle, next(turns)))
            if spent_before < before_budget_s or len(res.before) < 5:
                res.before.append(timed(full_load_handle, next(turns)))
                spent_before += res.before[-1]
        # search and policy alone, on the cached index (what the stage adds to the reads)
        user = store.user(user_id)
        index = stage.user_index(engine.index_cache, user, engine.config.policy.match_on)
        vector = user.vector(engine.config.projection_dim, engine.projection.version)
        cfg = engine.config.policy
        for i in range(queries):
            q = stage.query_vector(engine.embedder, self.opening, self.messages[i % len(self.messages)])
            started = time.perf_counter()
            index.search_positions(q, cfg.top_k_dense)
            res.search.append(time.perf_counter() - started)
            # the same search on FAISS's default OpenMP threads (as before search_positions
            # pinned a query to its own thread)
            faiss.omp_set_num_threads(OMP_DEFAULT)
            started = time.perf_counter()
            index.index.search(q.reshape(1, -1), min(cfg.top_k_dense, len(index)))
            res.search_omp.append(time.perf_counter() - started)
            started = time.perf_counter()
            retrieve(user_id, q, index, None, vector, cfg, np.random.default_rng(i), True, engine.projection.version)
            res.core.append(time.perf_counter() - started)
        # one card written (a version bump with its change log entry), then a query
        for r in range(reps):
            card, emb = self.card(user_id, n + r)
            store.backend.apply([*user.put_card_ops(card, emb), *user.bump_version_ops([card.card_id])])
            res.after_write.append(timed(stage.handle, next(turns)))
        # nothing cached: the index built from the store
        for _ in range(reps):
            engine.index_cache.invalidate(user_id)
            res.cold.append(timed(stage.handle, next(turns)))
            started = time.perf_counter()
            cards = user.cards()
            user.embeddings_of(list(cards))
            res.cold_load.append(time.perf_counter() - started)
        # memory
        res.redis_bytes = {
            "cards": int(self.client.memory_usage(user.cards_key, samples=0)),
            "embeddings": int(self.client.memory_usage(user.embeddings_key, samples=0)),
        }
        index = stage.user_index(engine.index_cache, user, cfg.match_on)
        res.index_bytes = {
            "faiss": len(faiss.serialize_index(index.index)) if index.index is not None else 0,
            "items": sum(m.nbytes for m in index.items.values()),
            "notes and ids": sum(sys.getsizeof(s) + 8 for s in (*index.notes, *index.card_ids)),
        }
        res.trace_bytes = int(self.client.strlen(user.trace_key(state.session_id, 2)))
        res.cards = len(index)  # n plus the cards written above
        return res


def full_load_handle(ctx) -> None:
    """The retrieve handler before the index held its cards' item vectors and notes: every
    card and every embedding of the user read from Redis on each query (the index itself
    cached by version, as it was)."""
    from vars_core.retrieval import UserIndex, active_embeddings, retrieve
    from vars_core.stages.retrieve import query_vector, retrieval_query
    from vars_core.store.backend import Op
    from vars_core.store.state import encode
    from vars_core.types import RetrieveResult

    engine, user, session = ctx.engine, ctx.user, ctx.session
    cfg = engine.config
    latest = ctx.simulator_turn()
    query = retrieval_query(session.opening, latest.message if latest else "")
    cards = user.cards()
    embeddings = {cid: e for cid, e in user.embeddings().items() if cid in cards}
    key = ("before", user.user_id, user.version())
    index = _BEFORE_CACHE.get(key)
    if index is None:
        index = _BEFORE_CACHE[key] = UserIndex(active_embeddings(cards, embeddings, cfg.policy.match_on))
    vector = user.vector(cfg.projection_dim, engine.projection.version)
    trace = retrieve(
        user.user_id, query_vector(engine.embedder, session.opening, latest.message if latest else ""),
        index, embeddings, vector, cfg.policy, ctx.rng("retrieve"), True, engine.projection.version,
        query=query, notes={cid: card.note for cid, card in cards.items()},
    )
    chosen = [trace.candidate_ids[i] for i in trace.chosen]
    result = RetrieveResult(chosen, [cards[cid].note for cid in chosen])
    ctx.commit("retrieve", [Op("set", user.trace_key(session.session_id, ctx.turn), value=encode(trace)), ctx.output_op("retrieve", result)])


_BEFORE_CACHE: dict = {}


def section(results: list[Result], queries: int, reps: int, load: tuple[float, float]) -> str:
    rows, mem_rows = [], []
    for r in results:
        ratio = statistics.median(r.before) / statistics.median(r.steady)
        rows.append(
            f"| {r.n:,} | {_ms(r.steady, 50)} / {_ms(r.steady, 99)} | {_ms(r.core, 50, 2)} / {_ms(r.core, 99, 2)} "
            f"| {_ms(r.search, 50, 2)} / {_ms(r.search, 99, 2)} | {_ms(r.search_omp, 50, 2)} / {_ms(r.search_omp, 99, 2)} "
            f"| {_ms(r.after_write, 50)} | {_ms(r.cold, 50)} ({_ms(r.cold_load, 50)}) "
            f"| {_ms(r.before, 50)} / {_ms(r.before, 99)} (n={len(r.before)}) | {ratio:,.0f}x |"
        )
    for r in results:
        k = r.cards / 1000
        redis = sum(r.redis_bytes.values())
        index = sum(r.index_bytes.values())
        mem_rows.append(
            f"| {r.n:,} | {r.redis_bytes['embeddings'] / k / 2**20:.2f} | {r.redis_bytes['cards'] / k / 2**20:.2f} "
            f"| {redis / k / 2**20:.2f} | {r.index_bytes['faiss'] / k / 2**20:.2f} | {r.index_bytes['items'] / k / 2**20:.2f} "
            f"| {index / k / 2**20:.2f} | {r.trace_bytes / 1024:.0f} |"
        )
    return "\n".join(
        [
            START,
            "## Retrieval: latency by store size, memory per 1,000 cards (`perf/retrieval_latency.py`)",
            "",
            "One user with N active cards in an embedded Redis; the retrieve stage handler as a worker",
            "runs it (store reads, FAISS `IndexIDMap(IndexFlatIP)` top-64 over 384-d MiniLM vectors, s0,",
            "the policy's list of 5, the trace and its commit), rag_vector. Card",
            "embeddings are perturbed copies of the MiniLM embeddings of the scripted catalog's 51",
            "notes and conditions (cosine about 0.9 to their base); query embeddings come from the",
            "embedder's cache, so embedding is not timed. p50 / p99 in ms over "
            f"{queries} queries per size ({reps} for the",
            "write and cold columns, p50). *cached*: the index cached at the store's version (the steady",
            "state). *search + policy*: FAISS and the policy alone, no store. *FAISS*: the top-64 search",
            "alone, on the calling thread (as the stage runs it) and, alternately, on FAISS's default",
            "OpenMP threads (as it ran before: one per core). *after a write*: one card",
            "written just before (the version moved; the cached index is patched from the change log).",
            "*cold*: nothing cached, the index built from the store (in brackets: the store reads).",
            "*before*: the handler's reads as they were, every card and embedding of the user on each",
            "query (the search as now), run alternately with the cached one (fewer queries at 10,000:",
            "about 1 s each).",
            f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores shared with other work,",
            f"1-minute load average {load[0]:.1f} at the start and {load[1]:.1f} at the end, {time.strftime('%Y-%m-%d')}.",
            "",
            "| cards | cached p50 / p99 | search + policy p50 / p99 | FAISS, 1 thread p50 / p99 | FAISS, "
            f"{OMP_DEFAULT} threads p50 / p99 | after a write p50 | cold p50 (reads) | before p50 / p99 | before / cached |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Memory per 1,000 cards, MiB (Redis: `MEMORY USAGE` of the user's hashes; index: one",
            "retrieve worker's cached index of the user), and the trace one retrieve stores, KiB:",
            "",
            "| cards | Redis embeddings | Redis cards | Redis total | index FAISS | index item vectors | index total | trace per retrieve (KiB) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *mem_rows,
            "",
            *findings(results),
            END,
        ]
    ) + "\n"


def findings(results: list[Result]) -> list[str]:
    """What the tables say, with their figures."""
    big = max(results, key=lambda r: r.n)
    before, cached = statistics.median(big.before), statistics.median(big.steady)
    per_card = sum(big.redis_bytes.values()) / big.cards
    emb_share = big.redis_bytes["embeddings"] / sum(big.redis_bytes.values())
    index_per_card = sum(big.index_bytes.values()) / big.cards
    flat_us = statistics.median(big.search) / big.n * 1e6
    omp_ratio = statistics.median(big.search_omp) / statistics.median(big.search)
    worst_small_p99 = float(np.percentile(results[0].search_omp, 99))
    return [
        f"A query on a cached index costs about the same at {results[0].n:,} and {big.n:,} cards: the",
        "handler reads the version key and the user's vector, and the cached index holds the",
        "candidates' item vectors and notes. The handler before read every card and embedding of",
        f"the user on each query: {before * 1000:,.0f} ms at {big.n:,} cards, {before / cached:,.0f}x the cached figure. A",
        "card write moves the version; the next query patches the cached index with the cards the",
        "change log names (*after a write*) instead of building it again from the store (*cold*:",
        "it reads the card records, then the active cards' embeddings, and decodes them).",
        f"Exhaustive search costs about {flat_us * 1000:.0f} ns per card on one thread here, so IVF (DESIGN §3,",
        "for large stores) would matter only near 100,000 cards per user; the default cap is 500",
        f"active cards. On FAISS's {OMP_DEFAULT} OpenMP threads one query's p99 was {worst_small_p99 * 1000:.1f} ms at {results[0].n:,} cards",
        f"against {float(np.percentile(results[0].search, 99)) * 1000:.2f} ms on one thread, and its median at {big.n:,} cards {omp_ratio:.1f}x the one-thread",
        "median: the scan waits at an OpenMP barrier for a thread the busy cores do not schedule",
        "(worse the busier the machine). The stage runs a query on its own thread.",
        "",
        f"Redis holds {per_card / 1024:.1f} KiB per card, {emb_share:.0%} of it the embeddings: three vectors",
        "(note and condition 384-d, item 256-d) stored as msgpack lists of float64, 9 bytes a",
        "number. Stored as float32 bytes they would take about 4 KiB and decode without making a",
        "Python float per number, which is most of a cold build's time; that changes the stored",
        f"format and is not done here. A retrieve worker's cached index takes {index_per_card / 1024:.1f} KiB per card;",
        "the cache keeps up to 1,024 users, so at the default cap of 500 cards a worker can hold",
        f"about {index_per_card * 500 * 1024 / 2**30:.1f} GiB of indexes. Each retrieve also stores its trace",
        f"({big.trace_bytes / 1024:.0f} KiB with 64 candidates: their 256-d item vectors as float64) with no",
        f"expiry: 1,000 retrieval turns take about as much Redis as {big.trace_bytes * 1000 / per_card:,.0f} cards.",
    ]


def main(argv: list[str] | None = None) -> None:
    # SIGTERM ends the run through its finally block, which stops Redis and removes its files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--reps", type=int, default=9, help="queries after a write, and cold builds")
    parser.add_argument("--before-budget", type=float, default=20.0, help="seconds per size for the old handler")
    parser.add_argument("--out", default="docs/performance.md", help="Markdown file to write into ('' to print only)")
    args = parser.parse_args(argv)

    from scheduler.embedded_redis import EmbeddedRedis

    home = Path(tempfile.mkdtemp(prefix="vars-retrieval-"))
    redis = EmbeddedRedis(home=home)
    url = redis.start()
    try:
        bench = Bench(url)
        load_start = os.getloadavg()[0]
        results = []
        for n in args.sizes:
            results.append(bench.measure(n, args.queries, args.before_budget, args.reps))
            r = results[-1]
            print(f"{n:6d} cards: cached p50 {_ms(r.steady, 50)} ms, before p50 {_ms(r.before, 50)} ms, "
                  f"after a write {_ms(r.after_write, 50)} ms, cold {_ms(r.cold, 50)} ms", flush=True)
        text = section(results, args.queries, args.reps, (load_start, os.getloadavg()[0]))
    finally:
        redis.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(text)
    if args.out:
        markdown.write_section(Path(args.out), text, START, END)


if __name__ == "__main__":
    main()
