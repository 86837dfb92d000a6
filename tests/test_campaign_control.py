"""`vars campaign cancel`, `failures` and `retry`, and finished_at, on real workers and Redis.

The failing sessions come from the workers' test-only fault hook (workers/tasks.py): the
workers start with VARS_TEST_FAULTS=1 and a Redis key names the stage, turn and session
ids to fail; deleting the key removes the fault.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest

from scheduler.campaigns import launch
from scheduler.cli import main
from scheduler.spec import CampaignSpec
from scheduler.status import campaign_records, campaign_status, list_campaigns
from tests.pipeline_harness import Pipeline
from vars_core.campaign import finished_at, progress
from vars_core.engine import Engine
from vars_core.runner import lane_user_id, session_id_for
from vars_core.stages.lifecycle import START_TURN
from workers.tasks import fault_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("VARS_TEST_FAULTS", "REDIS_URL")}
    os.environ["VARS_TEST_FAULTS"] = "1"  # the workers inherit it
    pipe = Pipeline(tmp_path_factory.mktemp("control-home")).start()
    yield pipe
    pipe.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def engine():
    return Engine()


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["campaign", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _started_index(store, plan, method: str, profile_id: str) -> int:
    """The highest session index of a lane whose start is committed."""
    user = lane_user_id(plan.campaign_id, method, profile_id)
    index = 0
    while index < plan.sessions and store.is_committed(session_id_for(user, index + 1), START_TURN, "start"):
        index += 1
    return index


def test_cancel_stops_a_running_campaign(pipeline, engine, capsys):
    store = pipeline.store()
    spec = CampaignSpec(
        name="cancel", methods=["vanilla", "rag"], profiles=3, sessions=6, max_turns=3, datasets=["mmlu"], seed=5
    )
    plan = launch(pipeline.app(), engine, store, spec)
    pipeline.wait_for(lambda: sum(progress(store, plan.campaign_id)) >= 4, timeout_s=120, what="some sessions")

    rc, out, _ = _cli(capsys, "cancel", plan.campaign_id)
    assert rc == 0 and "cancelled campaign" in out
    started = {
        (m, p): _started_index(store, plan, m, p) for m in plan.methods for p in plan.profile_ids
    }

    # Let whatever was in flight drain, then make sure nothing moves any more.
    pipeline.wait_for(pipeline.queues_empty, timeout_s=60, what="the queues to drain")
    time.sleep(1.5)
    settled = progress(store, plan.campaign_id)
    pipeline.wait_for(pipeline.queues_empty, timeout_s=60, what="the queues to drain")
    time.sleep(1.0)
    assert progress(store, plan.campaign_id) == settled
    done, failed = settled
    assert done + failed < plan.total_sessions

    records = campaign_records(store, plan.campaign_id)
    assert len(records) == done + failed
    for record in records:
        assert record.session_index <= started[(record.method, record.profile_id)], record.session_id

    status = campaign_status(store, plan.campaign_id)
    assert status.state == "cancelled" and status.running == 0 and status.cancelled_at is not None
    assert status.pending == plan.total_sessions - done - failed and status.finished_at is None
    rc, out, _ = _cli(capsys, "status", plan.campaign_id)
    assert rc == 0 and "(cancelled)" in out
    rc, out, _ = _cli(capsys, "list", "--json")
    assert {r["campaign"]: r["state"] for r in json.loads(out)}[plan.campaign_id] == "cancelled"

    rc, out, _ = _cli(capsys, "cancel", plan.campaign_id)
    assert rc == 0 and "already cancelled" in out
    rc, _, err = _cli(capsys, "retry", plan.campaign_id)
    assert rc == 2 and "cancelled" in err
    for command in ("cancel", "failures", "retry"):
        rc, _, err = _cli(capsys, command, "nope-000")
        assert rc == 2 and "nope-000" in err, command


def test_failures_then_retry_finishes_every_session_once(pipeline, engine, capsys):
    store = pipeline.store()
    client = pipeline.client()
    client.set(fault_key(store), b"simulate|2|:s2")  # every lane's 2nd session, at turn 2
    spec = CampaignSpec(
        name="faults", methods=["vanilla", "rag_vector"], profiles=2, sessions=3, max_turns=3, datasets=["mmlu"], seed=9
    )
    try:
        plan = launch(pipeline.app(), engine, store, spec)
        cid = plan.campaign_id
        pipeline.wait_for(
            lambda: sum(progress(store, cid)) >= plan.total_sessions, timeout_s=120, what="every session to end"
        )
    finally:
        client.delete(fault_key(store))

    assert progress(store, cid) == (8, 4)
    first_finish = finished_at(store, cid)
    assert first_finish is not None
    status = campaign_status(store, cid)
    assert (status.state, status.failed, status.finished_at) == ("finished", 4, first_finish)
    later = campaign_status(store, cid, now=time.time() + 3600)
    assert later.sessions_per_hr == pytest.approx(status.sessions_per_hr)  # launch -> finish, not now

    rc, out, _ = _cli(capsys, "failures", cid, "--json")
    assert rc == 0
    failures = json.loads(out)
    assert sorted(f["session_id"] for f in failures) == sorted(
        session_id_for(lane_user_id(cid, m, p), 2) for m in plan.methods for p in plan.profile_ids
    )
    assert {(f["stage"], f["turn"]) for f in failures} == {("simulate", 2)}
    assert all("injected test fault" in f["reason"] and f["method"] in plan.methods for f in failures)
    rc, out, _ = _cli(capsys, "failures", cid)
    assert rc == 0 and "4 failed session(s)" in out and "simulate@turn2" in out

    rc, out, _ = _cli(capsys, "cancel", cid)
    assert rc == 0 and "already finished" in out

    rc, out, _ = _cli(capsys, "retry", cid)
    assert rc == 0 and "retrying 4 failed session(s)" in out, out
    pipeline.wait_for(lambda: progress(store, cid) == (12, 0), timeout_s=60, what="the retried sessions")
    pipeline.wait_for(pipeline.queues_empty, timeout_s=30, what="the queues to drain")
    time.sleep(0.5)
    assert progress(store, cid) == (12, 0)

    rc, out, _ = _cli(capsys, "retry", cid)
    assert rc == 0 and "nothing to retry" in out
    rc, out, _ = _cli(capsys, "failures", cid)
    assert rc == 0 and "no failed sessions" in out

    rc, out, _ = _cli(capsys, "export", cid)
    assert rc == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 12 and len({r["session_id"] for r in lines}) == 12
    assert all(r["status"] == "done" for r in lines)
    for record in lines:
        turns = Counter((m.role, m.turn) for m in store.messages(record["session_id"]))
        assert turns and max(turns.values()) == 1, (record["session_id"], turns)

    status = campaign_status(store, cid)
    assert (status.state, status.done, status.failed) == ("finished", 12, 0)
    assert status.finished_at is not None and status.finished_at >= first_finish
    assert {c.campaign_id: c.state for c in list_campaigns(store)}[cid] == "finished"
