"""The queued pipeline: real Redis, real Celery worker processes, real queues."""

from __future__ import annotations

import subprocess
import sys
import time

import msgspec
import numpy as np
import pytest

from queues.events import StageTask
from queues.topology import queue_for
from scheduler.campaigns import follow, launch
from scheduler.spec import CampaignSpec
from tests.pipeline_harness import Pipeline
from vars_core.engine import Engine
from vars_core.methods import get_method
from vars_core.problems import load_problems
from vars_core.routing import turn_stages
from vars_core.runner import lane_user_id, run_lane
from vars_core.store import StateStore
from vars_core.types import SimulatorTurn
from workers.publish import publish
from workers.tasks import hops_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = CampaignSpec(
    name="itest",
    methods=["vanilla", "all_memory", "rag", "rag_vector"],
    profiles=2,
    sessions=3,
    max_turns=6,
    datasets=["math-500", "logiqa"],
    seed=7,
)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pipe = Pipeline(tmp_path_factory.mktemp("pipeline-home")).start()
    yield pipe
    pipe.stop()


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def campaign(pipeline, engine, tmp_path_factory):
    store = pipeline.store()
    plan = launch(pipeline.app(), engine, store, SPEC)
    results = tmp_path_factory.mktemp("results")
    records = follow(store, plan.campaign_id, results, poll_s=0.2, timeout_s=600)
    return plan, records, results


def _transcript(store: StateStore, session_id: str) -> list[tuple[str, str, int]]:
    return [(m.role, m.content, m.turn) for m in store.messages(session_id)]


def test_campaign_completes_every_session_through_each_stage_queue(pipeline, campaign):
    plan, records, results = campaign
    assert len(records) == plan.total_sessions == 4 * 2 * 3
    assert all(r.status == "done" for r in records)
    lines = (results / plan.campaign_id / "sessions.jsonl").read_text().splitlines()
    assert len(lines) == plan.total_sessions
    first = msgspec.json.decode(lines[0])
    for field in ("profile_id", "method", "session_index", "turns", "enforcements", "success"):
        assert field in first
    assert (results / plan.campaign_id / "campaign.json").exists()

    store = pipeline.store()
    for record in records:
        method = get_method(record.method)
        hops = [h.decode().split("|") for h in store.backend.lrange(hops_key(store, record.session_id))]
        seen = {(int(turn), stage) for turn, stage, *_ in hops}
        turn = 1
        while (sim := store.stage_output(record.session_id, turn, "simulate", SimulatorTurn)) is not None:
            expected = {(turn, "simulate")} | {(turn, s) for s in turn_stages(method, turn, sim.terminate)}
            assert expected <= seen, f"{record.session_id} turn {turn}: missing {expected - seen}"
            turn += 1
        for _turn, stage, routing_key, worker, wait_ms in hops:
            assert routing_key == queue_for(stage, "campaign"), hops
            assert worker.startswith(f"{stage}@"), f"{stage} ran on {worker}"
            float(wait_ms)  # every published event carries its send time: the queue wait


def _assert_same_vector(queued, local, user: str) -> None:
    """Equal counts and baseline, and z to 1e-3: after many other tests in the same
    process the in-process runner's z has been seen to differ from the workers' from the
    sixth significant digit on (transcripts, records and cards still equal bit for bit).
    Not explained yet; see docs/decisions.md."""
    assert (queued.updates, queued.baseline, queued.projection_version) == (
        local.updates, local.baseline, local.projection_version
    ), user
    for mine, theirs in ((queued.z_long, local.z_long), (queued.z_short, local.z_short)):
        assert np.allclose(mine, theirs, rtol=1e-3, atol=1e-7), user


def test_pipeline_reproduces_the_in_process_runner(pipeline, campaign, engine):
    plan, records, _ = campaign
    queued = pipeline.store()
    local = StateStore()  # in-memory backend
    problems = load_problems(plan.datasets)
    from scheduler.profiles import campaign_profiles

    for profile in campaign_profiles(SPEC.profiles, SPEC.seed):
        for method in plan.methods:
            local_records = run_lane(
                engine, local, plan.campaign_id, profile, method, plan.sessions, problems, plan.seed, plan.max_turns
            )
            for local_record in local_records:
                sid = local_record.session_id
                assert _transcript(local, sid) == _transcript(queued, sid), sid
                assert msgspec.to_builtins(queued.session_record(sid)) == msgspec.to_builtins(local_record)
            user = lane_user_id(plan.campaign_id, method, profile.profile_id)
            _assert_same_vector(queued.user(user).vector(256), local.user(user).vector(256), user)
            assert queued.user(user).cards(include_superseded=True) == local.user(user).cards(include_superseded=True)
    # The learning lane really learned something, so the vector comparison is not vacuous.
    learner = lane_user_id(plan.campaign_id, "rag_vector", plan.profile_ids[0])
    assert queued.user(learner).vector(256).updates > 0


def _longest_session(store: StateStore, plan, method: str) -> str:
    ids = [f"{lane_user_id(plan.campaign_id, method, p)}:s{i}" for p in plan.profile_ids for i in range(1, plan.sessions + 1)]
    return max(ids, key=lambda sid: store.session_record(sid).turns)


def test_duplicate_deliveries_change_nothing(pipeline, engine, campaign):
    plan, _, _ = campaign
    store = pipeline.store()
    app = pipeline.app()
    session_id = _longest_session(store, plan, "rag_vector")
    assert store.session_record(session_id).turns >= 2
    user = store.user(store.session(session_id).user_id)
    before = (_transcript(store, session_id), user.vector(256), user.cards(include_superseded=True))
    before_hops = store.backend.llen(hops_key(store, session_id))
    # Every stage that ran at turn 2, delivered again.
    duplicates = [
        StageTask(session_id, 2, s, "campaign")
        for s in ("simulate", "judge", "update", "extract", "retrieve", "generate")
        if store.is_committed(session_id, 2, s)
    ]
    assert len(duplicates) >= 3
    for event in duplicates:
        publish(app, event)
    pipeline.wait_for(pipeline.queues_empty, what="duplicate deliveries to be consumed")
    time.sleep(1.0)
    assert (_transcript(store, session_id), user.vector(256), user.cards(include_superseded=True)) == before
    # A late duplicate of a finished session is consumed and does nothing at all.
    assert store.backend.llen(hops_key(store, session_id)) == before_hops + len(duplicates)


def test_an_event_off_the_route_is_refused_without_harm(pipeline, engine, campaign):
    from workers.tasks import deadletter_key

    plan, _, _ = campaign
    store = pipeline.store()
    session_id = f"{lane_user_id(plan.campaign_id, 'vanilla', plan.profile_ids[0])}:s1"
    before = _transcript(store, session_id)
    dead_before = store.backend.llen(deadletter_key(store))
    # Vanilla never retrieves; and a session that does not exist.
    publish(pipeline.app(), StageTask(session_id, 1, "retrieve", "campaign"))
    publish(pipeline.app(), StageTask("no-such-session", 1, "judge", "campaign"))
    pipeline.wait_for(lambda: store.backend.llen(deadletter_key(store)) >= dead_before + 1, what="dead letters")
    assert _transcript(store, session_id) == before


def test_a_commit_without_its_publish_still_finishes_the_session(pipeline, engine):
    """A worker that dies between commit and publish: redelivery skips the side effects
    and publishes the next event, so the session is not stranded."""
    from scheduler.campaigns import plan_campaign
    from vars_core.campaign import first_sessions, save_plan
    from vars_core.stages import run_stage

    store = pipeline.store()
    spec = msgspec.structs.replace(SPEC, name="crash", methods=["rag_vector"], profiles=1, sessions=1)
    plan, profiles = plan_campaign(spec)
    save_plan(store, plan, profiles)
    (state,) = first_sessions(engine, store, plan)
    run_stage(engine, store, state.session_id, 1, "simulate")  # committed here, never published
    messages_after_commit = _transcript(store, state.session_id)
    publish(pipeline.app(), StageTask(state.session_id, 1, "simulate", "campaign"))
    pipeline.wait_for(lambda: store.session_record(state.session_id) is not None, what="the session to end")
    assert _transcript(store, state.session_id)[: len(messages_after_commit)] == messages_after_commit
    assert [m for m in store.messages(state.session_id) if m.turn == 1 and m.role == "user"] == [
        store.messages(state.session_id)[0]
    ]


def test_pickle_is_refused_and_the_worker_goes_on(pipeline, engine, campaign):
    plan, _, _ = campaign
    store = pipeline.store()
    app = pipeline.app()
    session_id = f"{lane_user_id(plan.campaign_id, 'rag', plan.profile_ids[0])}:s1"
    before = store.backend.llen(hops_key(store, session_id))
    event = msgspec.to_builtins(StageTask(session_id, 1, "judge", "campaign"))
    app.send_task("vars.judge", args=[event], queue=queue_for("judge"), serializer="pickle")
    pipeline.wait_for(pipeline.queues_empty, what="the pickle message to be consumed")
    time.sleep(1.0)
    assert store.backend.llen(hops_key(store, session_id)) == before, "a pickled message was executed"
    assert pipeline.alive()
    assert "untrusted" in pipeline.logs().lower() or "content" in pipeline.logs().lower()
    # The same event in msgspec is accepted by the same worker.
    publish(app, StageTask(session_id, 1, "simulate", "campaign"))
    pipeline.wait_for(lambda: store.backend.llen(hops_key(store, session_id)) > before, what="a msgspec message")


def test_malformed_spec_fails_naming_the_field_before_enqueueing(pipeline, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nmethods = ["rag"]\nprofiles = 2\nsessions = "three"\n')
    client = pipeline.client()
    keys_before = client.dbsize()
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "campaign", "run", str(bad)],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "REDIS_URL": pipeline.url},
    )
    assert proc.returncode == 2
    assert "`sessions`" in proc.stderr
    assert client.dbsize() == keys_before
    assert not any(k.startswith(b"vars:campaign:{bad-") for k in client.scan_iter(count=1000))
