"""Campaign options: `parallelism` (a bound on lanes in flight), `reward` and
`[backends.<role>]` pins, `--set` overrides; on real workers and Redis."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from scheduler.spec import SpecError, load_spec, parse_spec
from vars_core.campaign_settings import CampaignSettingsError, campaign_config
from vars_core.config import EmbedderConfig, EngineConfig, LLMConfig
from vars_core.engine import Engine

pytest_plugins = ["tests.llm_servers"]  # the faulty OpenAI-compatible server

SPEC = """
name = "options"
methods = ["vanilla", "rag_vector"]
profiles = 4
sessions = 2
max_turns = 3
datasets = ["mmlu"]
seed = 3
parallelism = 2
"""


def test_new_fields_parse_and_set_overrides():
    spec = parse_spec(
        SPEC + '\nreward = "keyword"\n[backends.agent]\nmodel = "m"\n',
        overrides=["sessions=5", "parallelism=50", "backends.agent.base_url=http://h:8000/v1", "reward=llm"],
    )
    assert (spec.sessions, spec.parallelism, spec.reward) == (5, 50, "llm")
    assert spec.backends.tables() == {"agent": {"model": "m", "base_url": "http://h:8000/v1"}}
    assert parse_spec(SPEC.replace("parallelism = 2\n", "")).parallelism is None


@pytest.mark.parametrize(
    ("text", "overrides", "field"),
    [
        (SPEC.replace("parallelism = 2", "parallelism = 0"), [], "`parallelism`"),
        (SPEC.replace("parallelism = 2", 'parallelism = "x"'), [], "`parallelism`"),
        (SPEC + 'reward = "llama"\n', [], "`reward`"),
        (SPEC + "[backends.planner]\nmodel = 'x'\n", [], "`backends`"),
        (SPEC + "[backends.agent]\nmax_tokens = 'many'\n", [], "`backends.agent.max_tokens`"),
        (SPEC + "[backends.agent]\nbase_ur = 'x'\n", [], "`backends.agent`"),
        (SPEC + "[backends.embedder]\npooling = 'max'\n", [], "`backends.embedder.pooling`"),
        (SPEC, ["sesions=3"], "`sesions`"),
        (SPEC, ["sessions=three"], "`sessions`"),
        (SPEC, ["parallelism=-1"], "`parallelism`"),
        (SPEC, ["backends.judge.temperature=hot"], "`backends.judge.temperature`"),
        (SPEC, ["backends.agent.nope=1"], "`backends.agent`"),
        (SPEC, ["noequals"], "noequals"),
        (SPEC, ["sessions.x=1"], "`sessions`"),
    ],
)
def test_bad_options_are_named(text, overrides, field):
    with pytest.raises(SpecError) as info:
        parse_spec(text, overrides=overrides)
    assert field in str(info.value)


def test_cli_set_errors_before_enqueueing(tmp_path):
    from scheduler.cli import main

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    assert load_spec(spec, ["max_turns=4"]).max_turns == 4
    assert main(["campaign", "run", str(spec), "--detach", "--set", "parallelism=zero"]) == 2


def test_campaign_config_applies_the_keys_the_spec_wrote():
    base = EngineConfig(agent=LLMConfig(kind="openai", base_url="http://worker:8000/v1", model="w", max_tokens=99))
    assert campaign_config(base, None, {}) is base
    config = campaign_config(base, "keyword", {"agent": {"base_url": "http://campaign:8000/v1"}})
    # the written key replaces the worker's; the others stay the worker's
    assert (config.agent.base_url, config.agent.model, config.agent.max_tokens) == ("http://campaign:8000/v1", "w", 99)
    config = campaign_config(base, None, {"simulator": {"kind": "openai", "base_url": "http://sim/v1"}})
    assert (config.simulator, config.simulator_llm.base_url) == ("llm", "http://sim/v1")
    config = campaign_config(base, None, {"extractor": {"kind": "scripted"}})
    assert config.extractor == "rules"
    config = campaign_config(base, "llm", {"judge": {"kind": "openai", "base_url": "http://judge/v1"}})
    assert (config.judge, config.judge_llm.base_url) == ("llm", "http://judge/v1")


@pytest.mark.parametrize(
    "reward, backends, field",
    [
        ("llm", {}, "`reward`"),  # an LLM judge with no OpenAI-compatible backend anywhere
        (None, {"agent": {"kind": "openai"}}, "`backends.agent`"),  # no base_url
        (None, {"embedder": {"pooling": "max"}}, "`backends.embedder`"),
    ],
)
def test_campaign_settings_that_cannot_run_name_the_field(reward, backends, field):
    with pytest.raises(CampaignSettingsError, match=field):
        campaign_config(EngineConfig(), reward, backends)


def test_a_derived_engine_shares_in_process_models_with_the_same_settings():
    base = Engine(EngineConfig())
    same = base.derive(EngineConfig())
    assert same is base
    agent_only = base.derive(EngineConfig(agent=LLMConfig(kind="openai", base_url="http://a/v1")))
    assert agent_only is not base and agent_only.index_cache is base.index_cache
    assert agent_only.embedder is base.embedder and agent_only.projection is base.projection
    assert agent_only.problem_bank is base.problem_bank
    other_embedder = base.derive(EngineConfig(embedder=EmbedderConfig(kind="openai", base_url="http://e/v1")))
    assert "embedder" not in other_embedder._borrowed and "projection" not in other_embedder._borrowed


def test_launch_starts_parallelism_lanes_and_claims_are_idempotent(redis_url, namespace):
    from scheduler.campaigns import plan_campaign
    from scheduler.resume import resume_campaign
    from vars_core.campaign import (
        claim_next_lane,
        claimed_lanes,
        completion,
        first_sessions,
        lanes,
        save_plan,
    )
    from vars_core.engine import Engine
    from vars_core.runner import lane_user_id
    from vars_core.store import StateStore
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend

    store = StateStore(RedisBackend(connect(redis_url)), namespace=namespace)
    plan, profiles = plan_campaign(parse_spec(SPEC))
    save_plan(store, plan, profiles)
    engine = Engine(EngineConfig())
    started = first_sessions(engine, store, plan)
    order = lanes(plan)
    assert [(s.profile_id, s.method) for s in started] == order[:2] and claimed_lanes(store, plan) == 2
    done_lane = lane_user_id(plan.campaign_id, order[0][1], order[0][0])
    claim = claim_next_lane(store, plan, completion(done_lane, plan.sessions))
    assert (claim.profile_id, claim.method, claim.first_index) == (*order[2], 1)
    again = claim_next_lane(store, plan, completion(done_lane, plan.sessions))  # a duplicate end
    assert again == claim
    assert claimed_lanes(store, plan) == 3
    events = []
    report = resume_campaign(engine, store, plan.campaign_id, events.append)
    assert sum(r.action == "waiting" for r in report.lanes) == len(order) - 3
    resumed = {tuple(reversed(e.session_id.split(":")[1:3])) for e in events}
    assert resumed == set(order[:3])  # the two launched lanes and the claimed one, no other


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """An embedded Redis of its own (its queues shared with no other test) and a worker
    per stage, with the default (keyword judge) config."""
    from scheduler.embedded_redis import EmbeddedRedis
    from scheduler.local import spawn_workers, stop_processes

    home = Path(tmp_path_factory.mktemp("options-home"))
    embedded = EmbeddedRedis(home=home)
    url = embedded.start()
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k == "VARS_CONFIG" or k.startswith("VARS_JUDGE")}
    procs = spawn_workers(url, home / "logs", concurrency=2)
    os.environ.update(saved)
    try:
        yield url
    finally:
        stop_processes([p.pid for p in procs])
        embedded.stop()


def _launch(url: str, text: str):
    from scheduler.campaigns import launch
    from vars_core.config import load_config
    from vars_core.engine import Engine
    from vars_core.store import StateStore
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend
    from workers.app import make_app

    store = StateStore(RedisBackend(connect(url)))
    plan = launch(make_app(url), Engine(load_config()), store, parse_spec(text))
    return store, plan


@pytest.mark.integration
@pytest.mark.slow
def test_parallelism_bounds_lanes_in_flight(stack):
    from scheduler.status import campaign_records, campaign_status

    store, plan = _launch(stack, SPEC)
    assert plan.parallelism == 2 and plan.total_sessions == 16
    peak, samples = 0, 0
    deadline = time.monotonic() + 240
    while True:
        status = campaign_status(store, plan.campaign_id)
        assert status.running <= 2, status.to_json()
        peak, samples = max(peak, status.running), samples + 1
        if status.state == "finished":
            break
        assert time.monotonic() < deadline, f"not finished: {status.to_json()}"
        time.sleep(0.05)
    assert peak == 2 and samples > 5
    assert (status.done, status.failed) == (16, 0), status.to_json()
    records = campaign_records(store, plan.campaign_id)
    keys = [(r.method, r.profile_id, r.session_index) for r in records]
    assert len(keys) == 16 and len(set(keys)) == 16


@pytest.mark.integration
@pytest.mark.slow
def test_a_reward_no_backend_can_serve_fails_its_sessions_at_once(stack):
    from scheduler.status import campaign_status
    from vars_core.campaign import failure_entries

    text = SPEC.replace('["vanilla", "rag_vector"]', '["rag_vector"]').replace("profiles = 4", "profiles = 2")
    store, plan = _launch(stack, text + 'reward = "llm"\n')
    deadline = time.monotonic() + 120
    while campaign_status(store, plan.campaign_id).state != "finished":
        assert time.monotonic() < deadline, campaign_status(store, plan.campaign_id).to_json()
        time.sleep(0.1)
    status = campaign_status(store, plan.campaign_id)
    failures = failure_entries(store, plan.campaign_id)
    assert (status.failed, status.done) == (4, 0), status.to_json()
    assert len(failures) == status.failed  # one attempt each: no retries
    for failure in failures:
        # the first stage that runs refuses (no stage would be of use), naming the field
        assert failure.stage == "simulate" and "`reward`" in failure.reason and "judge" in failure.reason


def _wait_finished(store, campaign_ids: list[str], timeout_s: float = 180) -> None:
    from scheduler.status import campaign_status

    deadline = time.monotonic() + timeout_s
    for campaign_id in campaign_ids:
        while campaign_status(store, campaign_id).state != "finished":
            assert time.monotonic() < deadline, campaign_status(store, campaign_id).to_json()
            time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.slow
def test_each_campaign_runs_on_its_own_backends_on_the_same_workers(stack, faulty):
    """The workers run with the scripted agent and the keyword judge. One campaign names an
    OpenAI-compatible agent and an LLM reward judge (two real HTTP servers on loopback);
    another, launched at the same time, names nothing. Each gets its own."""
    from scheduler.status import campaign_records
    from vars_core.types import JudgeResult

    agent_url, agent = faulty.url(reply="a reply from the campaign's own agent server")
    judge_url, judge = faulty.url(reply='{"label": "pos_praise", "confidence": 0.9}')
    text = SPEC.replace('["vanilla", "rag_vector"]', '["rag_vector"]').replace("profiles = 4", "profiles = 2")
    pinned_text = text.replace('name = "options"', 'name = "pinned"') + (
        'reward = "llm"\n'
        f'[backends.agent]\nkind = "openai"\nbase_url = "{agent_url}/v1"\nmodel = "m"\nmax_retries = 0\n'
        f'[backends.judge]\nkind = "openai"\nbase_url = "{judge_url}/v1"\nmodel = "m"\nmax_retries = 0\n'
    )
    store, pinned = _launch(stack, pinned_text)
    _, plain = _launch(stack, text.replace('name = "options"', 'name = "plain"'))
    _wait_finished(store, [pinned.campaign_id, plain.campaign_id])

    def replies(campaign_id: str) -> list[str]:
        return [
            m.content
            for r in campaign_records(store, campaign_id)
            for m in store.messages(r.session_id)
            if m.role == "assistant"
        ]

    def labels(campaign_id: str) -> list[str]:
        found = []
        for record in campaign_records(store, campaign_id):
            for turn in range(2, record.turns + 1):
                result = store.stage_output(record.session_id, turn, "judge", JudgeResult)
                if result is not None:
                    found.append(result.label)
        return found

    pinned_replies, plain_replies = replies(pinned.campaign_id), replies(plain.campaign_id)
    assert pinned_replies and set(pinned_replies) == {"a reply from the campaign's own agent server"}
    assert agent.hits == len(pinned_replies)
    assert plain_replies and "a reply from the campaign's own agent server" not in plain_replies
    pinned_labels = labels(pinned.campaign_id)
    assert pinned_labels and set(pinned_labels) == {"pos_praise"}
    # every judged turn of it and none of the other's (the rest of its calls are the
    # answer judge, which uses the reward judge's backend when none is named)
    reward_calls = [b for b in judge.bodies if "NEW message" in json.dumps(b)]
    assert len(reward_calls) == len(pinned_labels)
    assert all(r.status != "failed" for r in campaign_records(store, pinned.campaign_id))


@pytest.mark.integration
@pytest.mark.slow
def test_a_small_campaign_is_not_starved_by_a_big_one(stack):
    """Two campaigns on the same workers: the one launched second, and small, finishes
    while the big one is still running (queues are FIFO per stage, and a bounded
    campaign keeps only `parallelism` lanes' events in them)."""
    from scheduler.status import campaign_status

    big = SPEC.replace('name = "options"', 'name = "big"').replace(
        'methods = ["vanilla", "rag_vector"]', 'methods = ["vanilla"]'
    ).replace("profiles = 4", "profiles = 12").replace("sessions = 2", "sessions = 4")
    small = SPEC.replace('name = "options"', 'name = "small"').replace(
        'methods = ["vanilla", "rag_vector"]', 'methods = ["vanilla"]'
    ).replace("profiles = 4", "profiles = 2").replace("sessions = 2", "sessions = 1")
    store, big_plan = _launch(stack, big)
    _, small_plan = _launch(stack, small)
    deadline = time.monotonic() + 240
    while campaign_status(store, small_plan.campaign_id).state != "finished":
        assert time.monotonic() < deadline, "the small campaign did not finish"
        time.sleep(0.05)
    big_then = campaign_status(store, big_plan.campaign_id)
    assert big_then.state == "running" and big_then.done < big_then.total, big_then.to_json()
    while campaign_status(store, big_plan.campaign_id).state != "finished":
        assert time.monotonic() < deadline, "the big campaign did not finish"
        time.sleep(0.1)
    final = campaign_status(store, big_plan.campaign_id)
    assert (final.done, final.failed) == (48, 0), final.to_json()
