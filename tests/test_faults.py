"""Faults on a real pipeline: each test runs a real campaign, injects one kind of fault
mid-way, lets the pipeline recover, then checks that nothing was lost or done twice.

- kill -9 of each stage's worker in turn (each restarted after), with the sweeper running;
- a Redis crash (SIGKILL) and a clean restart, both from its append-only file;
- every worker's Redis connections killed (CLIENT KILL), three times: they must consume again;
- an agent LLM server (the campaign's ``[backends.agent]``) that times out, answers 500s,
  answers junk, or disappears for 15 s (the issue's "a minute", shortened), then heals.

"Nothing lost or done twice" is checked three ways after every fault:

1. every planned session has exactly one record, all "done" (export, the finished log and
   the counters agree), and every transcript is turns 1..n, user then assistant, each once;
2. the messages a dead worker took and never acked (kombu keeps them in ``unacked`` for
   the visibility timeout, an hour) are redelivered, as they would be an hour later, and
   change nothing;
3. the campaign's effects equal those of a reference run of the same spec on the unfaulted
   pipeline (sessions are reproducible by seed): every record, transcript, card and user
   vector (with its count of REINFORCE updates), and the sum of the records' applied
   updates equals the vectors' update counts. A stage that ran its effects twice or lost
   one would show here (a card merge applied twice in the store's version, an update
   applied twice in the vector and its count).

Workers and Redis are the pipeline harness's own (a dedicated embedded Redis), because
these tests kill processes and connections. ``VARS_FAULT_LOG=path`` appends one JSON line
per fault (what was done, what the pipeline did); ``perf/fault_soak.py`` repeats the tests
with it and tabulates.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest
import redis

from queues.topology import queue_for
from scheduler.campaigns import launch
from scheduler.embedded_redis import process_alive
from scheduler.spec import Backends, CampaignSpec
from tests.pipeline_harness import Pipeline
from tests.test_campaign_resume import _cli, _kill9, _spawn_one, check_transcripts
from vars_core.campaign import finished_session_ids, lanes, load_plan, progress
from vars_core.engine import Engine
from vars_core.runner import lane_user_id, session_id_for
from vars_core.store import StateStore
from vars_core.types import STAGES
from workers.tasks import deadletter_key, hops_key

pytest_plugins = ["tests.llm_servers"]  # the faulty OpenAI-compatible server
pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]

# Sized so a campaign outlasts the faults on 2 cores (about 5 s unfaulted): vanilla lanes
# use simulate and generate only, rag_vector lanes all six stages, and lanes carry memory
# and vectors from session to session.
SPEC = CampaignSpec(
    name="faults", methods=["vanilla", "rag_vector"], profiles=4, sessions=8, max_turns=4,
    datasets=["mmlu"], seed=21,
)
# The sweeper in these tests: lanes with no progress for this long get their next event
# republished (production: `vars scheduler --stalled-after`, default 600 s).
STALLED_AFTER_S = 3.0
OUTAGE_S = 15.0  # how long the agent server is gone in the "down" case
FAULT_WINDOW_S = 4.0  # how long the timeout and junk faults last


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pipe = Pipeline(tmp_path_factory.mktemp("faults-home")).start()
    yield pipe
    pipe.stop()


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def reference(pipeline, engine):
    """SPEC on the unfaulted pipeline: what every faulted run of it must reproduce."""
    return _run_clean(pipeline, engine, SPEC)


class Sweeper:
    """`vars campaign sweep` in a subprocess, as `vars scheduler` runs it in production."""

    def __init__(self, pipe: Pipeline) -> None:
        env = {**os.environ, "REDIS_URL": pipe.url, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli", "campaign", "sweep",
             "--stalled-after", str(STALLED_AFTER_S), "--interval", "0.5"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output: str | None = None

    def stop(self) -> str:
        """Stop it (once) and return what it printed."""
        if self.output is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                self.output, _ = self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.output, _ = self.proc.communicate()
        return self.output or ""

    def republished(self, campaign_id: str) -> int:
        """Events the sweeper republished for this campaign's sessions."""
        return sum(
            1 for line in self.stop().splitlines() if line.startswith("  ") and campaign_id in line
        )


@pytest.fixture
def sweeper(pipeline):
    sweep = Sweeper(pipeline)
    yield sweep
    sweep.stop()


# --- helpers ----------------------------------------------------------------------------


def _log(fault: str, **fields) -> None:
    path = os.environ.get("VARS_FAULT_LOG")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"fault": fault, **fields}) + "\n")


def _quietly(predicate):
    """A wait predicate that reads False while Redis is away (a restart in progress)."""

    def check() -> bool:
        try:
            return bool(predicate())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    return check


def _finished(store: StateStore, plan) -> bool:
    return sum(progress(store, plan.campaign_id)) >= plan.total_sessions


def _snapshot(store: StateStore, campaign_id: str) -> dict:
    """Everything a campaign's sessions produced, without its ids: per lane, each session's
    record and transcript, the user's cards, store version, vector and traces."""
    plan = load_plan(store, campaign_id)
    out = {}
    for profile_id, method in lanes(plan):
        user = lane_user_id(campaign_id, method, profile_id)
        scope = store.user(user)
        sessions = []
        for index in range(1, plan.sessions + 1):
            sid = session_id_for(user, index)
            record = store.session_record(sid)
            fields = None
            if record is not None:
                fields = {
                    k: v for k, v in msgspec.to_builtins(record).items()
                    if k not in ("session_id", "campaign_id", "user_id")
                }
            messages = [(m.role, m.turn, m.content) for m in store.messages(sid)]
            sessions.append({"record": fields, "messages": messages})
        vector = scope.stored_vector()
        cards = sorted(
            (c.condition, c.action, c.note, round(c.confidence, 6), c.created_at, c.superseded_by is not None)
            for c in scope.cards(include_superseded=True).values()
        )
        out[f"{method}/{profile_id}"] = {
            "sessions": sessions,
            "cards": cards,
            "version": scope.version(),
            "traces": len(scope.trace_keys()),
            "updates": None if vector is None else vector.updates,
            "vector": None if vector is None else [
                [round(x, 6) for x in vector.z_long], [round(x, 6) for x in vector.z_short],
                round(vector.baseline, 6),
            ],
        }
    return out


def _check_effects(store: StateStore, campaign_id: str, reference: dict) -> None:
    """The campaign's effects are the reference run's, and each applied update was applied
    to its user's vector once."""
    got = _snapshot(store, campaign_id)
    assert got.keys() == reference.keys()
    for lane, data in got.items():
        applied = sum(s["record"]["updates_applied"] for s in data["sessions"])
        assert applied == (data["updates"] or 0), (lane, applied, data["updates"])
        for index, (mine, theirs) in enumerate(zip(data["sessions"], reference[lane]["sessions"], strict=True)):
            assert mine == theirs, f"{lane} session {index + 1} differs from the reference run"
        for key in ("cards", "version", "traces", "updates", "vector"):
            assert data[key] == reference[lane][key], f"{lane}: {key} differs from the reference run"


def _run_clean(pipe: Pipeline, engine: Engine, spec: CampaignSpec) -> dict:
    store = pipe.store()
    plan = launch(pipe.app(), engine, store, spec)
    pipe.wait_for(lambda: _finished(store, plan), timeout_s=180, what="the reference campaign")
    assert progress(store, plan.campaign_id) == (plan.total_sessions, 0)
    return _snapshot(store, plan.campaign_id)


def _redeliver_unacked(pipe: Pipeline) -> int:
    """What kombu does once the visibility timeout (an hour) has passed: every message a
    worker took and never acknowledged goes back to its queue. Returns how many."""
    client = pipe.client()
    tags = client.hkeys("unacked")
    if tags:
        with pipe.app().connection_for_write() as conn:
            qos = conn.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag)
    return len(tags)


def _planned(plan) -> list[str]:
    return [
        session_id_for(lane_user_id(plan.campaign_id, method, profile_id), index)
        for profile_id, method in lanes(plan) for index in range(1, plan.sessions + 1)
    ]


def _check_exactly_once(pipe: Pipeline, capsys, plan, retried: Counter) -> None:
    """Every planned session finished once (export, counters; the finished log holds one
    end per run, so a session `retry` ran again has one more), and every transcript is
    turns 1..n, user then assistant, nothing repeated or missing."""
    store, cid, total = pipe.store(), plan.campaign_id, plan.total_sessions
    pipe.wait_for(pipe.queues_empty, timeout_s=60, what="the queues to drain")
    time.sleep(0.5)
    assert progress(store, cid) == (total, 0)
    planned = _planned(plan)
    assert Counter(finished_session_ids(store, cid)) == Counter({sid: 1 + retried[sid] for sid in planned})
    rc, out, _ = _cli(capsys, "export", cid)
    assert rc == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["session_id"] for r in records) == sorted(planned)
    assert all(r["status"] == "done" for r in records)
    check_transcripts(store, records)


def _settle_and_check(pipe: Pipeline, capsys, plan, reference: dict, retried: Counter | None = None) -> int:
    """Redeliver what was left unacked, wait for the queues to drain, and check exactly
    once (records, transcripts) and the effects against the reference. Returns how many
    messages were redelivered."""
    store = pipe.store()
    pipe.wait_for(_quietly(lambda: _finished(store, plan)), timeout_s=180, what="every session")
    redelivered = _redeliver_unacked(pipe)
    _check_exactly_once(pipe, capsys, plan, retried or Counter())
    _check_effects(store, plan.campaign_id, reference)
    return redelivered


def _stage_proc(pipe: Pipeline, stage: str) -> subprocess.Popen:
    (proc,) = [p for p in pipe.procs if p.args[p.args.index("--stage") + 1] == stage]
    return proc


def _ready_count(pipe: Pipeline, stage: str) -> int:
    """How many times a worker of ``stage`` said it was ready to consume (Celery's log)."""
    log = pipe.home / "logs" / f"worker-{stage}.log"
    return len(re.findall(rf"{stage}@\S+ ready\.", log.read_text(errors="replace"))) if log.exists() else 0


def _held(client: redis.Redis, stage: str) -> int:
    """Messages of ``stage``'s campaign queue that a worker has taken and not acked."""
    queue = queue_for(stage)
    return sum(1 for raw in client.hvals("unacked") if json.loads(raw)[2] == queue)


def _hops_by_stage(pipe: Pipeline, store: StateStore, plan) -> Counter:
    """How many stage tasks ran, per stage, over the campaign's sessions (the audit trail)."""
    client = pipe.client()
    counts: Counter = Counter()
    for profile_id, method in lanes(plan):
        user = lane_user_id(plan.campaign_id, method, profile_id)
        for index in range(1, plan.sessions + 1):
            for hop in client.lrange(hops_key(store, session_id_for(user, index)), 0, -1):
                counts[hop.decode().split("|")[1]] += 1
    return counts


# --- kill -9 of each stage's worker --------------------------------------------------------


def test_kill9_each_stage_worker_mid_campaign(pipeline, engine, reference, sweeper, capsys):
    """Each stage's worker in turn is killed with SIGKILL, preferably while it holds a
    message, and restarted. What it held stays unacked (for the visibility timeout); the
    sweeper republishes the stalled lanes' next events."""
    store, client = pipeline.store(), pipeline.client()
    plan = launch(pipeline.app(), engine, store, SPEC)
    pipeline.wait_for(lambda: sum(progress(store, plan.campaign_id)) >= 4, timeout_s=120, what="the first sessions")
    kills = []
    for stage in STAGES:
        deadline = time.monotonic() + 8
        while not _held(client, stage) and time.monotonic() < deadline:
            time.sleep(0.002)
        worker = _stage_proc(pipeline, stage)
        _kill9([worker])
        held = _held(client, stage)  # what it took with it
        done = sum(progress(store, plan.campaign_id))
        assert done < plan.total_sessions, "the campaign ended before every kill: make SPEC larger"
        ready = _ready_count(pipeline, stage)
        pipeline.procs = [p for p in pipeline.procs if p is not worker] + [_spawn_one(pipeline, stage)]
        pipeline.wait_for(lambda s=stage, r=ready: _ready_count(pipeline, s) > r, timeout_s=60, what=f"a new {stage} worker")
        kills.append({"stage": stage, "held": held, "sessions_done": done})
    pipeline.wait_for(lambda: _finished(store, plan), timeout_s=180, what="every session")
    sweeper.stop()
    republished = sweeper.republished(plan.campaign_id)
    redelivered = _settle_and_check(pipeline, capsys, plan, reference)
    _log(
        "kill9", sessions=plan.total_sessions, kills=kills,
        lost_in_flight=sum(k["held"] for k in kills), republished=republished, redelivered=redelivered,
    )
    # At least one kill took a message with it, and the lanes it stalled went on.
    assert sum(k["held"] for k in kills) >= 1, kills
    assert republished >= 1, sweeper.output


# --- Redis restarts from its append-only file ----------------------------------------------


def test_redis_crash_and_restart_from_aof(pipeline, engine, reference, sweeper, capsys):
    """Redis is killed with SIGKILL (a crash) and, later, shut down cleanly; each time it
    stays away for 2 s and comes back from its AOF (appendfsync everysec). Workers, the
    sweeper and the test reconnect."""
    store, client = pipeline.store(), pipeline.client()
    config = {**client.config_get("appendonly"), **client.config_get("appendfsync")}
    assert config == {"appendonly": "yes", "appendfsync": "everysec"}
    plan = launch(pipeline.app(), engine, store, SPEC)
    restarts = []
    for how, at in (("SIGKILL", 0.25), ("SIGTERM", 0.6)):
        pipeline.wait_for(
            lambda a=at: sum(progress(store, plan.campaign_id)) >= a * plan.total_sessions,
            timeout_s=120, what="progress before the restart",
        )
        before = progress(store, plan.campaign_id)
        held = client.hlen("unacked")
        pid = pipeline.redis.pid()
        assert pid is not None
        if how == "SIGKILL":
            os.kill(pid, signal.SIGKILL)
            while process_alive(pid):
                time.sleep(0.01)
        else:
            pipeline.redis.stop()
        time.sleep(2.0)
        pipeline.redis.start()
        after = progress(store, plan.campaign_id)
        # The AOF kept every write Redis had answered: nothing went backwards.
        assert sum(after) >= sum(before), (before, after)
        restarts.append({"how": how, "sessions_done": sum(before), "held": held})
    pipeline.wait_for(_quietly(lambda: _finished(store, plan)), timeout_s=180, what="every session")
    sweeper.stop()
    republished = sweeper.republished(plan.campaign_id)
    redelivered = _settle_and_check(pipeline, capsys, plan, reference)
    _log("redis_restart", sessions=plan.total_sessions, restarts=restarts, republished=republished, redelivered=redelivered)


# --- workers lose their Redis connections ------------------------------------------------


def test_workers_consume_again_after_losing_redis(pipeline, engine, reference, sweeper, capsys):
    """Three times mid-campaign every client connection but the test's own is killed
    (CLIENT KILL): every worker's broker and store connections, and the sweeper's. Each
    stage's worker must reconnect and consume again: tasks of every stage run after the
    last kill."""
    store, client = pipeline.store(), pipeline.client()
    plan = launch(pipeline.app(), engine, store, SPEC)
    kills = []
    for at in (0.15, 0.4, 0.65):
        pipeline.wait_for(
            lambda a=at: sum(progress(store, plan.campaign_id)) >= a * plan.total_sessions,
            timeout_s=120, what="progress before the disconnect",
        )
        held = client.hlen("unacked")
        dropped = client.client_kill_filter(_type="normal", skipme=True)
        dropped += client.client_kill_filter(_type="pubsub", skipme=True)
        kills.append({"dropped": dropped, "held": held, "sessions_done": sum(progress(store, plan.campaign_id))})
    ran_before = _hops_by_stage(pipeline, store, plan)
    pipeline.wait_for(lambda: _finished(store, plan), timeout_s=180, what="every session")
    ran_after = _hops_by_stage(pipeline, store, plan)
    sweeper.stop()
    republished = sweeper.republished(plan.campaign_id)
    redelivered = _settle_and_check(pipeline, capsys, plan, reference)
    _log("redis_disconnect", sessions=plan.total_sessions, kills=kills, republished=republished, redelivered=redelivered)
    assert all(k["dropped"] >= 6 for k in kills), kills  # at least one connection per worker
    assert kills[-1]["sessions_done"] < plan.total_sessions
    # Every stage's worker consumed again after the last disconnect.
    assert all(ran_after[s] > ran_before[s] for s in STAGES), (ran_before, ran_after)


# --- the agent's LLM server misbehaves -------------------------------------------------------

# One session per lane: a failed session that `vars campaign retry` runs again ends after
# its lane's later sessions (scheduler/failures.py), so with several sessions per lane a
# memory lane's later records would legitimately differ from the reference run.
LLM_SPEC = {
    "name": "agentfaults", "methods": ["vanilla", "rag_vector"], "profiles": 3, "sessions": 1,
    "max_turns": 3, "datasets": ["mmlu"], "seed": 5,
}


def _llm_spec(url: str) -> CampaignSpec:
    agent = {"kind": "openai", "base_url": url, "model": "faulty", "timeout_s": 1.0, "max_retries": 1}
    return CampaignSpec(**LLM_SPEC, backends=Backends(agent=agent))


@pytest.fixture(scope="module")
def llm_reference(pipeline, engine, faulty):
    url, _ = faulty.url()
    return _run_clean(pipeline, engine, _llm_spec(url))


FAULT_REASONS = {
    "timeout": "no reply from",
    "http_500": "HTTP 500",
    "junk": "bad reply from",
    "down": "cannot connect to",
}


@pytest.mark.parametrize("fault", ["timeout", "http_500", "junk", "down"])
def test_agent_server_faults(pipeline, engine, faulty, llm_reference, fault, capsys):
    """The agent server is slow but healthy (0.3 s a reply) until three replies have gone
    out, then misbehaves: hangs past the client's 1 s timeout for 4 s, answers 500 until a
    session has failed, answers junk for 4 s, or disappears (connection refused) for 15 s.
    The LLM client retries (1 retry, backoff), the stage task retries (4, exponential
    backoff with jitter); a session whose retries run out is marked failed with its reason
    and dead-lettered, and `vars campaign retry` completes it once the server is back."""
    store, client = pipeline.store(), pipeline.client()
    FaultyServer = type(faulty)  # noqa: N806 (tests/llm_servers.py, loaded as a plugin)
    server = faulty
    if fault == "down":  # a server of its own, to take away and bring back
        server = FaultyServer()
        server.thread.start()
    url, behaviour = server.url(delay_s=0.3)
    deadletters = client.llen(deadletter_key(store))
    plan = launch(pipeline.app(), engine, store, _llm_spec(url))
    cid = plan.campaign_id
    pipeline.wait_for(lambda: behaviour.hits >= 3, timeout_s=60, what="the first agent replies")
    hits = behaviour.hits
    pending = plan.total_sessions - sum(progress(store, cid))
    started = time.monotonic()
    if fault == "timeout":
        behaviour.delay_s = 3.0
        time.sleep(FAULT_WINDOW_S)
        behaviour.delay_s = 0.3
    elif fault == "junk":
        behaviour.junk_times = -1
        time.sleep(FAULT_WINDOW_S)
        behaviour.junk_times = 0
    elif fault == "http_500":
        behaviour.fail_times = -1
        pipeline.wait_for(lambda: progress(store, cid)[1] >= 1, timeout_s=120, what="a failed session")
        behaviour.fail_times = 0
    else:
        server.stop()
        time.sleep(OUTAGE_S)
        back = FaultyServer(port=server.port, behaviours=server.behaviours)
        back.thread.start()
    fault_s = time.monotonic() - started
    in_fault = behaviour.hits - hits
    pipeline.wait_for(lambda: _finished(store, plan), timeout_s=120, what="every session to end")
    done, failed = progress(store, cid)

    rc, out, _ = _cli(capsys, "failures", cid, "--json")
    assert rc == 0
    failures = json.loads(out)
    assert len(failures) == failed  # nothing failed silently
    assert all(FAULT_REASONS[fault] in f["reason"] and f["stage"] == "generate" for f in failures), failures
    dead = [json.loads(e) for e in client.lrange(deadletter_key(store), deadletters, -1)]
    failed_ids = {f["session_id"] for f in failures}
    assert failed_ids <= {e["event"].get("session_id") for e in dead}  # and each was dead-lettered
    if fault == "http_500":
        assert failed >= 1
    if failed:
        rc, out, _ = _cli(capsys, "retry", cid)
        assert rc == 0 and f"retrying {failed} failed session(s)" in out, out
    redelivered = _settle_and_check(pipeline, capsys, plan, llm_reference, Counter(failed_ids))
    rc, out, _ = _cli(capsys, "failures", cid)
    assert rc == 0 and "no failed sessions" in out
    if fault == "down":
        back.stop()
    _log(
        f"agent_{fault}", sessions=plan.total_sessions, pending_at_fault=pending,
        fault_s=round(fault_s, 1), requests_during_fault=in_fault, requests=behaviour.hits,
        failed_then_retried=failed, redelivered=redelivered,
    )
    assert pending >= 1  # the fault met sessions still running
    if fault != "down":  # (a server that is gone sees no requests)
        assert in_fault >= 1

