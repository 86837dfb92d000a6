"""`vars campaign report`: statistics, a Markdown report and PNG plots for one campaign.

Input is a campaign's results directory (``sessions.jsonl``, and ``campaign.json`` when
present). A malformed line fails the whole report with its line number rather than being
skipped: a report on partial data would silently mislead. Failed sessions
(``status == "failed"``) are counted but left out of every statistic.

Confidence intervals are 95% percentile bootstraps over profiles and paired tests are
sign-flip permutations over profiles (see ``scheduler.stats``): the profile is the unit
because sessions of one lane share a user and a memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from scheduler.stats import Interval, ratio_ci, sign_flip_p
from vars_core.types import SessionRecord

REPS = 2000
SEED = 0
PLOTS = (
    ("enforcements", "enforcements_mean", "enforcements per session"),
    ("success_rate", "success_rate", "success rate"),
    ("conflict_accuracy", "conflict_accuracy", "conflict-resolution accuracy"),
)


class ReportError(Exception):
    """The input cannot be reported on; the message names the path (and line)."""


class MethodSummary(msgspec.Struct, frozen=True):
    method: str
    sessions: int
    failed: int
    conflict_probes: int
    success_rate: Interval
    timeout_rate: Interval
    user_tokens_mean: Interval
    enforcements_mean: Interval
    compliance_mean: Interval
    conflict_accuracy: Interval
    successes_per_1k_user_tokens: Interval
    agent_tokens_mean: Interval
    total_tokens_mean: Interval
    over_personalization_rate: Interval  # of rated agent replies
    repetition_rate: Interval  # of adjacent agent reply pairs
    simulator_fallbacks: int


class IndexSummary(msgspec.Struct, frozen=True):
    index: int
    sessions: int
    success_rate: Interval
    enforcements_mean: Interval
    conflict_accuracy: Interval


class PairedTest(msgspec.Struct, frozen=True):
    method: str
    baseline: str
    metric: str  # "enforcements" | "success"
    pairs: int
    profiles: int
    mean_diff: Interval  # method minus baseline
    p_value: float | None


class CampaignReport(msgspec.Struct, frozen=True):
    campaign_id: str
    source: str
    baseline: str
    methods: list[MethodSummary]
    by_session: dict[str, list[IndexSummary]]
    paired: list[PairedTest]
    reps: int = REPS
    seed: int = SEED


# --------------------------------------------------------------------------- input


def resolve_results_dir(target: str | Path, results_root: str | Path = "results") -> Path:
    """A results directory as given, or the campaign id's directory under results_root."""
    direct = Path(target)
    if (direct / "sessions.jsonl").is_file():
        return direct
    under = Path(results_root) / str(target)
    if (under / "sessions.jsonl").is_file():
        return under
    raise ReportError(
        f"no campaign results at {direct} or {under} (expected a sessions.jsonl there)"
    )


def load_records(results: Path) -> list[SessionRecord]:
    path = results / "sessions.jsonl"
    records: list[SessionRecord] = []
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(msgspec.json.decode(line, type=SessionRecord))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ReportError(f"{path}:{lineno}: malformed session record: {exc}") from exc
    if not records:
        raise ReportError(f"{path}: no session records")
    return records


def _campaign_meta(results: Path, records: list[SessionRecord]) -> tuple[str, list[str]]:
    """The campaign id and the method order (the plan's, then any others as found)."""
    campaign_id, planned = records[0].campaign_id or results.name, []
    meta = results / "campaign.json"
    if meta.is_file():
        try:
            doc = msgspec.json.decode(meta.read_bytes())
        except msgspec.DecodeError as exc:
            raise ReportError(f"{meta}: malformed campaign.json: {exc}") from exc
        campaign_id = doc.get("campaign_id") or campaign_id
        planned = list((doc.get("plan") or {}).get("methods") or [])
    seen = [m for m in planned if any(r.method == m for r in records)]
    for r in records:
        if r.method not in seen:
            seen.append(r.method)
    return campaign_id, seen


# --------------------------------------------------------------------------- statistics


def _clusters(
    records: Iterable[SessionRecord],
    num: Callable[[SessionRecord], float],
    den: Callable[[SessionRecord], float] = lambda r: 1.0,
) -> tuple[list[float], list[float]]:
    """Per-profile totals, in profile-id order (independent of line order)."""
    totals: dict[str, list[float]] = {}
    for r in records:
        t = totals.setdefault(r.profile_id, [0.0, 0.0])
        t[0] += num(r)
        t[1] += den(r)
    keys = sorted(totals)
    return [totals[k][0] for k in keys], [totals[k][1] for k in keys]


def _ci(records: list[SessionRecord], num, den=lambda r: 1.0, scale: float = 1.0) -> Interval:
    est = ratio_ci(*_clusters(records, num, den), reps=REPS, seed=SEED)
    if est.value is None or scale == 1.0:
        return est
    return Interval(est.value * scale, est.lo * scale, est.hi * scale)  # type: ignore[operator]


def _accuracy(records: list[SessionRecord]) -> Interval:
    return _ci(records, lambda r: r.conflict_correct, lambda r: r.conflict_probes)


def summarize_method(method: str, records: list[SessionRecord]) -> MethodSummary:
    done = [r for r in records if r.status != "failed"]
    return MethodSummary(
        method=method,
        sessions=len(done),
        failed=len(records) - len(done),
        conflict_probes=sum(r.conflict_probes for r in done),
        success_rate=_ci(done, lambda r: float(r.success)),
        timeout_rate=_ci(done, lambda r: float(r.timeout)),
        user_tokens_mean=_ci(done, lambda r: r.user_tokens),
        enforcements_mean=_ci(done, lambda r: r.enforcements),
        compliance_mean=_ci(done, lambda r: r.compliance),
        conflict_accuracy=_accuracy(done),
        successes_per_1k_user_tokens=_ci(
            done, lambda r: float(r.success), lambda r: r.user_tokens, scale=1000.0
        ),
        agent_tokens_mean=_ci(done, lambda r: r.agent_tokens),
        total_tokens_mean=_ci(done, lambda r: r.user_tokens + r.agent_tokens),
        over_personalization_rate=_ci(
            done, lambda r: r.over_personalized_turns, lambda r: r.rated_turns
        ),
        repetition_rate=_ci(done, lambda r: r.repetitions, lambda r: max(0, r.turns - 1)),
        simulator_fallbacks=sum(r.simulator_fallbacks for r in done),
    )


def summarize_indices(records: list[SessionRecord]) -> list[IndexSummary]:
    done = [r for r in records if r.status != "failed"]
    out = []
    for index in sorted({r.session_index for r in done}):
        at = [r for r in done if r.session_index == index]
        out.append(
            IndexSummary(
                index=index,
                sessions=len(at),
                success_rate=_ci(at, lambda r: float(r.success)),
                enforcements_mean=_ci(at, lambda r: r.enforcements),
                conflict_accuracy=_accuracy(at),
            )
        )
    return out


def paired_tests(method: str, baseline: str, records: list[SessionRecord]) -> list[PairedTest]:
    """Method minus baseline on sessions paired by (profile_id, session_index)."""
    done = [r for r in records if r.status != "failed"]
    ours = {(r.profile_id, r.session_index): r for r in done if r.method == method}
    theirs = {(r.profile_id, r.session_index): r for r in done if r.method == baseline}
    keys = sorted(ours.keys() & theirs.keys())
    tests = []
    for metric, value in (
        ("enforcements", lambda r: float(r.enforcements)),
        ("success", lambda r: float(r.success)),
    ):
        diffs: dict[str, list[float]] = {}
        for key in keys:
            d = diffs.setdefault(key[0], [0.0, 0.0])
            d[0] += value(ours[key]) - value(theirs[key])
            d[1] += 1.0
        profiles = sorted(diffs)
        sums = [diffs[p][0] for p in profiles]
        counts = [diffs[p][1] for p in profiles]
        tests.append(
            PairedTest(
                method=method,
                baseline=baseline,
                metric=metric,
                pairs=len(keys),
                profiles=len(profiles),
                mean_diff=ratio_ci(sums, counts, reps=REPS, seed=SEED),
                p_value=sign_flip_p(sums, seed=SEED),
            )
        )
    return tests


def build_report(
    target: str | Path, results_root: str | Path = "results", baseline: str | None = None
) -> CampaignReport:
    results = resolve_results_dir(target, results_root)
    records = load_records(results)
    campaign_id, methods = _campaign_meta(results, records)
    if baseline is None:
        baseline = "vanilla" if "vanilla" in methods else methods[0]
    elif baseline not in methods:
        raise ReportError(
            f"{results}: baseline method {baseline!r} not in this campaign ({', '.join(methods)})"
        )
    by_method = {m: [r for r in records if r.method == m] for m in methods}
    return CampaignReport(
        campaign_id=campaign_id,
        source=str(results),
        baseline=baseline,
        methods=[summarize_method(m, rs) for m, rs in by_method.items()],
        by_session={m: summarize_indices(rs) for m, rs in by_method.items()},
        paired=[t for m in methods if m != baseline for t in paired_tests(m, baseline, records)],
    )


# --------------------------------------------------------------------------- outputs


def report_json(report: CampaignReport) -> dict:
    """The `--json` document: point estimates only, null where undefined."""
    return {
        "campaign": report.campaign_id,
        "methods": {
            s.method: {
                "sessions": s.sessions,
                "success_rate": s.success_rate.value,
                "timeout_rate": s.timeout_rate.value,
                "user_tokens_mean": s.user_tokens_mean.value,
                "enforcements_mean": s.enforcements_mean.value,
                "conflict_accuracy": s.conflict_accuracy.value,
                "by_session": [
                    {
                        "index": i.index,
                        "sessions": i.sessions,
                        "success_rate": i.success_rate.value,
                        "enforcements_mean": i.enforcements_mean.value,
                        "conflict_accuracy": i.conflict_accuracy.value,
                    }
                    for i in report.by_session[s.method]
                ],
            }
            for s in report.methods
        },
    }


def _fmt(est: Interval, digits: int = 3) -> str:
    if est.value is None:
        return "n/a"
    return f"{est.value:.{digits}f} [{est.lo:.{digits}f}, {est.hi:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def render_markdown(report: CampaignReport, plots: dict[str, str]) -> str:
    lines = [
        f"# Campaign report: {report.campaign_id}",
        "",
        f"Source: `{report.source}`. Baseline for paired tests: `{report.baseline}`.",
        "",
        f"Values are point estimates with 95% confidence intervals [lo, hi] from a percentile "
        f"bootstrap over profiles ({report.reps} resamples, seed {report.seed}); the profile "
        "is the resampling unit because sessions of one lane are dependent. Failed sessions "
        "are counted but excluded from every statistic. Conflict accuracy is read on the "
        "first reply of each conflict probe, pools probes (sum correct / sum probes) and is "
        "n/a without probes.",
        "",
        "## Per method",
        "",
    ]
    lines += _table(
        [
            "method",
            "sessions",
            "failed",
            "success rate",
            "timeout rate",
            "user tokens",
            "enforcements",
            "compliance",
            "conflict accuracy (probes)",
            "successes / 1k user tokens",
        ],
        [
            [
                f"`{s.method}`",
                str(s.sessions),
                str(s.failed),
                _fmt(s.success_rate),
                _fmt(s.timeout_rate),
                _fmt(s.user_tokens_mean, 1),
                _fmt(s.enforcements_mean),
                _fmt(s.compliance_mean),
                f"{_fmt(s.conflict_accuracy)} ({s.conflict_probes})",
                _fmt(s.successes_per_1k_user_tokens),
            ]
            for s in report.methods
        ],
    )
    lines += [
        "Tokens, over-personalization (rated agent replies that apply a preference whose "
        "condition does not hold) and repetition (adjacent agent replies with a "
        "SequenceMatcher ratio above 0.85):",
        "",
    ]
    lines += _table(
        [
            "method",
            "agent tokens",
            "total tokens",
            "over-personalization",
            "repetition",
            "simulator fallbacks",
        ],
        [
            [
                f"`{s.method}`",
                _fmt(s.agent_tokens_mean, 1),
                _fmt(s.total_tokens_mean, 1),
                _fmt(s.over_personalization_rate),
                _fmt(s.repetition_rate),
                str(s.simulator_fallbacks),
            ]
            for s in report.methods
        ],
    )
    lines += ["## Per session index", ""]
    for method, indices in report.by_session.items():
        lines += [f"### `{method}`", ""]
        lines += _table(
            ["session", "sessions", "success rate", "enforcements", "conflict accuracy"],
            [
                [
                    str(i.index),
                    str(i.sessions),
                    _fmt(i.success_rate),
                    _fmt(i.enforcements_mean),
                    _fmt(i.conflict_accuracy),
                ]
                for i in indices
            ],
        )
    lines += [
        f"## Paired tests against `{report.baseline}`",
        "",
        "Sessions paired by (profile, session index); difference = method - baseline. "
        "p: two-sided sign-flip permutation test over profiles (exact up to 16 profiles; "
        "with k profiles the smallest possible p is 2/2^k).",
        "",
    ]
    if report.paired:
        lines += _table(
            ["method", "metric", "pairs", "profiles", "mean difference", "p"],
            [
                [
                    f"`{t.method}`",
                    t.metric,
                    str(t.pairs),
                    str(t.profiles),
                    _fmt(t.mean_diff),
                    "n/a" if t.p_value is None else f"{t.p_value:.4f}",
                ]
                for t in report.paired
            ],
        )
    else:
        lines += ["(only one method)", ""]
    if plots:
        lines += ["## Plots", ""]
        for key, _, title in PLOTS:
            if key in plots:
                lines += [f"![{title} over session index]({plots[key]})", ""]
    return "\n".join(lines)


def write_plots(report: CampaignReport, out_dir: Path, stem: str) -> dict[str, str]:
    """One PNG per metric over session index, a line per method with its CI band."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names: dict[str, str] = {}
    for key, field, title in PLOTS:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for method, indices in report.by_session.items():
            # Indices where the metric is undefined (no conflict probes) are left out, so
            # the line joins its neighbours instead of leaving isolated points.
            points = [(i.index, getattr(i, field)) for i in indices]
            points = [(x, e) for x, e in points if e.value is not None]
            if not points:
                continue
            xs = [x for x, _ in points]
            (line,) = ax.plot(xs, [e.value for _, e in points], marker="o", label=method)
            ax.fill_between(
                xs,
                [e.lo for _, e in points],
                [e.hi for _, e in points],
                alpha=0.2,
                color=line.get_color(),
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("session index")
        ax.set_ylabel(title)
        ax.set_title(f"{title} ({report.campaign_id})", fontsize=9)
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        name = f"{stem}_{key}.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        names[key] = name
    return names


def write_report(report: CampaignReport, out: Path | None = None) -> Path:
    """report.md (or ``out``) with its PNGs next to it; returns the Markdown path."""
    path = Path(out) if out is not None else Path(report.source) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, path.parent, path.stem)
    path.write_text(render_markdown(report, plots))
    return path
