"""Does the harness measure learning? Six methods x P profiles x S sessions, for 3 seeds.

Runs each seed's campaign with the in-process runner (the stage handlers the workers run;
tests/test_pipeline.py shows the pipeline reproduces it bit for bit), one process per
seed, writes each to ``results/<name>-s<seed>/`` (``sessions.jsonl``, ``campaign.json``,
and the ``vars campaign report`` Markdown and plots), and checks two claims:

1. every memory method's mean enforcements per session in the last two sessions is below
   the first two, and vanilla's is not;
2. rag_vector's conflict-resolution accuracy over the last three sessions is above rag's
   by at least 5 points, with a 95% bootstrap interval over profiles that excludes zero.

`python -m perf.learning_campaign` rewrites its section of docs/results.md.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import msgspec

from perf import markdown
from scheduler.report import build_report, write_report
from scheduler.stats import Interval, ratio_ci, ratio_diff_ci
from vars_core.methods import METHODS
from vars_core.types import SessionRecord

START, END = "<!-- learning-campaign:start -->", "<!-- learning-campaign:end -->"
DATASETS = ["math-500", "logiqa", "mmlu", "medqa", "code"]
MEMORY_METHODS = [m for m in METHODS if m != "vanilla"]
REPS = 4000


class Settings(msgspec.Struct, frozen=True):
    name: str
    profiles: int
    sessions: int
    max_turns: int
    results: str
    tau: float = 1.0
    eta_long: float = 0.001
    eta_short: float = 0.002


def run_seed(settings: Settings, seed: int) -> Path:
    """One seed's campaign, every method over the same profiles; returns its directory."""
    import torch

    torch.set_num_threads(1)  # one process per seed shares the cores
    from vars_core.config import EngineConfig, PolicyConfig, ReinforceConfig
    from vars_core.engine import Engine
    from vars_core.problems import load_problems
    from vars_core.runner import run_lane
    from vars_core.scripted.profiles import generate_profiles
    from vars_core.store import StateStore

    campaign = f"{settings.name}-s{seed}"
    out = Path(settings.results) / campaign
    out.mkdir(parents=True, exist_ok=True)
    problems = load_problems(DATASETS)
    people = generate_profiles(settings.profiles, seed)
    config = EngineConfig(
        policy=PolicyConfig(tau=settings.tau),
        reinforce=ReinforceConfig(eta_long=settings.eta_long, eta_short=settings.eta_short),
    )
    engine = Engine(config=config)
    with (out / "sessions.jsonl").open("wb") as sink:
        for method in METHODS:
            store = StateStore()
            for person in people:
                lane = run_lane(
                    engine, store, campaign, person, method, settings.sessions,
                    problems, seed, settings.max_turns,
                )
                sink.write(b"".join(msgspec.json.encode(r) + b"\n" for r in lane))
    plan = {"methods": list(METHODS), "profiles": settings.profiles, "sessions": settings.sessions,
            "max_turns": settings.max_turns, "datasets": DATASETS, "seed": seed}
    (out / "campaign.json").write_bytes(msgspec.json.encode({"campaign_id": campaign, "plan": plan}))
    write_report(build_report(out))
    return out


def load(path: Path) -> list[SessionRecord]:
    lines = (path / "sessions.jsonl").read_bytes().splitlines()
    return [msgspec.json.decode(line, type=SessionRecord) for line in lines if line.strip()]


def _by_profile(records: list[SessionRecord], method: str, indices: set[int], field) -> dict[str, list[float]]:
    sums: dict[str, list[float]] = {}
    for r in records:
        if r.method == method and r.session_index in indices and r.status != "failed":
            num, den = field(r)
            s = sums.setdefault(r.profile_id, [0.0, 0.0])
            s[0] += num
            s[1] += den
    return sums


def enforcement_drop(records: list[SessionRecord], method: str, sessions: int) -> tuple[Interval, Interval]:
    """Mean enforcements per session in the first two and the last two sessions."""
    def mean(indices: set[int]) -> Interval:
        sums = _by_profile(records, method, indices, lambda r: (r.enforcements, 1))
        keys = sorted(sums)
        return ratio_ci([sums[k][0] for k in keys], [sums[k][1] for k in keys], reps=REPS)

    return mean({1, 2}), mean({sessions - 1, sessions})


def late_conflict_diff(records: list[SessionRecord], sessions: int) -> tuple[Interval, Interval, Interval, int]:
    """rag_vector and rag conflict accuracy over the last three sessions, and the paired
    difference, bootstrapped over profiles; and the number of probes."""
    late = set(range(sessions - 2, sessions + 1))
    field = lambda r: (r.conflict_correct, r.conflict_probes)  # noqa: E731
    ours = _by_profile(records, "rag_vector", late, field)
    theirs = _by_profile(records, "rag", late, field)
    keys = sorted(ours.keys() & theirs.keys())
    cols = [[d[k][i] for k in keys] for d in (ours, theirs) for i in (0, 1)]
    return (
        ratio_ci(cols[0], cols[1], reps=REPS),
        ratio_ci(cols[2], cols[3], reps=REPS),
        ratio_diff_ci(*cols, reps=REPS),
        int(sum(cols[1])),
    )


def _f(est: Interval, digits: int = 3) -> str:
    if est.value is None:
        return "n/a"
    return f"{est.value:.{digits}f} [{est.lo:.{digits}f}, {est.hi:.{digits}f}]"


def render(settings: Settings, seeds: list[int], dirs: list[Path], seconds: float) -> str:
    per_seed = {seed: load(d) for seed, d in zip(seeds, dirs, strict=True)}
    pooled = [r for rs in per_seed.values() for r in rs]  # profile ids carry the seed
    s = settings.sessions
    lines = [
        START,
        "## Learning across sessions: six methods, three seeds",
        "",
        f"Scripted world, {settings.profiles} generated profiles per seed (40 preferences each) x "
        f"{s} sessions x 6 methods, max {settings.max_turns} turns, problems from "
        f"{', '.join(DATASETS)}; seeds {', '.join(map(str, seeds))}; tau {settings.tau:g}, "
        f"eta_L {settings.eta_long:g}, eta_S {settings.eta_short:g}, other settings default. "
        f"{len(pooled)} sessions in {seconds / 60:.0f} min (one process per seed, 2 cores). "
        "Intervals: 95% percentile bootstrap over profiles "
        f"({REPS} resamples). Regenerate with `python -m perf.learning_campaign`; each seed's "
        f"`vars campaign report` is in `{settings.results}/{settings.name}-s<seed>/report.md`.",
        "",
        "### Enforcements per session: first two vs last two sessions (all seeds)",
        "",
        "| method | sessions 1-2 | sessions " + f"{s - 1}-{s}" + " | lower? |",
        "|---|---:|---:|---|",
    ]
    for method in METHODS:
        early, late = enforcement_drop(pooled, method, s)
        lower = late.value is not None and early.value is not None and late.value < early.value
        lines.append(f"| {method} | {_f(early, 2)} | {_f(late, 2)} | {'yes' if lower else 'no'} |")
    lines += [
        "",
        "Per seed (mean enforcements, sessions 1-2 -> last two):",
        "",
        "| seed | " + " | ".join(METHODS) + " |",
        "|---:|" + "---|" * len(METHODS),
    ]
    for seed, records in per_seed.items():
        cells = []
        for method in METHODS:
            early, late = enforcement_drop(records, method, s)
            cells.append(f"{early.value:.2f} -> {late.value:.2f}")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"### Conflict-resolution accuracy, sessions {s - 2}-{s}: rag_vector vs rag",
        "",
        "Read on the first reply of each conflict probe (before the user says anything in that "
        "session), pooled over probes; the difference is paired by profile.",
        "",
        "| seeds | probes | rag_vector | rag | difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, records in [*((str(k), v) for k, v in per_seed.items()), ("all", pooled)]:
        ours, theirs, diff, probes = late_conflict_diff(records, s)
        lines.append(f"| {label} | {probes} | {_f(ours)} | {_f(theirs)} | {_f(diff)} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--name", default="learning")
    parser.add_argument("--results", default="results")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--eta-long", type=float, default=0.001)
    parser.add_argument("--eta-short", type=float, default=0.002)
    parser.add_argument("--marker", default="learning-campaign", help="the docs section's marker")
    parser.add_argument("--render-only", action="store_true", help="reuse results already on disk")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args(argv)
    settings = Settings(
        args.name, args.profiles, args.sessions, args.max_turns, args.results,
        args.tau, args.eta_long, args.eta_short,
    )
    started = time.monotonic()
    if args.render_only:
        dirs = [Path(args.results) / f"{args.name}-s{seed}" for seed in args.seeds]
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            dirs = list(pool.map(run_seed, [settings] * len(args.seeds), args.seeds))
    start, end = f"<!-- {args.marker}:start -->", f"<!-- {args.marker}:end -->"
    section = render(settings, args.seeds, dirs, time.monotonic() - started)
    section = section.replace(START, start).replace(END, end)
    markdown.write_section(args.out, section, start, end)
    print(section, end="")


if __name__ == "__main__":
    main()
