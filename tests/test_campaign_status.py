"""`vars campaign run --detach`, `status`, `list` and `export`, on real workers and Redis."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from scheduler.campaigns import plan_campaign
from scheduler.spec import parse_spec
from scheduler.status import UnknownCampaign, campaign_records, campaign_status, list_campaigns
from tests.pipeline_harness import run_vars
from vars_core.campaign import first_sessions, register_campaign, save_plan
from vars_core.config import config_from_env
from vars_core.engine import Engine
from vars_core.store import StateStore
from vars_core.store.connect import connect
from vars_core.store.redis_backend import RedisBackend

SPEC = """
name = "status"
methods = ["vanilla", "rag_vector"]
profiles = 2
sessions = 2
max_turns = 3
datasets = ["mmlu"]
seed = 3
"""


def _vars(args: list[str], home: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_vars(args, home, timeout)


def _check_sums(status: dict) -> None:
    parts = status["done"] + status["failed"] + status["running"] + status["pending"]
    assert parts == status["total"], status
    assert status["running"] <= 4, status  # at most one per lane (2 profiles x 2 methods)
    for key in ("done", "failed", "running", "total"):
        assert sum(m[key] for m in status["methods"].values()) == status[key], status


def test_status_of_a_launched_campaign_before_any_worker(redis_url, namespace):
    """Every lane's first session is started at launch: 'running'; the rest pending."""
    store = StateStore(RedisBackend(connect(redis_url)), namespace=namespace)
    plan, profiles = plan_campaign(parse_spec(SPEC))
    save_plan(store, plan, profiles)
    register_campaign(store, plan.campaign_id, launched_at=time.time() - 60)
    first_sessions(Engine(config_from_env()), store, plan)

    status = campaign_status(store, plan.campaign_id)
    assert (status.state, status.total, status.done, status.failed, status.running) == ("running", 8, 0, 0, 4)
    assert status.pending == 4
    assert status.eta_s is None and status.sessions_per_hr == 0
    assert {m: c.running for m, c in status.methods.items()} == {"vanilla": 2, "rag_vector": 2}
    assert campaign_records(store, plan.campaign_id) == []
    (listed,) = list_campaigns(store)
    assert (listed.campaign_id, listed.state, listed.total) == (plan.campaign_id, "running", 8)
    with pytest.raises(UnknownCampaign, match="nope-123"):
        campaign_status(store, "nope-123")


@pytest.mark.integration
@pytest.mark.slow
def test_detach_then_status_list_export(tmp_path):
    home = tmp_path / "home"
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)

    refused = _vars(["campaign", "run", str(spec), "--detach", "--local"], home)
    assert refused.returncode == 2
    assert "--detach" in refused.stderr and "vars up" in refused.stderr

    up = _vars(["up", "--concurrency", "1"], home)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        url = up.stdout.split("redis:")[1].split()[0]
        store = StateStore(RedisBackend(connect(url)))

        started = time.monotonic()
        detached = _vars(["campaign", "run", str(spec), "--detach", "--results", str(tmp_path / "none")], home)
        assert detached.returncode == 0, detached.stderr[-3000:]
        assert time.monotonic() - started < 30  # returns without following the campaign
        (campaign_id,) = detached.stdout.split()
        assert campaign_id.startswith("status-")
        assert not (tmp_path / "none").exists()  # no results files

        early = _vars(["campaign", "status", campaign_id, "--json"], home)
        assert early.returncode == 0, early.stderr[-3000:]
        first = json.loads(early.stdout)
        assert first["campaign"] == campaign_id and first["total"] == 8
        _check_sums(first)

        # The same spec, followed to the end: its sessions.jsonl is the reference.
        followed = _vars(["campaign", "run", str(spec), "--results", str(tmp_path / "results")], home)
        assert followed.returncode == 0, followed.stderr[-3000:]
        reference_id = followed.stdout.splitlines()[0]

        deadline = time.monotonic() + 120
        while campaign_status(store, campaign_id).state != "finished":
            _check_sums(campaign_status(store, campaign_id).to_json())
            assert time.monotonic() < deadline, "the detached campaign did not finish"
            time.sleep(0.3)

        final = _vars(["campaign", "status", campaign_id, "--json"], home)
        assert final.returncode == 0, final.stderr[-3000:]
        last = json.loads(final.stdout)
        _check_sums(last)
        assert (last["state"], last["done"], last["running"], last["failed"]) == ("finished", 8, 0, 0)
        assert last["eta_s"] == 0 and last["sessions_per_hr"] > 0
        assert last["methods"] == {
            m: {"done": 4, "failed": 0, "running": 0, "total": 4} for m in ("vanilla", "rag_vector")
        }
        text = _vars(["campaign", "status", campaign_id], home)
        assert "finished" in text.stdout and "vanilla" in text.stdout

        listed = _vars(["campaign", "list", "--json"], home)
        assert listed.returncode == 0, listed.stderr[-3000:]
        rows = json.loads(listed.stdout)
        assert [r["campaign"] for r in rows] == [reference_id, campaign_id]  # newest first
        assert rows[1]["state"] == "finished" and rows[1]["done"] == 8
        assert rows[1]["methods"] == ["vanilla", "rag_vector"]
        plain = _vars(["campaign", "list"], home)
        assert campaign_id in plain.stdout and "8/8" in plain.stdout

        exported = _vars(["campaign", "export", campaign_id, "--format", "jsonl"], home)
        assert exported.returncode == 0, exported.stderr[-3000:]
        lines = exported.stdout.splitlines()
        assert len(lines) == 8
        ours = [json.loads(line.replace(campaign_id, "CAMPAIGN")) for line in lines]
        reference_text = (tmp_path / "results" / reference_id / "sessions.jsonl").read_text()
        theirs = [json.loads(line.replace(reference_id, "CAMPAIGN")) for line in reference_text.splitlines()]

        def key(record: dict) -> tuple:
            return record["method"], record["profile_id"], record["session_index"]

        assert sorted(ours, key=key) == sorted(theirs, key=key)
        assert len({key(r) for r in ours}) == 8

        to_file = _vars(["campaign", "export", campaign_id, "--out", str(tmp_path / "s.jsonl")], home)
        assert to_file.returncode == 0 and to_file.stdout == ""
        assert (tmp_path / "s.jsonl").read_text() == exported.stdout

        parquet = _vars(["campaign", "export", campaign_id, "--format", "parquet", "--out", str(tmp_path / "s.parquet")], home)
        try:
            import pyarrow.parquet as pq
        except ImportError:
            assert parquet.returncode == 2 and "pip install pyarrow" in parquet.stderr
        else:
            assert parquet.returncode == 0, parquet.stderr[-3000:]
            rows = pq.read_table(tmp_path / "s.parquet").to_pylist()
            assert rows == [msgspec.json.decode(line) for line in lines]

        for command in (["status", "nope-000"], ["export", "nope-000"]):
            unknown = _vars(["campaign", *command], home)
            assert unknown.returncode == 2
            assert "nope-000" in unknown.stderr
    finally:
        down = _vars(["down"], home)
        assert down.returncode == 0, down.stderr
