"""The methods in the scripted world, and a tau / step-size sweep of rag_vector.

Runs whole sessions in-process (the reference runner) for every method over the same
profiles and problems, and reports enforcements per session (early vs late sessions),
compliance and conflict accuracy. `python -m perf.scripted_sweep` rewrites its section of
docs/results.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import msgspec

from perf import markdown
from vars_core.config import EngineConfig, PolicyConfig, ReinforceConfig
from vars_core.engine import Engine
from vars_core.problems import load_problems
from vars_core.runner import run_lane
from vars_core.scripted.profiles import DEFAULT_PREFS_PER_PROFILE, generate_profiles
from vars_core.store import StateStore

START, END = "<!-- scripted-sweep:start -->", "<!-- scripted-sweep:end -->"
DATASETS = ["math-500", "logiqa", "mmlu"]

# (method, tau, eta_L, eta_S); the first rag_vector row is DESIGN's default.
GRID: tuple[tuple[str, float, float, float], ...] = (
    ("vanilla", 1.0, 0.0, 0.0),
    ("all_memory", 1.0, 0.0, 0.0),
    ("rag", 1.0, 0.0, 0.0),
    ("rag_vector", 1.0, 0.001, 0.002),
    ("rag_vector", 1.0, 0.005, 0.01),
    ("rag_vector", 0.1, 0.001, 0.002),
    ("rag_vector", 0.1, 0.005, 0.01),
    ("rag_vector", 0.05, 0.02, 0.04),
)


class Row(msgspec.Struct):
    method: str
    tau: float
    eta_long: float
    eta_short: float
    early: float  # enforcements per session, first half of the sessions
    late: float  # second half
    compliance: float
    conflict_accuracy: float
    success: float


def run(profiles: int, sessions: int, seed: int, max_turns: int) -> list[Row]:
    problems = load_problems(DATASETS)
    people = generate_profiles(profiles, seed)
    shared = Engine()
    rows = []
    for method, tau, eta_long, eta_short in GRID:
        config = EngineConfig(
            policy=PolicyConfig(tau=tau),
            reinforce=ReinforceConfig(eta_long=eta_long, eta_short=eta_short),
        )
        engine = Engine(config=config, embedder=shared.embedder)
        store = StateStore()
        records = [
            r
            for p in people
            for r in run_lane(engine, store, "sweep", p, method, sessions, problems, seed, max_turns)
        ]
        half = sessions // 2
        probes = sum(r.conflict_probes for r in records)
        rows.append(
            Row(
                method, tau, eta_long, eta_short,
                early=statistics.fmean(r.enforcements for r in records if r.session_index <= half),
                late=statistics.fmean(r.enforcements for r in records if r.session_index > half),
                compliance=statistics.fmean(r.compliance for r in records),
                conflict_accuracy=sum(r.conflict_correct for r in records) / probes if probes else float("nan"),
                success=statistics.fmean(r.success for r in records),
            )
        )
    return rows


def render(rows: list[Row], profiles: int, sessions: int, seed: int, max_turns: int, seconds: float) -> str:
    lines = [
        START,
        "## Methods in the scripted world, and a tau / step-size sweep",
        "",
        f"{profiles} generated profiles ({DEFAULT_PREFS_PER_PROFILE} preferences each) x {sessions} sessions per method, "
        f"max {max_turns} turns, problems from {', '.join(DATASETS)}, seed {seed}; in-process runner, "
        "real MiniLM embedder. Early = sessions 1-"
        f"{sessions // 2}, late = the rest. Common random numbers: every method meets the same "
        f"openings and draws. {seconds:.0f} s. Regenerate with `python -m perf.scripted_sweep`.",
        "",
        "| method | tau | eta_L | eta_S | enforcements early | enforcements late | compliance | conflict acc. | success |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        etas = f"{r.eta_long:g} | {r.eta_short:g}" if r.method == "rag_vector" else "- | -"
        tau = f"{r.tau:g}" if r.method == "rag_vector" else "-"
        lines.append(
            f"| {r.method} | {tau} | {etas} | {r.early:.2f} | {r.late:.2f} | {r.compliance:.3f} | "
            f"{r.conflict_accuracy:.3f} | {r.success:.2f} |"
        )
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = run(args.profiles, args.sessions, args.seed, args.max_turns)
    section = render(rows, args.profiles, args.sessions, args.seed, args.max_turns, time.monotonic() - started)
    markdown.write_section(args.out, section, START, END)
    print(section, end="")


if __name__ == "__main__":
    main()
