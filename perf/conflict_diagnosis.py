"""Where conflict probes are won and lost: rag against rag_vector, probe by probe.

For every conflict probe in the last three sessions of each lane (the learning campaign's
world: 20 generated profiles x 10 sessions, seeds 1-3), it reads the first turn's retrieval
trace and sorts the probe by what the agent could have followed:

- ``W``/``L``: the winner's / loser's card was among the candidates (it was in memory);
- ``w``/``l``: it was in the list of k cards put in the prompt; ``w<l``: both, winner first.

Then it prints the late first-reply conflict accuracy. Settings are the engine's
(``--tau``, ``--eta-long``, ``--eta-short``, ``--restate-credit``), so a sweep is a loop
in the shell. The figures it gave are in docs/results.md.

    python -m perf.conflict_diagnosis --method rag
    python -m perf.conflict_diagnosis --method rag_vector --tau 0.05 --eta-long 0 --eta-short 0
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from vars_core.config import EngineConfig, PolicyConfig, ReinforceConfig
from vars_core.engine import Engine
from vars_core.notes import format_note, normalize
from vars_core.problems import load_problems
from vars_core.runner import lane_user_id, run_lane, session_id_for
from vars_core.scripted.context import context_of
from vars_core.scripted.profiles import generate_profiles, triggered_conflicts
from vars_core.store import StateStore
from vars_core.store.state import decode
from vars_core.types import RetrievalTrace

DATASETS = ["math-500", "logiqa", "mmlu", "medqa", "code"]


def probe_kind(candidates: list[str], chosen: list[str], winner: str, loser: str) -> tuple[str, str]:
    """(what was in memory, what was in the prompt) for one conflict of one probe."""
    memory = ("W" if winner in candidates else "-") + ("L" if loser in candidates else "-")
    if winner in chosen and loser in chosen:
        return memory, "w<l" if chosen.index(winner) < chosen.index(loser) else "l<w"
    return memory, ("w" if winner in chosen else "") + ("l" if loser in chosen else "")


def diagnose(method: str, config: EngineConfig, seeds: list[int], profiles: int, sessions: int) -> tuple[Counter, int, int]:
    kinds: Counter = Counter()
    correct = probes = 0
    for seed in seeds:
        problems = load_problems(DATASETS)
        engine, store, campaign = Engine(config=config), StateStore(), f"diag-s{seed}"
        for person in generate_profiles(profiles, seed):
            records = run_lane(engine, store, campaign, person, method, sessions, problems, seed, 8)
            user_id = lane_user_id(campaign, method, person.profile_id)
            user = store.user(user_id)
            notes = {c.card_id: normalize(c.note) for c in user.cards(include_superseded=True).values()}
            for record in records:
                if record.session_index < sessions - 2 or not record.conflict_probes:
                    continue
                correct += record.conflict_correct
                probes += record.conflict_probes
                session_id = session_id_for(user_id, record.session_index)
                raw = store.backend.get(user.trace_key(session_id, 1))
                trace = decode(raw, RetrievalTrace) if raw else None
                candidates = [notes.get(c, "") for c in trace.candidate_ids] if trace else []
                chosen = [candidates[i] for i in trace.chosen] if trace else []
                opening = store.session(session_id).opening
                for winner, loser in triggered_conflicts(person, context_of(opening)):
                    kinds[probe_kind(
                        candidates, chosen,
                        normalize(format_note(winner.condition, winner.action)),
                        normalize(format_note(loser.condition, loser.action)),
                    )] += 1
    return kinds, correct, probes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="rag_vector")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--eta-long", type=float, default=0.001)
    parser.add_argument("--eta-short", type=float, default=0.002)
    parser.add_argument("--restate-credit", type=float, default=0.0)
    parser.add_argument("--profiles", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    config = EngineConfig(
        policy=PolicyConfig(tau=args.tau),
        reinforce=ReinforceConfig(
            eta_long=args.eta_long, eta_short=args.eta_short, restate_credit=args.restate_credit
        ),
    )
    start = time.monotonic()
    kinds, correct, probes = diagnose(args.method, config, args.seeds, args.profiles, args.sessions)
    print(
        f"{args.method} tau={args.tau:g} eta={args.eta_long:g}/{args.eta_short:g} "
        f"credit={args.restate_credit:g}: late conflict accuracy {correct}/{probes} = "
        f"{correct / max(probes, 1):.3f} ({time.monotonic() - start:.0f} s)"
    )
    for (memory, prompt), count in sorted(kinds.items()):
        print(f"  in memory {memory}  in prompt {prompt or '-':4s} {count}")


if __name__ == "__main__":
    main()
