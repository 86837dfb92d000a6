"""Worker metrics (counted on the commit that was made) and the scheduler's collector,
on the in-memory store: no Redis, no Celery worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from celery.signals import task_postrun, task_prerun, task_retry
from prometheus_client import REGISTRY, CollectorRegistry

from scheduler.campaigns import plan_campaign
from scheduler.daemon import PRIORITY_SEP, RedisCollector, deadletter_key, queue_labels
from scheduler.spec import parse_spec
from vars_core.campaign import first_sessions, register_campaign, save_plan
from vars_core.engine import Engine
from vars_core.llm.openai import OpenAIChat
from vars_core.problems import load_problems
from vars_core.runner import new_session, register_profile, run_session
from vars_core.scripted.profiles import generate_profiles
from vars_core.stages.context import StageContext
from vars_core.stages.lifecycle import START_TURN, end_session
from vars_core.store.backend import MemoryBackend, Op
from vars_core.tokens import count_tokens
from vars_core.types import JudgeResult, Message, SimulatorTurn
from workers import metrics
from workers.metrics import CountingStore

ROOT = Path(__file__).resolve().parent.parent


class Samples:
    """Deltas of the default registry's samples since construction."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.before = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples}

    def delta(self, name: str, **labels: str) -> float:
        now = self.registry.get_sample_value(name, labels) or 0.0
        return now - self.before.get((name, tuple(sorted(labels.items()))), 0.0)


def test_labels_are_bounded(monkeypatch):
    assert [metrics.session_index_label(i) for i in (0, 1, 20, 21, 500)] == ["0", "1", "20", "21+", "21+"]
    monkeypatch.setattr(metrics, "_reasons", set())
    monkeypatch.setattr(metrics, "MAX_REASONS", 2)
    assert metrics.reason_label(ValueError("free text never becomes a label")) == "ValueError"
    assert metrics.reason_label("malformed_event") == "malformed_event"
    assert metrics.reason_label(KeyError("x")) == "other"  # past the cap
    assert metrics.reason_label(ValueError("again")) == "ValueError"
    assert metrics.stage_of("vars.retrieve") == "retrieve" and metrics.stage_of("celery.ping") is None
    assert queue_labels("vars.generate.live") == ("generate", "live")
    assert queue_labels("vars.generate") == ("generate", "campaign")


def test_a_session_is_counted_once_however_often_its_steps_run():
    store, engine = CountingStore(), Engine()
    campaign = f"mt{uuid.uuid4().hex[:8]}"
    profile = generate_profiles(1, seed=0)[0]
    register_profile(store, campaign, profile)
    state = new_session(campaign, profile, "vanilla", 1, load_problems(["mmlu"]), 0, 4)
    seen = Samples()

    record = run_session(engine, store, state)
    # Duplicate deliveries: the whole session again, each step again, the end again.
    run_session(engine, store, state)
    for turn in range(1, record.turns + 1):
        for stage in ("simulate", "generate"):
            assert not store.commit_stage(state.session_id, turn, stage, [])
    end_session(StageContext(engine, store, store.session(state.session_id), START_TURN))

    outcome = metrics.outcome_label(record)
    assert seen.delta("vars_sessions_completed_total", method="vanilla", campaign=campaign, outcome=outcome) == 1
    assert seen.delta("vars_sessions_by_index_total", method="vanilla", session_index="1") == 1
    assert seen.delta("vars_enforcements_total", method="vanilla", session_index="1") == record.enforcements
    assert seen.delta("vars_turns_total", method="vanilla", lane="campaign") == record.turns >= 1
    assert seen.delta("vars_llm_tokens_total", role="agent", kind="completion") == record.agent_tokens > 0
    assert seen.delta("vars_llm_tokens_total", role="user", kind="completion") == record.user_tokens > 0


def test_rewards_count_the_judge_commit_that_was_made():
    store, seen = CountingStore(), Samples()
    sid = f"s{uuid.uuid4().hex[:8]}"
    result = JudgeResult(label="neg_correction", confidence=0.9, reward=-0.8, apply=True, g=0.9)
    ops = [store.stage_output_op(sid, 2, "judge", result)]
    assert store.commit_stage(sid, 2, "judge", ops)
    assert not store.commit_stage(sid, 2, "judge", ops)  # a duplicate delivery
    assert seen.delta("vars_reward_total", label="neg_correction") == 1


def test_a_failing_count_never_fails_the_commit(monkeypatch):
    store = CountingStore()
    sid = f"s{uuid.uuid4().hex[:8]}"

    def broken(*_):
        raise RuntimeError("metrics broke")

    monkeypatch.setattr(metrics, "count_commit", broken)
    sim = SimulatorTurn(message="hello", terminate=False)
    assert store.commit_stage(sid, 1, "simulate", [store.stage_output_op(sid, 1, "simulate", sim)])
    assert store.is_committed(sid, 1, "simulate")


def test_llm_calls_count_tokens_by_role_except_the_agent():
    seen = Samples()
    messages = [Message("user", "What is two plus two?")]
    for role in ("judge", "agent", "some-client"):
        client = OpenAIChat(base_url="http://127.0.0.1:9", model="m", name=role)
        try:
            client._account(messages, "four", None)  # what every completed call does
        finally:
            client.close()
    prompt = count_tokens("What is two plus two?")
    assert seen.delta("vars_llm_tokens_total", role="judge", kind="prompt") == prompt
    assert seen.delta("vars_llm_tokens_total", role="judge", kind="completion") == count_tokens("four")
    # The agent's tokens come from its committed replies; unknown names are not labels.
    assert seen.delta("vars_llm_tokens_total", role="agent", kind="prompt") == 0
    assert seen.delta("vars_llm_tokens_total", role="some-client", kind="prompt") == 0


def test_signals_time_stages_and_count_retries_and_failures():
    class FakeTask:
        name = "vars.retrieve"

    class OtherTask:
        name = "celery.backend_cleanup"

    seen = Samples()
    for task in (FakeTask(), OtherTask()):
        task_prerun.send(sender=task, task_id=f"id-{task.name}", task=task, args=(), kwargs={})
        task_postrun.send(sender=task, task_id=f"id-{task.name}", task=task, args=(), kwargs={}, retval=None, state="SUCCESS")
    task_retry.send(sender=FakeTask(), request=None, reason=TimeoutError("slow"), einfo=None)
    metrics.stage_failed("retrieve", ConnectionError("gone"))
    assert seen.delta("vars_stage_seconds_count", stage="retrieve") == 1
    assert seen.delta("vars_stage_seconds_count", stage="backend_cleanup") == 0
    assert seen.delta("vars_stage_retries_total", stage="retrieve", reason="TimeoutError") == 1
    assert seen.delta("vars_stage_failures_total", stage="retrieve", reason="ConnectionError") == 1


SPEC = """
name = "collect"
methods = ["vanilla", "rag"]
profiles = 2
sessions = 2
max_turns = 3
datasets = ["mmlu"]
seed = 3
"""


def test_the_collector_reads_queues_dead_letters_and_campaigns():
    store = CountingStore(MemoryBackend())
    plan, profiles = plan_campaign(parse_spec(SPEC))
    save_plan(store, plan, profiles)
    register_campaign(store, plan.campaign_id)
    sessions = first_sessions(Engine(), store, plan)
    store.backend.apply(
        [Op("rpush", "vars.generate", value=b"m") for _ in range(3)]
        + [Op("rpush", f"vars.generate{PRIORITY_SEP}3", value=b"m"), Op("rpush", deadletter_key(store), value=b"{}")]
    )
    now = [1000.0]
    registry = CollectorRegistry()
    registry.register(RedisCollector(store, retention_s=60, clock=lambda: now[0]))
    cid = plan.campaign_id

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("vars_redis_up") == 1
    assert value("vars_queue_depth", queue="vars.generate", stage="generate", lane="campaign") == 4
    assert value("vars_queue_depth", queue="vars.generate.live", stage="generate", lane="live") == 0
    assert len([s for m in registry.collect() for s in m.samples if s.name == "vars_queue_depth"]) == 12
    assert value("vars_deadletter_length") == 1 and value("vars_unacked_messages") == 0
    assert value("vars_campaign_sessions", campaign=cid, status="total") == 8
    assert value("vars_campaign_state", campaign=cid, state="running") == 1
    assert value("vars_inflight_lanes", campaign=cid) == 4

    # One lane's first session ends: 3 in flight; its second starts: 4 again.
    first = sessions[0]
    store.backend.apply([Op("set", store.keys.marker(first.session_id, START_TURN, "end"), value=b"1")])
    assert value("vars_inflight_lanes", campaign=cid) == 3
    second = first.session_id[:-1] + "2"
    store.backend.apply([Op("set", store.keys.marker(second, START_TURN, "start"), value=b"1")])
    assert value("vars_inflight_lanes", campaign=cid) == 4

    # Finished: nothing in flight; dropped once its end is older than the retention.
    store.backend.apply(
        [Op("set", store.keys.campaign(cid, "done"), value=b"8"), Op("set", store.keys.campaign(cid, "finished_at"), value=b"990")]
    )
    assert value("vars_campaign_state", campaign=cid, state="finished") == 1
    assert value("vars_inflight_lanes", campaign=cid) == 0
    now[0] = 2000.0
    assert value("vars_campaign_sessions", campaign=cid, status="total") is None


def test_the_collector_says_when_redis_cannot_be_read():
    class Down(MemoryBackend):
        def llen(self, key: str) -> int:
            raise ConnectionError("redis is restarting")

    registry = CollectorRegistry()
    registry.register(RedisCollector(CountingStore(Down())))
    assert registry.get_sample_value("vars_redis_up") == 0
    assert registry.get_sample_value("vars_queue_depth", {"queue": "vars.simulate", "stage": "simulate", "lane": "campaign"}) is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_worker_serves_what_its_forked_children_counted(tmp_path):
    """VARS_METRICS_PORT: a private multiprocess directory, one server in the parent that
    adds up every process's files, and the directory removed at exit."""
    port = _free_port()
    script = textwrap.dedent(
        f"""
        import os, urllib.request
        from workers import metrics
        print("DIR", os.environ["PROMETHEUS_MULTIPROC_DIR"])
        child = os.fork()
        if child == 0:
            metrics.stage_failed("simulate", "from_child")
            os._exit(0)
        os.waitpid(child, 0)
        metrics.stage_failed("simulate", "from_child")
        assert metrics.serve() == {port} and metrics.serve() is None
        print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode())
        """
    )
    env = {**os.environ, "VARS_METRICS_PORT": str(port), "VARS_METRICS_ADDR": "127.0.0.1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'vars_stage_failures_total{reason="from_child",stage="simulate"} 2.0' in done.stdout
    private = Path(done.stdout.split("DIR ", 1)[1].split()[0])
    assert private.parent == tmp_path and not private.exists()


@pytest.mark.parametrize("argv", [["scheduler", "--help"]])
def test_the_scheduler_subcommand_is_registered(argv, capsys):
    from scheduler.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 0
    assert "--sweep-interval" in capsys.readouterr().out
