"""Where conflict probes are won and lost, and what a perfect user vector could win.

For every conflict probe in the last three sessions of each lane (the learning campaign's
world on the tuning seeds), it reads the first turn's retrieval trace and sorts the
probe's winner card by where it stood when the agent answered:

- ranked into the list, or put in the prompt as a global card (bypass);
- in memory, accepted by the reranker (P(yes) >= 0.5) but ranked below the k listed cards
  (a learned term can lift it);
- in memory but rejected by the reranker (no learned term reaches it, by design);
- not in memory (the user never restated it in a context where it was violated).

Then the ceiling: rag served with an oracle learned term that gives each user's conflict
winners (the sides its profile marks as winning) the full cap +c where the reranker accepts
them and 0 elsewhere, i.e. rag_vector with a perfect z under the bounded term. The oracle
reads the hidden profile, which no method may; it is a counterfactual for this report only.

    python -m perf.conflict_diagnosis                 # rag, rag_vector and the oracle
    python -m perf.conflict_diagnosis --set policy.kappa=3
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from perf import markdown
from perf.learning_campaign import world_fingerprint
from scheduler.spec import apply_override
from vars_core import retrieval
from vars_core.config import EngineConfig, load_config
from vars_core.engine import Engine
from vars_core.notes import format_note, normalize
from vars_core.policy import ACCEPT_LOG_P, learned_cap
from vars_core.problems import load_problems
from vars_core.runner import lane_user_id, run_lane
from vars_core.scripted.context import context_of
from vars_core.scripted.profiles import TIE_BREAK, generate_profiles, triggered_conflicts
from vars_core.store import StateStore
from vars_core.store.state import decode
from vars_core.types import Profile, RetrievalTrace

DATASETS = ["math-500", "logiqa", "mmlu", "medqa", "code"]
START, END = "<!-- conflict-diagnosis:start -->", "<!-- conflict-diagnosis:end -->"
PLACES = ("ranked in the list", "global card in the prompt", "in memory, accepted, ranked below k",
          "in memory, rejected by the reranker", "not in memory")


def winner_place(trace: RetrievalTrace, notes: dict[str, str], winner: str) -> str:
    by_note = {notes.get(cid, ""): i for i, cid in enumerate(trace.candidate_ids)}
    if winner in {notes.get(cid, "") for cid in trace.bypassed}:
        return PLACES[1]
    if winner not in by_note:
        return PLACES[4]
    i = by_note[winner]
    if i in trace.chosen:
        return PLACES[0]
    return PLACES[2] if trace.base_scores[i] >= ACCEPT_LOG_P else PLACES[3]


@contextlib.contextmanager
def oracle_winners(winners: dict[str, set[str]]) -> Iterator[None]:
    """Serve rag with +c on each user's accepted winner cards (a perf-only counterfactual)."""
    select, retrieve = retrieval.select, retrieval.retrieve
    current: dict[str, str] = {}

    def boosted(user_id, ids, log_p, items, vector, cfg, rng, learning, pv):
        log_p = np.asarray(log_p, dtype=np.float64)
        s = log_p + learned_cap(log_p, cfg) * np.array(
            [normalize(current.get(c, "")) in winners.get(user_id, ()) and lp >= ACCEPT_LOG_P
             for c, lp in zip(ids, log_p, strict=True)]
        )
        return select(user_id, ids, s, items, None, cfg, rng, False, pv)

    def reading(user_id, query_embedding, index, *args, **kwargs):
        current.clear()
        current.update(zip(index.card_ids, index.notes or [], strict=False))
        return retrieve(user_id, query_embedding, index, *args, **kwargs)

    import vars_core.stages.retrieve as stage

    retrieval.select, stage.retrieve = boosted, reading
    try:
        yield
    finally:
        retrieval.select, stage.retrieve = select, retrieve


def winners_of(campaign: str, people: list[Profile]) -> dict[str, set[str]]:
    return {
        lane_user_id(campaign, "rag", p.profile_id): {
            normalize(format_note(q.condition, q.action)) for q in p.preferences if TIE_BREAK in q.priority_context
        }
        for p in people
    }


def diagnose(label: str, method: str, config: EngineConfig, seeds: list[int], profiles: int,
             sessions: int, oracle: bool = False) -> tuple[str, Counter, int, int]:
    places: Counter = Counter()
    correct = probes = 0
    for seed in seeds:
        problems = load_problems(DATASETS)
        people = generate_profiles(profiles, seed)
        engine, store, campaign = Engine(config=config), StateStore(), f"diag-s{seed}"
        guard = oracle_winners(winners_of(campaign, people)) if oracle else contextlib.nullcontext()
        with guard:
            lanes = [(p, run_lane(engine, store, campaign, p, method, sessions, problems, seed, 8)) for p in people]
        for person, records in lanes:
            user = store.user(lane_user_id(campaign, method, person.profile_id))
            notes = {c.card_id: normalize(c.note) for c in user.cards().values()}
            for record in records:
                if record.session_index <= sessions - 3 or not record.conflict_probes:
                    continue
                correct += record.conflict_correct
                probes += record.conflict_probes
                trace = decode(store.backend.get(user.trace_key(record.session_id, 1)), RetrievalTrace)
                opening = store.session(record.session_id).opening
                for winner, _ in triggered_conflicts(person, context_of(opening)):
                    places[winner_place(trace, notes, normalize(format_note(winner.condition, winner.action)))] += 1
    return label, places, correct, probes


def render(rows: list[tuple[str, Counter, int, int]], seeds: list[int], profiles: int, seconds: float, world: str) -> str:
    lines = [
        START,
        "## Where conflict probes are won and lost",
        "",
        f"World `{world}`. Late conflict probes (the last three sessions) of {profiles} profiles x seeds "
        f"{', '.join(map(str, seeds))} (tuning seeds), default settings; for each, where the winner's card stood "
        "when the agent wrote its first reply. The oracle row serves rag with a perfect learned term "
        "under the bounded form (+c on each user's accepted winner cards, 0 elsewhere): the most a user "
        f"vector could add here. {seconds / 60:.0f} min. `python -m perf.conflict_diagnosis`.",
        "",
        "| method | late probes | conflict accuracy | " + " | ".join(PLACES) + " |",
        "|---|---:|---:|" + "---:|" * len(PLACES),
    ]
    for label, places, correct, probes in rows:
        total = sum(places.values()) or 1
        cells = [f"{places[p]} ({places[p] / total:.0%})" for p in PLACES]
        lines.append(f"| {label} | {probes} | {correct / max(probes, 1):.3f} | " + " | ".join(cells) + " |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--set", action="append", default=[], help="engine override, e.g. policy.kappa=3")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    overrides: dict = {}
    for item in args.set:
        apply_override(overrides, item)
    config = load_config(overrides)
    start = time.monotonic()
    common = (config, args.seeds, args.profiles, args.sessions)
    rows = [
        diagnose("rag", "rag", *common),
        diagnose("rag_vector", "rag_vector", *common),
        diagnose("oracle (rag + perfect learned term)", "rag", *common, oracle=True),
    ]
    world = world_fingerprint(Engine(config=config))["hash"]
    section = render(rows, args.seeds, args.profiles, time.monotonic() - start, world)
    markdown.write_section(args.out, section, START, END)
    print(section, end="")


if __name__ == "__main__":
    main()
