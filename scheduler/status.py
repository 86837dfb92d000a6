"""Campaigns in the store: list them, tell one's progress, export its session records.

Plain functions over a StateStore: everything is read from Redis (the plan, the registry,
the finished list and the committed records), so any host that reaches the Redis can ask,
with no shared disk and no results directory.

Counting (per method and in total; a lane is one profile x method, its sessions in order):

- done / failed: finished sessions, by their committed record's status.
- running: lanes whose next session has started (stored and enqueued: its start is
  committed) but not ended. At most one per lane; right after launch every lane runs one.
- pending: the rest, sessions not started yet (total - done - failed - running).

A cancelled campaign (``vars campaign cancel``) runs nothing more: its state is
"cancelled" (unless every session had ended anyway: "finished"), running is 0 and the
sessions that will not run are pending.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import msgspec

from scheduler.campaigns import record_dict, record_line
from vars_core.campaign import (
    CampaignPlan,
    campaign_of_session,
    cancelled_at,
    finished_at,
    finished_session_ids,
    launched_at,
    load_plan,
    mark_finished_if_complete,
    progress,
    registered_campaigns,
)
from vars_core.runner import lane_user_id, session_id_for
from vars_core.stages.lifecycle import START_TURN
from vars_core.store import StateStore
from vars_core.store.state import decode
from vars_core.types import SessionRecord

log = logging.getLogger(__name__)


class UnknownCampaign(KeyError):
    """No campaign with that id in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown campaign"


class ExportError(RuntimeError):
    """An export that cannot be written (e.g. parquet without pyarrow)."""


class MethodCounts(msgspec.Struct):
    done: int = 0
    failed: int = 0
    running: int = 0
    total: int = 0


class CampaignStatus(msgspec.Struct):
    campaign_id: str
    name: str
    state: str  # running | finished | cancelled
    total: int
    done: int
    failed: int
    running: int
    launched_at: float | None
    sessions_per_hr: float | None  # finished sessions per hour, launch to finish/cancel/now
    eta_s: float | None  # 0 when finished; None until a session has finished, or cancelled
    methods: dict[str, MethodCounts] = msgspec.field(default_factory=dict)
    finished_at: float | None = None
    cancelled_at: float | None = None

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - self.running

    def to_json(self) -> dict:
        return {
            "campaign": self.campaign_id,
            "name": self.name,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "running": self.running,
            "pending": self.pending,
            "launched_at": self.launched_at,
            "sessions_per_hr": self.sessions_per_hr,
            "eta_s": self.eta_s,
            "finished_at": self.finished_at,
            "cancelled_at": self.cancelled_at,
            "methods": {m: msgspec.structs.asdict(c) for m, c in self.methods.items()},
        }


class CampaignSummary(msgspec.Struct):
    campaign_id: str
    name: str
    methods: list[str]
    total: int
    done: int
    failed: int
    state: str
    launched_at: float

    def to_json(self) -> dict:
        return {
            "campaign": self.campaign_id,
            "name": self.name,
            "methods": self.methods,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "state": self.state,
            "launched_at": self.launched_at,
        }


def _plan(store: StateStore, campaign_id: str) -> CampaignPlan:
    try:
        return load_plan(store, campaign_id)
    except KeyError:
        raise UnknownCampaign(f"unknown campaign {campaign_id!r}") from None


def campaign_records(store: StateStore, campaign_id: str) -> list[SessionRecord]:
    """The committed record of every finished session, in the order they finished, once
    each. The finished list is a log of ends: a session retried after a failure
    (scheduler/failures.py) is pushed again when it ends, so only its last entry counts,
    and while it runs again it has no record and is left out."""
    _plan(store, campaign_id)
    order: dict[str, None] = {}
    for session_id in finished_session_ids(store, campaign_id):
        if campaign_of_session(session_id) != campaign_id:  # never another campaign's record
            log.warning("campaign %s: finished list names %r of another campaign; skipped", campaign_id, session_id)
            continue
        order.pop(session_id, None)
        order[session_id] = None
    ids = list(order)
    raw = store.backend.mget([store.keys.session(session_id, "record") for session_id in ids])
    records = [decode(data, SessionRecord) for data in raw if data is not None]
    return [r for r in records if r.campaign_id == campaign_id]


def campaign_status(store: StateStore, campaign_id: str, now: float | None = None) -> CampaignStatus:
    plan = _plan(store, campaign_id)
    records = campaign_records(store, campaign_id)
    per_lane = Counter((r.method, r.profile_id) for r in records)
    methods = {m: MethodCounts(total=len(plan.profile_ids) * plan.sessions) for m in plan.methods}
    for record in records:
        counts = methods.setdefault(record.method, MethodCounts())
        if record.status == "failed":
            counts.failed += 1
        else:
            counts.done += 1
    # Each lane's next session: running when its start is committed and its end is not.
    nexts = []
    for method in plan.methods:
        for profile_id in plan.profile_ids:
            index = per_lane[(method, profile_id)] + 1
            if index <= plan.sessions:
                nexts.append((method, session_id_for(lane_user_id(campaign_id, method, profile_id), index)))
    markers = []
    for _, session_id in nexts:
        markers += [store.keys.marker(session_id, START_TURN, "start"), store.keys.marker(session_id, START_TURN, "end")]
    found = store.backend.exists_many(markers)
    for i, (method, _) in enumerate(nexts):
        if found[2 * i] and not found[2 * i + 1]:
            methods[method].running += 1

    done = sum(c.done for c in methods.values())
    failed = sum(c.failed for c in methods.values())
    running = sum(c.running for c in methods.values())
    finished = done + failed
    cancelled = cancelled_at(store, campaign_id)
    ended = None
    if finished >= plan.total_sessions:
        state = "finished"
        # Normally stored by the session end that completed the campaign; if that worker
        # died between its commit and the stamp, the first status to see it sets it.
        ended = finished_at(store, campaign_id) or mark_finished_if_complete(store, campaign_id, plan.total_sessions)
    elif cancelled is not None:
        state, ended = "cancelled", cancelled
        for counts in methods.values():  # stopped: what had started will not go on
            counts.running = 0
        running = 0
    else:
        state = "running"
    started = launched_at(store, campaign_id)
    rate = eta = None
    if started is not None:
        until = ended if ended is not None else (time.time() if now is None else now)
        elapsed = max(until - started, 1e-9)
        rate = finished / elapsed * 3600
        if state == "finished":
            eta = 0.0
        elif finished and state == "running":
            eta = (plan.total_sessions - finished) / (finished / elapsed)
    return CampaignStatus(
        campaign_id=campaign_id,
        name=plan.name,
        state=state,
        total=plan.total_sessions,
        done=done,
        failed=failed,
        running=running,
        launched_at=started,
        sessions_per_hr=rate,
        eta_s=eta,
        methods=methods,
        finished_at=ended if state == "finished" else None,
        cancelled_at=cancelled,
    )


def list_campaigns(store: StateStore) -> list[CampaignSummary]:
    """Every registered campaign, newest first (from its counters: cheap for many)."""
    out = []
    for campaign_id, stamp in registered_campaigns(store):
        try:
            plan = load_plan(store, campaign_id)
        except KeyError:  # its keys were deleted: nothing left to show
            continue
        done, failed = progress(store, campaign_id)
        if done + failed >= plan.total_sessions:
            state = "finished"
        elif cancelled_at(store, campaign_id) is not None:
            state = "cancelled"
        else:
            state = "running"
        out.append(
            CampaignSummary(campaign_id, plan.name, list(plan.methods), plan.total_sessions, done, failed, state, stamp)
        )
    return out


def write_jsonl(records: list[SessionRecord], out: BinaryIO) -> None:
    for record in records:
        out.write(record_line(record))
    out.flush()


def write_parquet(records: list[SessionRecord], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(
            "parquet export needs pyarrow: pip install pyarrow (or pip install 'vars[parquet]')"
        ) from None
    schema = pa.schema([(name, _arrow_type(pa, kind)) for name, kind in _record_fields()])
    rows = [record_dict(r) for r in records]
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, str(path))


def _record_fields() -> list[tuple[str, type]]:
    import msgspec

    info = msgspec.inspect.type_info(SessionRecord)
    fields = [(f.name, type(f.type)) for f in info.fields]  # type: ignore[attr-defined]
    return [*fields, ("compliance", msgspec.inspect.FloatType)]


def _arrow_type(pa, kind: type):  # noqa: ANN001 - pyarrow is optional
    import msgspec.inspect as mi

    if kind is mi.StrType:
        return pa.string()
    if kind is mi.IntType:
        return pa.int64()
    if kind is mi.BoolType:
        return pa.bool_()
    if kind is mi.FloatType:
        return pa.float64()
    if kind is mi.ListType:  # rewards
        return pa.list_(pa.float64())
    raise TypeError(f"no parquet type for a {kind.__name__} field")  # pragma: no cover
