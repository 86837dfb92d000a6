"""`vars campaign extend` on real workers and Redis, and `vars campaign watch`."""

from __future__ import annotations

import io
import json
import time

import pytest

from scheduler.campaigns import launch, plan_campaign
from scheduler.cli import main
from scheduler.spec import CampaignSpec
from scheduler.status import CampaignStatus, MethodCounts, campaign_status
from scheduler.watch import bar, plain_line, render, watch, watch_command
from tests.pipeline_harness import Pipeline
from vars_core.campaign import (
    cancel_campaign,
    finished_at,
    first_sessions,
    progress,
    register_campaign,
    save_plan,
)
from vars_core.engine import Engine
from vars_core.store import StateStore

SPEC = dict(methods=["contextual", "rag_vector"], profiles=2, max_turns=3, datasets=["mmlu"], seed=11)


def _spec(sessions: int) -> CampaignSpec:
    return CampaignSpec(name="extend", sessions=sessions, **SPEC)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["campaign", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _exported(capsys, campaign_id: str) -> dict[tuple, dict]:
    """The exported records keyed by (method, profile, index), campaign id replaced."""
    rc, out, err = _cli(capsys, "export", campaign_id)
    assert rc == 0, err
    records = [json.loads(line.replace(campaign_id, "CAMPAIGN")) for line in out.splitlines()]
    keyed = {(r["method"], r["profile_id"], r["session_index"]): r for r in records}
    assert len(keyed) == len(records), "a session exported twice"
    return keyed


# -- watch renderer (no Redis) -------------------------------------------------------------


def _status(state: str = "running", **kw) -> CampaignStatus:
    methods = {
        "vanilla": MethodCounts(done=5, failed=1, running=1, total=10),
        "rag_vector": MethodCounts(done=10, failed=0, running=0, total=10),
    }
    base = dict(
        campaign_id="c-1", name="c", state=state, total=20, done=15, failed=1, running=1,
        launched_at=0.0, sessions_per_hr=360.0, eta_s=40.0, methods=methods,
    )
    base.update(kw)
    return CampaignStatus(**base)


def test_watch_renderer_bars_and_lines():
    assert bar(MethodCounts(done=5, failed=1, running=1, total=10), width=10) == "[#####x>...]"
    assert bar(MethodCounts(done=10, total=10), width=10) == "[##########]"
    assert bar(MethodCounts(total=0), width=4) == "[....]"
    assert bar(MethodCounts(done=1, failed=1, running=1, total=3), width=10) == "[###xxx>>>>]"  # floor(1/3), floor(2/3)

    lines = render(_status(), width=10)
    assert lines == [
        "campaign c-1 (running)",
        "  vanilla     [#####x>...]   5/10 done  1 failed  1 running",
        "  rag_vector  [##########]  10/10 done  0 failed  0 running",
        "  total       [#######x..]  15/20 done  1 failed  1 running",
        "  rate: 360 sessions/hr  eta: 40s",
    ]
    assert render(_status("finished", eta_s=0.0))[-1].endswith("eta: finished")
    cancelled = _status("cancelled", running=0, eta_s=None)
    assert "4 sessions will not run" in render(cancelled)[-1]
    line = plain_line(_status(), now=0)
    assert "\n" not in line
    assert "c-1 running: 15/20 done, 1 failed, 1 running; vanilla 5/10, rag_vector 10/10" in line
    assert line.endswith("rate: 360 sessions/hr; eta: 40s")


def test_watch_refreshes_until_ctrl_c():
    """A running campaign (no workers): one plain line per refresh, and Ctrl-C exits 0."""
    store = StateStore()
    plan, profiles = plan_campaign(_spec(2))
    save_plan(store, plan, profiles)
    register_campaign(store, plan.campaign_id, launched_at=time.time() - 60)
    first_sessions(Engine(), store, plan)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    out = io.StringIO()
    assert watch_command(store, plan.campaign_id, 0.5, out=out, err=io.StringIO(), sleep=sleep) == 0
    lines = out.getvalue().strip().splitlines()
    assert sleeps == [0.5, 0.5, 0.5]
    assert len(lines) == 5 and lines[3] == "", lines  # 3 refreshes, then the goodbye
    assert all("running: 0/8 done, 0 failed, 4 running" in line for line in lines[:3])
    assert "keeps running" in lines[4]

    tty = io.StringIO()
    calls = iter([None, KeyboardInterrupt])

    def once(_seconds: float) -> None:
        if next(calls) is KeyboardInterrupt:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        watch(store, plan.campaign_id, out=tty, tty=True, sleep=once)
    block = render(campaign_status(store, plan.campaign_id))
    assert tty.getvalue().count("\x1b[J") == 1  # the second refresh redraws the first in place
    assert tty.getvalue().startswith(block[0]) and f"\x1b[{len(block)}A" in tty.getvalue()

    err = io.StringIO()
    assert watch_command(store, "nope-000", out=io.StringIO(), err=err) == 2
    assert "nope-000" in err.getvalue()


# -- extend on real workers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    pipe = Pipeline(tmp_path_factory.mktemp("extend-home")).start()
    yield pipe
    pipe.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_extend_finished_and_running_campaigns(pipeline, capsys):
    """A finished 2-session campaign extended to 3, and a running one extended as it goes,
    both end with the records of a campaign planned with 3 sessions from the start."""
    store, app, engine = pipeline.store(), pipeline.app(), Engine()
    finished = launch(app, engine, store, _spec(2))
    reference = launch(app, engine, store, _spec(3))
    pipeline.wait_for(
        lambda: sum(progress(store, finished.campaign_id)) >= 8, timeout_s=90, what="the 2-session campaign"
    )
    first_finish = finished_at(store, finished.campaign_id)
    assert first_finish is not None and campaign_status(store, finished.campaign_id).state == "finished"
    before = _exported(capsys, finished.campaign_id)

    running = launch(app, engine, store, _spec(2))  # extended while its first sessions run
    rc, out, err = _cli(capsys, "extend", running.campaign_id, "--sessions", "3")
    assert rc == 0, err
    assert "from 2 to 3 sessions per lane (12 in all)" in out

    rc, out, err = _cli(capsys, "extend", finished.campaign_id, "--sessions", "3")
    assert rc == 0, err
    assert "from 2 to 3 sessions per lane (12 in all); 4 lane(s) started again" in out, out

    for plan in (finished, running, reference):
        pipeline.wait_for(
            lambda plan=plan: sum(progress(store, plan.campaign_id)) >= 12, timeout_s=120, what=plan.campaign_id
        )
    pipeline.wait_for(pipeline.queues_empty, timeout_s=30, what="the queues to drain")
    time.sleep(0.5)

    expected = _exported(capsys, reference.campaign_id)
    assert len(expected) == 12
    for plan in (finished, running):
        assert progress(store, plan.campaign_id) == (12, 0)
        status = campaign_status(store, plan.campaign_id)
        assert (status.state, status.total, status.done, status.running) == ("finished", 12, 12, 0)
        records = _exported(capsys, plan.campaign_id)
        assert records == expected  # every session once, each equal to the reference's
    assert {k: v for k, v in _exported(capsys, finished.campaign_id).items() if k[2] <= 2} == before
    again = finished_at(store, finished.campaign_id)
    assert again is not None and again > first_finish  # cleared by extend, stamped anew

    # watch on a finished campaign: its final state, once, and exit 0 (stdout is no TTY here)
    rc, out, _ = _cli(capsys, "watch", finished.campaign_id, "--interval", "0.1")
    assert rc == 0
    (line,) = out.splitlines()
    assert f"{finished.campaign_id} finished: 12/12 done, 0 failed, 0 running" in line

    # refusals: not more sessions, unknown ids, a cancelled campaign
    for sessions in ("3", "2"):
        rc, _, err = _cli(capsys, "extend", finished.campaign_id, "--sessions", sessions)
        assert rc == 2 and "must be larger" in err and finished.campaign_id in err
    rc, _, err = _cli(capsys, "extend", "nope-000", "--sessions", "5")
    assert rc == 2 and "nope-000" in err
    rc, _, err = _cli(capsys, "watch", "nope-000")
    assert rc == 2 and "nope-000" in err
    plan, profiles = plan_campaign(_spec(2))
    save_plan(store, plan, profiles)  # never launched: no events, then cancelled
    register_campaign(store, plan.campaign_id)
    assert cancel_campaign(store, plan.campaign_id)[0] == "cancelled"
    rc, _, err = _cli(capsys, "extend", plan.campaign_id, "--sessions", "4")
    assert rc == 2 and "cancelled" in err
    assert campaign_status(store, plan.campaign_id).total == 8  # the plan is left as it was


@pytest.mark.integration
@pytest.mark.slow
def test_extend_keeps_the_parallelism_bound(pipeline, capsys):
    """A finished campaign with parallelism 2 (4 lanes) extended by a session: the lanes
    are restarted two at a time, never more, and every session runs once, equal to a
    campaign planned with the larger total from the start."""
    store, app, engine = pipeline.store(), pipeline.app(), Engine()
    bounded = dict(SPEC, methods=["vanilla", "rag_vector"], seed=12, parallelism=2)
    plan = launch(app, engine, store, CampaignSpec(name="bounded", sessions=1, **bounded))
    reference = launch(app, engine, store, CampaignSpec(name="bounded", sessions=2, **bounded))
    pipeline.wait_for(lambda: sum(progress(store, plan.campaign_id)) >= 4, timeout_s=90, what="the first pass")

    rc, out, err = _cli(capsys, "extend", plan.campaign_id, "--sessions", "2")
    assert rc == 0, err
    assert "2 lane(s) started again" in out, out
    peak, deadline = 0, time.monotonic() + 120
    while sum(progress(store, plan.campaign_id)) < 8:
        peak = max(peak, campaign_status(store, plan.campaign_id).running)
        assert peak <= 2, campaign_status(store, plan.campaign_id).to_json()
        assert time.monotonic() < deadline, campaign_status(store, plan.campaign_id).to_json()
        time.sleep(0.02)
    pipeline.wait_for(
        lambda: sum(progress(store, reference.campaign_id)) >= 8, timeout_s=120, what="the reference"
    )
    pipeline.wait_for(pipeline.queues_empty, timeout_s=30, what="the queues to drain")
    assert progress(store, plan.campaign_id) == (8, 0)
    assert _exported(capsys, plan.campaign_id) == _exported(capsys, reference.campaign_id)
