"""Launching a campaign onto the queues and following it to its results directory."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import msgspec
from celery import Celery

from queues.events import StageTask
from scheduler.profiles import campaign_profiles
from scheduler.spec import CampaignSpec
from vars_core.campaign import (
    CampaignPlan,
    finished_session_ids,
    first_sessions,
    load_plan,
    progress,
    register_campaign,
    save_plan,
)
from vars_core.engine import Engine
from vars_core.store import StateStore
from vars_core.store.backend import Op
from vars_core.types import SessionRecord
from workers.publish import publish_many


def new_campaign_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def plan_campaign(spec: CampaignSpec, campaign_id: str | None = None):
    profiles = campaign_profiles(spec.profiles, spec.seed)
    plan = CampaignPlan(
        campaign_id=campaign_id or new_campaign_id(spec.name),
        name=spec.name,
        methods=list(spec.methods),
        profile_ids=[p.profile_id for p in profiles],
        sessions=spec.sessions,
        max_turns=spec.max_turns,
        datasets=list(spec.datasets),
        seed=spec.seed,
        parallelism=spec.parallelism,
        reward=spec.reward,
        backends=spec.backends.tables(),
    )
    return plan, profiles


def launch(app: Celery, engine: Engine, store: StateStore, spec: CampaignSpec) -> CampaignPlan:
    """Store the plan and profiles, start the first session of every lane (of the first
    ``parallelism`` lanes when the spec bounds it; the rest start as lanes complete),
    enqueue them."""
    plan, profiles = plan_campaign(spec)
    save_plan(store, plan, profiles)
    store.backend.apply(
        [Op("set", store.keys.campaign(plan.campaign_id, "spec"), value=msgspec.json.encode(spec))]
    )
    register_campaign(store, plan.campaign_id)  # after the plan: a listed id always has one
    sessions = first_sessions(engine, store, plan)
    publish_many(app, [StageTask(s.session_id, 1, "simulate", "campaign") for s in sessions])
    return plan


def write_campaign_json(results: Path, store: StateStore, plan: CampaignPlan) -> None:
    spec = store.backend.get(store.keys.campaign(plan.campaign_id, "spec"))
    document = {
        "campaign_id": plan.campaign_id,
        "spec": msgspec.json.decode(spec) if spec else None,
        "plan": msgspec.to_builtins(plan),
    }
    (results / "campaign.json").write_bytes(msgspec.json.format(msgspec.json.encode(document)))


def record_dict(record: SessionRecord) -> dict:
    """A session record as `sessions.jsonl` and `vars campaign export` write it."""
    data = msgspec.to_builtins(record)
    data["compliance"] = record.compliance
    return data


def record_line(record: SessionRecord) -> bytes:
    return msgspec.json.encode(record_dict(record)) + b"\n"


def follow(
    store: StateStore,
    campaign_id: str,
    results_dir: Path,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> list[SessionRecord]:
    """Append each finished session to ``sessions.jsonl`` as it lands, until all are in.

    Resumable: lines already in the file are not written again.
    """
    plan = load_plan(store, campaign_id)
    results = Path(results_dir) / campaign_id
    results.mkdir(parents=True, exist_ok=True)
    write_campaign_json(results, store, plan)
    lines_path = results / "sessions.jsonl"
    written = sum(1 for _ in lines_path.open()) if lines_path.exists() else 0
    records: list[SessionRecord] = []
    started = time.monotonic()
    with lines_path.open("ab") as out:
        while True:
            new_ids = finished_session_ids(store, campaign_id, written)
            for session_id in new_ids:
                record = store.session_record(session_id)
                if record is None:  # pragma: no cover - the id is pushed with the record
                    break
                out.write(record_line(record))
                records.append(record)
                written += 1
            out.flush()
            done, failed = progress(store, campaign_id)
            if on_progress:
                on_progress(done, failed, plan.total_sessions)
            if written >= plan.total_sessions:
                return records
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise TimeoutError(
                    f"campaign {campaign_id}: {written}/{plan.total_sessions} sessions after {timeout_s:.0f} s"
                )
            time.sleep(poll_s)


def read_records(results: Path) -> list[SessionRecord]:
    lines = (results / "sessions.jsonl").read_bytes().splitlines()
    return [msgspec.json.decode(line, type=SessionRecord) for line in lines if line.strip()]


class ProgressPrinter:
    """One line on a terminal (rewritten in place), or a line per change in a log."""

    def __init__(self, stream=None, min_interval_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval_s = min_interval_s
        self._last: tuple[int, int] | None = None
        self._last_time = 0.0

    def __call__(self, done: int, failed: int, total: int) -> None:
        finished = done + failed >= total
        if (done, failed) == self._last and not finished:
            return
        now = time.monotonic()
        if not self.tty and not finished and now - self._last_time < self.min_interval_s:
            return
        self._last, self._last_time = (done, failed), now
        line = f"{done + failed}/{total} sessions ({failed} failed)"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
