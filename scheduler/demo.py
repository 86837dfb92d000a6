"""`vars demo`: a small built-in campaign on the embedded default, and its summary table."""

from __future__ import annotations

from collections import defaultdict

from scheduler.spec import CampaignSpec
from vars_core.types import SessionRecord

DEMO_SPEC = CampaignSpec(
    name="demo",
    methods=["vanilla", "all_memory", "rag", "rag_vector"],
    profiles=5,
    sessions=4,
    max_turns=8,
    datasets=["math-500", "logiqa", "mmlu"],
    seed=0,
)


def summary_table(records: list[SessionRecord], methods: list[str]) -> str:
    by_method: dict[str, list[SessionRecord]] = defaultdict(list)
    for record in records:
        by_method[record.method].append(record)
    indices = sorted({r.session_index for r in records})
    header = f"{'method':<12} {'sessions':>8} {'enforce/sess':>12} {'success':>8} {'compliance':>10}  "
    lines = [
        " " * len(header) + "enforcements per session, by session index",
        header + " ".join(f"{'s' + str(i):>5}" for i in indices),
    ]
    for method in methods:
        rows = by_method.get(method, [])
        if not rows:
            continue
        n = len(rows)
        enforcements = sum(r.enforcements for r in rows) / n
        success = sum(r.success for r in rows) / n
        compliance = sum(r.compliance for r in rows) / n
        per_index = []
        for i in indices:
            at = [r.enforcements for r in rows if r.session_index == i]
            per_index.append(f"{sum(at) / len(at):>5.2f}" if at else f"{'-':>5}")
        lines.append(
            f"{method:<12} {n:>8} {enforcements:>12.2f} {success:>8.0%} {compliance:>10.0%}  " + " ".join(per_index)
        )
    return "\n".join(lines)
