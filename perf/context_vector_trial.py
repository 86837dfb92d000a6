"""A trial, not a feature: a user vector conditioned on the request's cues.

The product's z is one vector per user, added to every request's scores. This trial gives
each user a vector per request cue besides the global one: the learned term reads
``<z_global + sum_{f in cues(q)} z_f, v_m>``. It is implemented exactly, and without
touching the engine's update code, by widening the item vectors:
``v'(q, m) = [v_m, 1_{f1 in cues(q)} v_m, ..., 1_{fF in cues(q)} v_m]`` against a z of
(1 + F) x 256 dimensions, so REINFORCE and the pairwise credit update the global part and
the active cues' parts alike. The cue detector reads the request's first paragraph (the
request above any pasted material) against a fixed list of generic phrases; it never
imports the scripted world.

It runs rag and rag_vector on the tuning seeds with the engine's defaults otherwise, and
writes the ``context-vector`` section of docs/results.md. The patches live in this process
only (and in its worker processes, which import this module).

    python -m perf.context_vector_trial
"""

from __future__ import annotations

import argparse
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from perf import markdown
from perf.learning_campaign import (
    DATASETS,
    TUNING_SEEDS,
    _f,
    conflicts,
    enforcements,
    estimate,
    paired,
    world_fingerprint,
)
from vars_core.types import SessionRecord

START, END = "<!-- context-vector:start -->", "<!-- context-vector:end -->"

# Generic request cues: phrases a person uses about the request itself, not about a world.
CUE_PHRASES: dict[str, tuple[str, ...]] = {
    "hurry": ("quick question", "in a hurry", "short on time", "only have a minute", "quickly"),
    "explain": ("explain", "reasoning", "walk me through", "why does"),
    "study": ("exam", "studying", "revise", "revision", "quiz", "test tomorrow"),
    "keep": ("my notes", "for later", "reread", "save this"),
    "beginner": ("new to", "beginner", "first time", "never learned"),
    "work": ("at work", "report", "my boss", "my manager", "client"),
    "team": ("my team", "colleagues", "coworkers", "share this"),
    "stuck": ("stuck", "i tried", "doesn't work", "not working"),
    "math": ("math", "equation", "calculate", "integral", "probability"),
    "code": ("code", "coding", "program", "python", "script"),
    "medical": ("medical", "patient", "symptom", "clinical", "diagnosis"),
    "logic": ("logic", "puzzle", "argument"),
    "facts": ("general knowledge", "trivia", "history question"),
}
CUES = tuple(CUE_PHRASES)
_PATTERNS = {cue: re.compile(r"\b(?:" + "|".join(map(re.escape, ps)) + r")", re.I) for cue, ps in CUE_PHRASES.items()}


def request_cues(text: str) -> list[bool]:
    """One flag per cue, read from the request's first paragraph."""
    head = text.strip().split("\n\n", 1)[0]
    return [bool(_PATTERNS[cue].search(head)) for cue in CUES]


def widen(rows: np.ndarray, flags: list[bool]) -> np.ndarray:
    d = rows.shape[1]
    out = np.zeros((rows.shape[0], d * (1 + len(flags))), dtype=np.float64)
    out[:, :d] = rows
    for j, on in enumerate(flags):
        if on:
            out[:, d * (1 + j) : d * (2 + j)] = rows
    return out


def install(dim: int) -> None:
    """Patch this process's engine: widened item vectors, wide user vectors."""
    import vars_core.stages.extract as extract
    import vars_core.stages.retrieve as retrieve
    from vars_core import retrieval
    from vars_core.store.state import UserScope

    flags: dict[str, list[bool]] = {}  # session id -> its request's cue flags
    current: dict[str, list[bool]] = {"flags": [False] * len(CUES)}
    item_rows, vector, handle = retrieval.UserIndex.item_rows, UserScope.vector, retrieve.handle
    credit = extract._credit

    def wide_rows(self, positions, pv, default_dim):
        return widen(item_rows(self, positions, pv, dim), current["flags"])

    def wide_vector(self, _dim, pv=""):
        return vector(self, dim * (1 + len(CUES)), pv)

    def cued_handle(ctx):
        current["flags"] = flags.setdefault(ctx.session.session_id, request_cues(ctx.session.opening))
        handle(ctx)

    def cued_credit(ctx, trace, plan, active, embeddings, conflicts):
        # a restated card outside the candidates is widened with the same request's cues
        from msgspec.structs import replace

        cues = flags.get(ctx.session.session_id, [False] * len(CUES))
        wide = {cid: replace(e, item=widen(np.asarray([e.item]), cues)[0].tolist()) for cid, e in embeddings.items()}
        plan = replace(plan, writes=[
            replace(w, embedding=replace(w.embedding, item=widen(np.asarray([w.embedding.item]), cues)[0].tolist()))
            if w.embedding is not None else w for w in plan.writes
        ])
        return credit(ctx, trace, plan, active, wide, conflicts)

    retrieval.UserIndex.item_rows = wide_rows
    UserScope.vector = wide_vector
    retrieve.handle = cued_handle
    extract._credit = cued_credit
    import vars_core.stages as stages

    stages.HANDLERS["retrieve"] = cued_handle


def run_seed(seed: int, profiles: int, sessions: int, conditioned: bool) -> list[SessionRecord]:
    import torch

    torch.set_num_threads(1)
    from vars_core.engine import Engine
    from vars_core.problems import load_problems
    from vars_core.runner import run_lane
    from vars_core.scripted.profiles import generate_profiles
    from vars_core.store import StateStore

    engine = Engine()
    if conditioned:
        install(engine.config.projection_dim)
    method = "rag_vector" if conditioned else "rag"
    store, problems, out = StateStore(), load_problems(DATASETS), []
    for person in generate_profiles(profiles, seed):
        out += run_lane(engine, store, f"ctx-s{seed}", person, method, sessions, problems, seed, 8)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    jobs = [(s, c) for s in TUNING_SEEDS for c in (False, True)]
    with ProcessPoolExecutor(max_workers=args.jobs, max_tasks_per_child=1) as pool:  # patches stay in their process
        futures = [pool.submit(run_seed, s, args.profiles, args.sessions, c) for s, c in jobs]
        records = [r for f in futures for r in f.result()]
    from vars_core.engine import Engine

    world = world_fingerprint(Engine())["hash"]
    late = set(range(args.sessions - 2, args.sessions + 1))
    diff, probes = paired(records, "rag_vector", records, "rag", late, conflicts)
    enf = paired(records, "rag_vector", records, "rag", late, enforcements)[0]
    section = "\n".join([
        START,
        "## A trial: the user vector conditioned on request cues",
        "",
        f"World `{world}`. rag_vector whose z has a part per request cue ({len(CUES)} generic cues read from the request's first "
        f"paragraph) besides the global one, against rag; tuning seeds {', '.join(map(str, TUNING_SEEDS))}, "
        f"{args.profiles} profiles x {args.sessions} sessions, defaults otherwise. Late = sessions "
        f"{min(late)}-{args.sessions}. {time.monotonic() - started:.0f} s. `python -m perf.context_vector_trial`.",
        "",
        "| late probes | conflict acc.: cue-conditioned rag_vector | rag | difference | late enforcements: difference |",
        "|---:|---:|---:|---:|---:|",
        f"| {probes} | {_f(estimate(records, 'rag_vector', late, conflicts))} | {_f(estimate(records, 'rag', late, conflicts))} | "
        f"{_f(diff, sign=True)} | {_f(enf, 2, sign=True)} |",
        END,
    ]) + "\n"
    markdown.write_section(args.out, section, START, END)
    print(section, end="")


if __name__ == "__main__":
    main()
