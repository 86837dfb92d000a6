"""`vars campaign report`: statistics on hand-computed data, plots, errors, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from scheduler.report import ReportError, build_report, report_json, write_report
from scheduler.stats import ratio_ci, ratio_diff_ci, sign_flip_p
from vars_core.types import SessionRecord

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rec(profile: str, method: str, index: int, **fields) -> SessionRecord:
    return SessionRecord(
        session_id=f"{profile}-{method}-{index}",
        campaign_id="hand",
        user_id=f"u-{profile}",
        profile_id=profile,
        method=method,
        session_index=index,
        problem_id="p",
        domain="mmlu",
        **fields,
    )


def _write(dirpath: Path, records: list[SessionRecord], methods: list[str] | None = None) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in records:
        data = msgspec.to_builtins(r)
        data["compliance"] = r.compliance
        lines.append(msgspec.json.encode(data))
    (dirpath / "sessions.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    plan = {"methods": methods or sorted({r.method for r in records})}
    doc = {"campaign_id": dirpath.name, "spec": None, "plan": plan}
    (dirpath / "campaign.json").write_text(json.dumps(doc))
    return dirpath


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "campaign", "report", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    records = [
        _rec("p1", "vanilla", 1, success=True, user_tokens=100, enforcements=4,
             conflict_probes=2, conflict_correct=1, applicable_pairs=4, satisfied_pairs=2),
        _rec("p1", "vanilla", 2, success=False, timeout=True, user_tokens=200, enforcements=2),
        _rec("p2", "vanilla", 1, success=True, user_tokens=100, enforcements=3,
             conflict_probes=1, conflict_correct=1),
        _rec("p2", "vanilla", 2, success=True, user_tokens=200, enforcements=1,
             conflict_probes=1, conflict_correct=0),
        _rec("p1", "all_memory", 1, success=True, user_tokens=50, enforcements=1),
        _rec("p1", "all_memory", 2, success=True, user_tokens=50, enforcements=0),
        _rec("p2", "all_memory", 1, success=False, user_tokens=150, enforcements=2),
        _rec("p2", "all_memory", 2, success=True, user_tokens=50, enforcements=0),
        # A failed session counts nowhere in the statistics.
        _rec("p2", "all_memory", 3, success=True, enforcements=99, status="failed"),
    ]
    return _write(tmp_path / "results" / "hand", records, ["vanilla", "all_memory"])


def test_json_shape_and_hand_computed_values(hand: Path):
    doc = report_json(build_report(hand))
    assert doc == {
        "campaign": "hand",
        "methods": {
            "vanilla": {
                "sessions": 4,
                "success_rate": 0.75,
                "timeout_rate": 0.25,
                "user_tokens_mean": 150.0,
                "enforcements_mean": 2.5,
                "conflict_accuracy": 0.5,  # (1 + 1 + 0) / (2 + 1 + 1)
                "by_session": [
                    {"index": 1, "sessions": 2, "success_rate": 1.0,
                     "enforcements_mean": 3.5, "conflict_accuracy": pytest.approx(2 / 3)},
                    {"index": 2, "sessions": 2, "success_rate": 0.5,
                     "enforcements_mean": 1.5, "conflict_accuracy": 0.0},
                ],
            },
            "all_memory": {
                "sessions": 4,
                "success_rate": 0.75,
                "timeout_rate": 0.0,
                "user_tokens_mean": 75.0,
                "enforcements_mean": 0.75,
                "conflict_accuracy": None,
                "by_session": [
                    {"index": 1, "sessions": 2, "success_rate": 0.5,
                     "enforcements_mean": 1.5, "conflict_accuracy": None},
                    {"index": 2, "sessions": 2, "success_rate": 1.0,
                     "enforcements_mean": 0.0, "conflict_accuracy": None},
                ],
            },
        },
    }
    assert list(doc["methods"]) == ["vanilla", "all_memory"]  # the plan's order


def test_markdown_only_fields(hand: Path):
    report = build_report(hand)
    vanilla, memory = report.methods
    assert vanilla.failed == 0 and memory.failed == 1
    # compliance: (2/4 + 1 + 1 + 1) / 4; sessions without applicable pairs count as 1.0
    assert vanilla.compliance_mean.value == pytest.approx(0.875)
    # successes per 1k user tokens: 3 / 600 * 1000 and 3 / 300 * 1000
    assert vanilla.successes_per_1k_user_tokens.value == pytest.approx(5.0)
    assert memory.successes_per_1k_user_tokens.value == pytest.approx(10.0)
    assert report.baseline == "vanilla"
    enf = next(t for t in report.paired if t.metric == "enforcements")
    # pairs (p1,1) -3, (p1,2) -2, (p2,1) -1, (p2,2) -1
    assert enf.pairs == 4 and enf.profiles == 2
    assert enf.mean_diff.value == pytest.approx(-1.75)


def test_campaign_id_lookup_under_results(hand: Path):
    assert build_report("hand", hand.parent).campaign_id == "hand"


def test_ci_contains_the_mean_and_narrows_with_more_profiles(tmp_path: Path):
    def widths(k: int) -> tuple[float, float, float]:
        # Profile i's sessions all have i % 4 enforcements: profiles differ, lanes agree.
        records = [
            _rec(f"p{i:02d}", "vanilla", s, enforcements=i % 4, success=(i + s) % 3 == 0)
            for i in range(k) for s in (1, 2, 3)
        ]
        est = build_report(_write(tmp_path / f"k{k}", records)).methods[0].enforcements_mean
        return est.lo, est.value, est.hi

    lo4, mean4, hi4 = widths(4)
    lo40, mean40, hi40 = widths(40)
    assert mean4 == pytest.approx(1.5) and mean40 == pytest.approx(1.5)
    assert lo4 <= mean4 <= hi4 and lo40 <= mean40 <= hi40
    assert lo4 < hi4
    assert hi40 - lo40 < (hi4 - lo4) / 2


def _paired(tmp_path: Path, name: str, deltas: list[int]) -> Path:
    """8 profiles x 3 sessions; all_memory has baseline + delta[profile] enforcements."""
    records = []
    for i, delta in enumerate(deltas):
        for s in (1, 2, 3):
            base = 3 + (i + s) % 3
            records.append(_rec(f"p{i}", "vanilla", s, enforcements=base))
            records.append(_rec(f"p{i}", "all_memory", s, enforcements=base + delta))
    return _write(tmp_path / name, records, ["vanilla", "all_memory"])


def test_paired_test_detects_a_real_difference(tmp_path: Path):
    report = build_report(_paired(tmp_path, "real", [-2, -1, -3, -2, -1, -2, -2, -3]))
    enf = next(t for t in report.paired if t.metric == "enforcements")
    assert enf.method == "all_memory" and enf.baseline == "vanilla"
    assert enf.mean_diff.value == pytest.approx(-2.0)
    assert enf.mean_diff.hi < 0
    assert enf.p_value == pytest.approx(2 / 2**8)  # exact: every profile agrees
    assert enf.p_value < 0.05
    success = next(t for t in report.paired if t.metric == "success")
    assert success.mean_diff.value == 0.0 and success.p_value == 1.0


def test_paired_test_does_not_flag_a_null_difference(tmp_path: Path):
    report = build_report(_paired(tmp_path, "null", [1, -2, 1, 0, -1, 2, -1, 1]))
    enf = next(t for t in report.paired if t.metric == "enforcements")
    assert enf.p_value > 0.05
    assert enf.mean_diff.lo < 0 < enf.mean_diff.hi


def test_sign_flip_monte_carlo_path_and_ratio_edge_cases():
    assert sign_flip_p([-1.0] * 20, seed=1) < 0.001  # 20 profiles: sampled, not enumerated
    assert sign_flip_p([1.0, -1.0] * 10, seed=1) == 1.0
    assert sign_flip_p([]) is None
    assert ratio_ci([0, 0], [0, 0]).value is None  # no probes: undefined, not zero
    single = ratio_ci([3.0], [2.0])
    assert single.value == single.lo == single.hi == 1.5


def test_baseline_choice(hand: Path):
    assert build_report(hand, baseline="all_memory").paired[0].method == "vanilla"
    with pytest.raises(ReportError, match="baseline method 'nope'"):
        build_report(hand, baseline="nope")


def test_report_markdown_and_valid_pngs(hand: Path):
    path = write_report(build_report(hand))
    assert path == hand / "report.md"
    text = path.read_text()
    assert "## Per method" in text and "## Paired tests against `vanilla`" in text
    for key in ("enforcements", "success_rate", "conflict_accuracy"):
        png = hand / f"report_{key}.png"
        assert f"]({png.name})" in text
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    import matplotlib.image

    assert matplotlib.image.imread(hand / "report_enforcements.png").ndim == 3
    other = write_report(build_report(hand), hand.parent / "elsewhere" / "r.md")
    assert (other.parent / "r_success_rate.png").read_bytes()[:8] == PNG_MAGIC


def test_unknown_id_is_named(tmp_path: Path):
    with pytest.raises(ReportError, match="nope"):
        build_report("nope", tmp_path)
    proc = _cli("nope", "--results", str(tmp_path), "--json")
    assert proc.returncode == 2
    assert str(tmp_path / "nope") in proc.stderr and proc.stdout == ""


def test_malformed_line_is_named_by_number(hand: Path):
    lines = (hand / "sessions.jsonl").read_text().splitlines()
    lines.insert(2, '{"session_id": "x", "enforcements": "many"}')
    (hand / "sessions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=r"sessions\.jsonl:3: malformed session record"):
        build_report(hand)
    lines[2] = "{not json"
    (hand / "sessions.jsonl").write_text("\n".join(lines) + "\n")
    proc = _cli(str(hand))
    assert proc.returncode == 2 and "sessions.jsonl:3:" in proc.stderr


def test_end_to_end_in_process_campaign_through_the_cli(tmp_path: Path):
    from scheduler.campaigns import record_line
    from vars_core.engine import Engine
    from vars_core.problems import load_problems
    from vars_core.runner import run_lane
    from vars_core.scripted.profiles import generate_profiles
    from vars_core.store import StateStore

    engine, store = Engine(), StateStore()
    problems = load_problems(["math-500", "logiqa", "mmlu"])
    methods = ["vanilla", "all_memory"]
    records = [
        r
        for profile in generate_profiles(2, seed=5)
        for method in methods
        for r in run_lane(engine, store, "e2e", profile, method, 3, problems, seed=5, max_turns=6)
    ]
    results = tmp_path / "results" / "e2e"
    results.mkdir(parents=True)
    (results / "sessions.jsonl").write_bytes(b"".join(record_line(r) for r in records))
    doc = {"campaign_id": "e2e", "spec": None, "plan": {"methods": methods}}
    (results / "campaign.json").write_text(json.dumps(doc))

    proc = _cli(str(results), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["campaign"] == "e2e" and list(out["methods"]) == methods
    for method in methods:
        mine = [r for r in records if r.method == method and r.status != "failed"]
        summary = out["methods"][method]
        assert summary["sessions"] == len(mine)
        assert summary["enforcements_mean"] == pytest.approx(
            sum(r.enforcements for r in mine) / len(mine)
        )
        assert [s["index"] for s in summary["by_session"]] == [1, 2, 3]
        assert sum(s["sessions"] for s in summary["by_session"]) == len(mine)
        assert set(summary) == {
            "sessions", "success_rate", "timeout_rate", "user_tokens_mean",
            "enforcements_mean", "conflict_accuracy", "by_session",
        }

    proc = _cli("e2e", "--results", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (results / "report.md").exists()
    assert (results / "report_conflict_accuracy.png").read_bytes()[:8] == PNG_MAGIC


def test_paired_ratio_difference_interval():
    correct_a, probes = [3, 4, 5, 4, 3, 5, 4, 4], [5] * 8
    correct_b = [1, 2, 1, 2, 1, 1, 2, 2]
    diff = ratio_diff_ci(correct_a, probes, correct_b, probes, reps=2000, seed=1)
    assert diff.value == pytest.approx(sum(correct_a) / 40 - sum(correct_b) / 40)
    assert 0 < diff.lo <= diff.value <= diff.hi
    same = ratio_diff_ci(correct_a, probes, correct_a, probes, reps=500, seed=1)
    assert (same.value, same.lo, same.hi) == (0.0, 0.0, 0.0)
    # A coin-flip difference on few profiles straddles zero.
    noisy = ratio_diff_ci([1, 0, 1, 0], [1, 1, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1], reps=2000, seed=1)
    assert noisy.lo < 0 < noisy.hi
    assert ratio_diff_ci([], [], [], []).value is None
