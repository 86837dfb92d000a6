"""A campaign's failed sessions: list them, and run them again.

A session fails when a stage task's retries are exhausted (workers/tasks.py): its record is
committed with status "failed", the campaign's ``failed`` counter goes up, and an entry
(session, stage, turn, reason) goes to the campaign's dead-letter list. The lane goes on
with its next session meanwhile.

``retry`` clears one failed session and republishes the stage it failed at:

- the failed record, the session's end marker and ``finished_at`` are deleted and
  ``failed`` is decremented, in one transaction that WATCHes the record, so two retries at
  once clear (and republish) a session only once;
- the stage outputs and markers from the failed stage on (that stage of the failed turn,
  and later ones) are deleted. Normally there are none: a failed stage committed nothing
  and the chain stopped there. The stages before it in the failed turn stay committed:
  they appended messages and updated the user's vector, the failed stage reads their
  outputs, and running them again would duplicate the turn;
- the finished list is an append-only log of ends: the retried session is pushed again
  when it ends, and readers keep each session's last entry. The dead-letter list keeps
  every attempt; ``failures`` shows the latest of sessions whose record is failed now.

When the retried session ends, ``next_in_lane`` finds the lane's next session already
started (it ran after the failure) and publishes nothing. The retried session's memory
effects (cards, vector) therefore land after those of its lane's later sessions.
"""

from __future__ import annotations

from celery import Celery

from queues.events import StageTask
from scheduler.status import UnknownCampaign, _plan
from vars_core.campaign import FINISHED_AT, CampaignFailure, failure_entries, is_cancelled
from vars_core.stages.lifecycle import START_TURN
from vars_core.store import StateStore
from vars_core.store.backend import Op
from vars_core.types import STAGES
from workers.publish import publish


class RetryRefused(RuntimeError):
    """A retry that would do nothing useful (e.g. the campaign was cancelled)."""


def campaign_failures(store: StateStore, campaign_id: str) -> list[CampaignFailure]:
    """The latest failure of every session whose committed record says failed now."""
    _plan(store, campaign_id)
    latest: dict[str, CampaignFailure] = {}
    for entry in failure_entries(store, campaign_id):
        latest.pop(entry.session_id, None)
        latest[entry.session_id] = entry
    out = []
    for session_id, entry in latest.items():
        record = store.session_record(session_id)
        if record is not None and record.status == "failed":
            out.append(entry)
    return out


def _stale_keys(store: StateStore, failure: CampaignFailure) -> list[str]:
    """Outputs and markers of the failed stage and everything after it."""
    order = {stage: i for i, stage in enumerate(STAGES)}
    stale = []
    for what in ("out:", "done:"):
        prefix = store.keys.session(failure.session_id, what)
        for key in store.backend.scan(prefix):
            turn_text, _, stage = key[len(prefix):].partition(":")
            turn = int(turn_text)
            if turn == START_TURN:
                continue  # start/end: the end marker is handled by the caller
            if turn > failure.turn or (turn == failure.turn and order.get(stage, -1) >= order[failure.stage]):
                stale.append(key)
    return stale


def clear_failure(store: StateStore, campaign_id: str, failure: CampaignFailure) -> bool:
    """Undo one session's failure so it can run on; False if it is not failed (any more)."""
    sid = failure.session_id
    record_key = store.keys.session(sid, "record")
    stale = _stale_keys(store, failure)

    def build() -> tuple[list[Op], bool]:
        record = store.session_record(sid)
        if record is None or record.status != "failed":
            return [], False
        ops = [
            Op("del", record_key),
            Op("del", store.keys.marker(sid, START_TURN, "end")),
            Op("del", store.keys.campaign(campaign_id, FINISHED_AT)),
            Op("incr", store.keys.campaign(campaign_id, "failed"), value=b"-1"),
            *(Op("del", key) for key in stale),
        ]
        return ops, True

    return store.backend.transact([record_key], build)


def retry_failures(app: Celery, store: StateStore, campaign_id: str) -> list[CampaignFailure]:
    """Clear every failed session of the campaign and republish the stage it failed at."""
    _plan(store, campaign_id)
    if is_cancelled(store, campaign_id):
        raise RetryRefused(
            f"campaign {campaign_id} was cancelled: its stage tasks are dropped, so nothing is retried"
        )
    retried = []
    for failure in campaign_failures(store, campaign_id):
        if clear_failure(store, campaign_id, failure):
            publish(app, StageTask(failure.session_id, failure.turn, failure.stage, "campaign"))
            retried.append(failure)
    return retried


__all__ = ["RetryRefused", "UnknownCampaign", "campaign_failures", "clear_failure", "retry_failures"]
