"""What every stage handler gets: the engine, the store, and the session's coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property

from vars_core.engine import Engine
from vars_core.methods import Method, get_method
from vars_core.rng import rng_for
from vars_core.store import StateStore, UserScope
from vars_core.store.backend import Op
from vars_core.tenant import tenant_key, tenant_mean_ops, tenant_of
from vars_core.types import Message, Profile, SessionState, SimulatorTurn, UserVector


def world_key(session: SessionState) -> str:
    """Randomness of the simulated world: the same for every method of a profile's session,
    and for every campaign run with the same seed (the campaign id is not part of it)."""
    if session.campaign_id:
        return f"{session.profile_id}|{session.session_index}"
    return session.session_id


def policy_key(session: SessionState) -> str:
    if session.campaign_id:
        return f"{session.method}|{session.profile_id}|{session.session_index}"
    return session.session_id


@dataclass
class StageContext:
    engine: Engine
    store: StateStore
    session: SessionState
    turn: int

    @cached_property
    def method(self) -> Method:
        return get_method(self.session.method)

    @cached_property
    def user(self) -> UserScope:
        return self.store.user(self.session.user_id)

    @cached_property
    def profile(self) -> Profile:
        return self.store.profile(self.session.campaign_id, self.session.profile_id, Profile)

    def rng(self, stage: str):
        """The simulated world (user and agent) draws the same numbers for every method
        of a profile's session (common random numbers: method comparisons are paired);
        the policy's own sampling is keyed by the session itself."""
        key = policy_key(self.session) if stage == "retrieve" else world_key(self.session)
        return rng_for(self.session.seed, key, self.turn, stage)

    def messages(self) -> list[Message]:
        return self.store.messages(self.session.session_id)

    def simulator_turn(self, turn: int | None = None) -> SimulatorTurn | None:
        return self.store.stage_output(
            self.session.session_id, self.turn if turn is None else turn, "simulate", SimulatorTurn
        )

    def commit(self, stage: str, ops: list) -> bool:
        return self.store.commit_stage(self.session.session_id, self.turn, stage, ops)

    def output_op(self, stage: str, value: object):
        return self.store.stage_output_op(self.session.session_id, self.turn, stage, value)

    @property
    def keeps_tenant_mean(self) -> bool:
        """Live users feed their tenant's cold-start mean; campaign lanes never do."""
        return self.session.lane == "live" and self.engine.config.cold_start == "tenant_mean"

    def vector_watch(self) -> list[str]:
        """The keys a read-modify-write of the user's vector must watch."""
        watch = [self.user.vector_key]
        if self.keeps_tenant_mean:
            watch.append(tenant_key(self.store, tenant_of(self.user.user_id)))
        return watch

    def vector_ops(self, old: UserVector, new: UserVector) -> list[Op]:
        """Write the user's new vector (and keep the tenant aggregate in step)."""
        ops = [self.user.put_vector_op(new)]
        if self.keeps_tenant_mean:
            ops += tenant_mean_ops(self.store, self.user.user_id, old, new)
        return ops

    def card_stamp(self) -> str:
        """A sortable creation stamp: cards are listed to all_memory in creation order.
        Campaigns stamp (session index, turn), reproducible; live users the UTC time."""
        if self.session.lane == "live":
            return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{self.session.session_index:06d}.{self.turn:04d}"
