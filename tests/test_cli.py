"""The `vars` command end to end: `--local`, `up`/`down`, on the embedded Redis."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest

from scheduler.embedded_redis import process_alive as _alive
from tests.pipeline_harness import run_vars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = """
name = "cli"
methods = ["vanilla", "rag_vector"]
profiles = 1
sessions = 2
max_turns = 5
datasets = ["mmlu"]
seed = 1
"""


def _vars(args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_vars(args, home, timeout)


def _results(results: Path) -> list[dict]:
    (campaign_dir,) = list(results.iterdir())
    assert (campaign_dir / "campaign.json").exists()
    return [msgspec.json.decode(line) for line in (campaign_dir / "sessions.jsonl").read_text().splitlines()]


def test_campaign_run_local_starts_and_stops_everything(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    home = tmp_path / "home"
    proc = _vars(["campaign", "run", str(spec), "--local", "--results", str(tmp_path / "results")], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    campaign_id = proc.stdout.splitlines()[0]
    assert campaign_id.startswith("cli-")
    records = _results(tmp_path / "results")
    assert len(records) == 4
    assert {(r["method"], r["session_index"]) for r in records} == {
        ("vanilla", 1), ("vanilla", 2), ("rag_vector", 1), ("rag_vector", 2)
    }
    # --local stops what it started: no redis-server left on the home's socket.
    assert not (home / "redis.pid").exists() or not _pid_alive(home / "redis.pid")


def test_up_runs_detached_campaigns_and_down_stops_them(tmp_path):
    home = tmp_path / "home"
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    up = _vars(["up", "--concurrency", "1"], home)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        run = _vars(["campaign", "run", str(spec), "--results", str(tmp_path / "results")], home)
        assert run.returncode == 0, run.stderr[-3000:]
        assert len(_results(tmp_path / "results")) == 4
    finally:
        down = _vars(["down"], home)
    assert down.returncode == 0, down.stderr
    assert "stopped 6 worker(s)" in down.stdout
    pids = [int(p) for p in up.stdout.split("workers:")[1].split()]
    assert not any(_alive(pid) for pid in pids)


def _pid_alive(pidfile: Path) -> bool:
    try:
        return _alive(int(pidfile.read_text().strip()))
    except (OSError, ValueError):
        return False
