"""`vars campaign resume` and `vars campaign sweep`: stalled lanes go on from the store.

The integration tests run real worker processes on a dedicated embedded Redis (the
pipeline harness): they kill processes with SIGKILL and delete queue keys, which must not
touch a Redis other tests share.

Lost messages are simulated by deleting them: after every worker is killed, the campaign
queues *and* kombu's ``unacked`` hash (where a message a worker took but had not acked
waits for its visibility timeout) are deleted. Left alone, those unacked messages would
only come back after ``VISIBILITY_TIMEOUT_S`` (3600 s), so within the test they are as
good as lost; deleting them makes it certain (a Redis restart without AOF loses both).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from queues.events import StageTask
from queues.topology import all_queues
from scheduler.campaigns import launch, plan_campaign
from scheduler.cli import main
from scheduler.local import spawn_workers, worker_command
from scheduler.resume import pending_event, resume_campaign, resume_lane
from scheduler.spec import CampaignSpec
from tests.pipeline_harness import Pipeline
from vars_core.campaign import (
    finished_session_ids,
    lane_session,
    progress,
    register_campaign,
    registered_campaigns,
    save_plan,
)
from vars_core.engine import Engine
from vars_core.routing import END
from vars_core.runner import lane_user_id, session_id_for
from vars_core.stages import run_stage
from vars_core.stages.lifecycle import START_TURN
from vars_core.store import StateStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine():
    return Engine()


# --- in memory: where a session stands, and when a lane counts as stalled -------------


def _memory_plan(engine, methods=("rag_vector",), sessions=2):
    store = StateStore()
    spec = CampaignSpec(name="mem", methods=list(methods), profiles=1, sessions=sessions, max_turns=3, datasets=["mmlu"], seed=3)
    plan, profiles = plan_campaign(spec, "mem-1")
    save_plan(store, plan, profiles)
    return store, plan


def test_pending_event_follows_the_route(engine):
    """At every point of a session, the event resume would publish is the one the
    pipeline publishes next (and after the last stage, that stage again, to end it)."""
    store, plan = _memory_plan(engine)
    method, profile_id = plan.methods[0], plan.profile_ids[0]
    session = lane_session(engine, store, plan, profile_id, method, 1)
    step, last = ("simulate", 1), None
    while step[0] != END:
        event, ends = pending_event(store, session)
        assert ((event.stage, event.turn), ends) == (step, False)
        nxt = run_stage(engine, store, session.session_id, step[1], step[0])
        last, step = step, (nxt.stage, nxt.turn)
    event, ends = pending_event(store, session)
    assert ((event.stage, event.turn), ends) == (last, True)
    # Running that event again finds its commit made and leads to the end.
    assert run_stage(engine, store, session.session_id, last[1], last[0]).stage == END


def test_resume_lane_stalled_only_after_the_wait(engine):
    store, plan = _memory_plan(engine, methods=("vanilla",))
    method, profile_id = plan.methods[0], plan.profile_ids[0]
    session = lane_session(engine, store, plan, profile_id, method, 1)
    sid, published = session.session_id, []
    stamp = store.last_progress(sid)
    assert stamp is not None  # the start commit stamped it
    run_stage(engine, store, sid, 1, "simulate")
    assert store.last_progress(sid) >= stamp

    def lane(now):
        return resume_lane(engine, store, plan, method, profile_id, published.append, stalled_after=10, now=now)

    base = store.last_progress(sid)
    assert [r.action for r in lane(base + 5)] == ["running"] and not published
    results = lane(base + 20)
    assert [(r.action, r.stage, r.turn) for r in results] == [("republished", "generate", 1)]
    assert published == [StageTask(sid, 1, "generate", "campaign")]
    # The republish stamps the session: no second one before another full wait.
    assert [r.action for r in lane(base + 25)] == ["running"] and len(published) == 1
    # Resume (no wait) always republishes the lane's next event.
    report = resume_campaign(engine, store, plan.campaign_id, published.append)
    assert [(r.action, r.session_id) for r in report.lanes] == [("republished", sid)]


def test_the_sweeper_waits_while_the_stage_queue_is_not_empty(engine):
    """A deep queue makes waiting sessions look stalled: the sweeper leaves them be until
    that stage's queue has drained; resume (asked for by hand) republishes regardless."""
    from vars_core.store.backend import Op

    store, plan = _memory_plan(engine, methods=("vanilla",))
    method, profile_id = plan.methods[0], plan.profile_ids[0]
    sid, published = lane_session(engine, store, plan, profile_id, method, 1).session_id, []
    base = store.last_progress(sid)
    store.backend.apply([Op("rpush", "vars.simulate", value=b"someone else's event")])
    results = resume_lane(engine, store, plan, method, profile_id, published.append, stalled_after=10, now=base + 20)
    assert [(r.action, r.stage) for r in results] == [("queued", "simulate")] and not published
    store.backend.apply([Op("del", "vars.simulate")])
    results = resume_lane(engine, store, plan, method, profile_id, published.append, stalled_after=10, now=base + 20)
    assert [r.action for r in results] == ["republished"] and len(published) == 1
    store.backend.apply([Op("rpush", "vars.simulate", value=b"x")])
    resume_campaign(engine, store, plan.campaign_id, published.append)
    assert len(published) == 2


# --- real workers and Redis -----------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pipe = Pipeline(tmp_path_factory.mktemp("resume-home")).start()
    yield pipe
    pipe.stop()


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["campaign", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _kill9(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=10)


def _purge_queues(pipe: Pipeline) -> int:
    """Lose every queued and every taken-but-unacked message (kombu's bindings stay)."""
    client = pipe.client()
    keys = [q.name for q in all_queues()] + ["unacked", "unacked_index", "unacked_mutex"]
    keys += [k for k in client.scan_iter(match="vars.*") if client.type(k) == b"list"]
    return int(client.delete(*keys))


def _spawn_one(pipe: Pipeline, stage: str) -> subprocess.Popen:
    log = (pipe.home / "logs" / f"worker-{stage}.log").open("ab")
    env = {**os.environ, "REDIS_URL": pipe.url, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(worker_command(stage), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _check_exactly_once(pipe: Pipeline, capsys, campaign_id: str, total: int) -> None:
    """Every planned session finished once (export, finished list, counters), and every
    transcript is turns 1..n, user then assistant, nothing repeated or missing."""
    store = pipe.store()
    pipe.wait_for(lambda: sum(progress(store, campaign_id)) >= total, timeout_s=120, what="every session")
    pipe.wait_for(pipe.queues_empty, timeout_s=60, what="the queues to drain")
    time.sleep(0.5)
    assert progress(store, campaign_id) == (total, 0)
    finished = finished_session_ids(store, campaign_id)
    assert len(finished) == total and len(set(finished)) == total
    rc, out, _ = _cli(capsys, "export", campaign_id)
    assert rc == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == total and len({r["session_id"] for r in records}) == total
    assert all(r["status"] == "done" for r in records)
    check_transcripts(store, records)


@pytest.mark.integration
@pytest.mark.slow
def test_resume_after_killed_workers_and_scheduler(pipeline, tmp_path, capsys):
    store = pipeline.store()
    spec_path = tmp_path / "resume.toml"
    spec_path.write_text(
        'name = "resume"\nmethods = ["vanilla", "rag_vector"]\nprofiles = 3\nsessions = 4\n'
        'max_turns = 4\ndatasets = ["mmlu"]\nseed = 11\n'
    )
    env = {**os.environ, "REDIS_URL": pipeline.url, "PYTHONUNBUFFERED": "1"}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "campaign", "run", str(spec_path), "--results", str(tmp_path / "results")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        pipeline.wait_for(lambda: registered_campaigns(store), timeout_s=60, what="the launch")
        cid = registered_campaigns(store)[0][0]
        pipeline.wait_for(lambda: sum(progress(store, cid)) >= 6, timeout_s=90, what="some sessions")
    finally:
        # The generate worker and the scheduler die first (-9), mid-campaign; then the
        # other workers, so the store stops moving. Their taken tasks are never acked.
        generate = [p for p in pipeline.procs if p.args[5] == "generate"]
        assert len(generate) == 1
        _kill9([*generate, scheduler])
        _kill9(pipeline.procs)
    assert _purge_queues(pipeline) > 0
    total = 24
    stalled = sum(progress(store, cid))
    assert stalled < total

    pipeline.procs = spawn_workers(pipeline.url, pipeline.home / "logs", pipeline.concurrency)
    time.sleep(3.0)  # fresh workers, empty queues: nothing moves by itself
    assert sum(progress(store, cid)) == stalled and pipeline.queues_empty()

    rc, out, _ = _cli(capsys, "resume", cid)
    assert rc == 0, out
    head = out.splitlines()[0]
    assert head.startswith(f"campaign {cid}: resumed "), out
    resumed = int(head.split("resumed ")[1].split(" ")[0])
    complete = int(head.split("; ")[1].split(" ")[0])
    assert resumed + complete == 6 and resumed >= 1, out
    assert len(out.splitlines()) - 1 == int(head.split("republished ")[1].split(" ")[0])
    _check_exactly_once(pipeline, capsys, cid, total)


@pytest.mark.integration
@pytest.mark.slow
def test_sweeper_revives_a_lane_whose_event_was_lost(pipeline, engine, tmp_path, capsys):
    store = pipeline.store()
    client = pipeline.client()
    # No simulate worker while launching: both lanes' first events wait in the queue.
    simulate = [p for p in pipeline.procs if p.args[5] == "simulate"]
    assert len(simulate) == 1
    _kill9(simulate)
    spec = CampaignSpec(name="sweep", methods=["vanilla"], profiles=2, sessions=2, max_turns=3, datasets=["mmlu"], seed=4)
    plan = launch(pipeline.app(), engine, store, spec)
    cid = plan.campaign_id
    sessions = [session_id_for(lane_user_id(cid, "vanilla", p), 1) for p in plan.profile_ids]
    lost = client.lpop("vars.simulate")
    assert lost is not None
    (lost_sid,) = [sid for sid in sessions if sid.encode() in lost]
    pipeline.procs = [p for p in pipeline.procs if p not in simulate] + [_spawn_one(pipeline, "simulate")]

    other = next(sid for sid in sessions if sid != lost_sid)
    pipeline.wait_for(lambda: store.is_committed(other, START_TURN, "end"), timeout_s=60, what="the other lane")
    assert not store.is_committed(lost_sid, 1, "simulate")  # stalled

    rc, out, _ = _cli(capsys, "sweep", "--once", "--stalled-after", "3600")
    assert rc == 0 and "no stalled lanes" in out  # not stalled long enough

    env = {**os.environ, "REDIS_URL": pipeline.url, "PYTHONUNBUFFERED": "1"}
    sweeper = subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "campaign", "sweep", "--stalled-after", "2", "--interval", "0.5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _check_exactly_once(pipeline, capsys, cid, plan.total_sessions)
    finally:
        sweeper.send_signal(signal.SIGINT)
        try:
            output, _ = sweeper.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            sweeper.kill()
            output, _ = sweeper.communicate()
    assert f"{lost_sid}  simulate@turn1" in output, output


def check_transcripts(store, records: list[dict]) -> None:
    """Every exported session's transcript has each turn once, user then assistant, and
    its record counts the assistant's replies."""
    for record in records:
        messages = [(m.role, m.turn) for m in store.messages(record["session_id"])]
        assert messages, record["session_id"]
        last_turn = messages[-1][1]
        expected = [(role, t) for t in range(1, last_turn + 1) for role in ("user", "assistant")]
        if messages[-1][0] == "user":  # the user's last word ended the session
            expected = expected[:-1]
        assert messages == expected, (record["session_id"], messages)
        assert record["turns"] == sum(role == "assistant" for role, _ in messages)


@pytest.mark.integration
@pytest.mark.slow
def test_republishing_queued_events_is_harmless_and_finished_is_left_alone(pipeline, engine, capsys):
    """Resume while every lane's event is still queued or running publishes duplicates;
    commits are idempotent and a duplicate starts no second chain that has effects."""
    store = pipeline.store()
    app = pipeline.app()
    from workers.publish import publish

    spec = CampaignSpec(name="dupes", methods=["vanilla", "rag_vector"], profiles=2, sessions=2, max_turns=3, datasets=["mmlu"], seed=8)
    plan = launch(app, engine, store, spec)
    cid = plan.campaign_id
    first = resume_campaign(engine, store, cid, lambda e: publish(app, e))
    assert len(first.events) == 4  # every lane's simulate@1, a second time
    pipeline.wait_for(lambda: sum(progress(store, cid)) >= 2, timeout_s=60, what="some sessions")
    resume_campaign(engine, store, cid, lambda e: publish(app, e))  # mid-way, again
    _check_exactly_once(pipeline, capsys, cid, plan.total_sessions)

    rc, out, _ = _cli(capsys, "resume", cid)
    assert rc == 0 and out.strip() == f"campaign {cid} already finished (8 sessions): nothing to resume", out
    time.sleep(0.3)
    assert pipeline.queues_empty()

    rc, _, err = _cli(capsys, "resume", "nope-000")
    assert rc == 2 and "nope-000" in err
    # Planned and registered but never started: cancelled before any session could finish.
    cancelled, profiles = plan_campaign(CampaignSpec(
        name="gone", methods=["vanilla"], profiles=1, sessions=3, max_turns=2, datasets=["mmlu"], seed=1
    ))
    save_plan(store, cancelled, profiles)
    register_campaign(store, cancelled.campaign_id)
    rc, _, _ = _cli(capsys, "cancel", cancelled.campaign_id)
    assert rc == 0
    rc, _, err = _cli(capsys, "resume", cancelled.campaign_id)
    assert rc == 2 and "cancelled" in err, err
