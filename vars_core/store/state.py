"""The state store: one layer over any backend that builds every key and enforces the
user partition. Memory and Redis backends both sit under it, so the in-process runner
and the queued workers read and write exactly the same records.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec

from vars_core.reinforce import reset_session
from vars_core.store.backend import KVBackend, MemoryBackend, Op
from vars_core.types import (
    Card,
    CardEmbedding,
    Message,
    RetrievalTrace,
    SessionRecord,
    SessionState,
    UserVector,
)

T = TypeVar("T")

START_TURN = 0  # the turn number of a session's start (and end) records

_ENC = msgspec.msgpack.Encoder()
_USER_ID = re.compile(r"^[^\s{}]{1,200}$")


class UnknownSession(KeyError):
    """No session with that id in the store."""


class PartitionError(PermissionError):
    """A read or write that would cross from one user's data into another's."""


def encode(value: object) -> bytes:
    return _ENC.encode(value)


def decode(data: bytes, kind: type[T]) -> T:
    return msgspec.msgpack.decode(data, type=kind)


def check_user_id(user_id: str) -> str:
    if not _USER_ID.match(user_id):
        raise ValueError(
            f"invalid user id {user_id!r}: 1-200 characters, no whitespace and no braces"
        )
    return user_id


class Keys:
    """Every key the product writes. User keys carry the id in braces (a Redis Cluster
    hash tag), so one user's keys live together and a prefix never matches another user."""

    def __init__(self, namespace: str = "vars") -> None:
        self.ns = namespace

    def user(self, user_id: str, what: str) -> str:
        return f"{self.ns}:user:{{{check_user_id(user_id)}}}:{what}"

    def session(self, session_id: str, what: str = "state") -> str:
        return f"{self.ns}:sess:{{{session_id}}}:{what}"

    def stage_output(self, session_id: str, turn: int, stage: str) -> str:
        return self.session(session_id, f"out:{turn}:{stage}")

    def marker(self, session_id: str, turn: int, stage: str) -> str:
        return self.session(session_id, f"done:{turn}:{stage}")

    def progress(self, session_id: str) -> str:
        """Unix time (as text) of the session's last stage commit, or of the last time
        ``vars campaign resume``/``sweep`` republished its next event: how the sweeper
        tells a stalled session (scheduler/resume.py)."""
        return self.session(session_id, "progress")

    def profile(self, campaign_id: str, profile_id: str) -> str:
        return f"{self.ns}:profile:{{{campaign_id}}}:{profile_id}"

    def campaign(self, campaign_id: str, what: str) -> str:
        return f"{self.ns}:campaign:{{{campaign_id}}}:{what}"

    def campaigns(self) -> str:
        """The registry of launched campaigns: a hash of campaign id -> launch time (Unix
        seconds, as text). A hash, not a sorted set: the backends speak strings, lists and
        hashes; listing sorts by launch time on read."""
        return f"{self.ns}:campaigns"


class ChangeSnapshot(msgspec.Struct, frozen=True):
    version: int
    log_length: int
    changed: list[str] | None = None  # card ids changed from the asked position on


class UserScope:
    """One user's view of the store. Every key it builds carries its own user id, and
    records read back are checked to belong to it: a cross-user read fails closed."""

    def __init__(self, store: StateStore, user_id: str) -> None:
        self.store = store
        self.user_id = check_user_id(user_id)
        self._k = store.keys

    # keys ---------------------------------------------------------------------
    @property
    def cards_key(self) -> str:
        return self._k.user(self.user_id, "cards")

    @property
    def embeddings_key(self) -> str:
        return self._k.user(self.user_id, "emb")

    @property
    def version_key(self) -> str:
        return self._k.user(self.user_id, "version")

    @property
    def vector_key(self) -> str:
        return self._k.user(self.user_id, "vector")

    @property
    def changes_key(self) -> str:
        """The change log: a list with one entry (the changed card ids, msgpack) per
        version bump that changed cards, so a cached index can re-read only those."""
        return self._k.user(self.user_id, "changes")

    def trace_key(self, session_id: str, turn: int) -> str:
        return self._k.user(self.user_id, f"trace:{session_id}:{turn}")

    @property
    def history_key(self) -> str:
        """contextual: earlier sessions' messages (a list)."""
        return self._k.user(self.user_id, "history")

    @property
    def summary_key(self) -> str:
        """contextual: the summary of history that went over the budget."""
        return self._k.user(self.user_id, "summary")

    @property
    def reflection_key(self) -> str:
        """reflection: the agent's notes about the user."""
        return self._k.user(self.user_id, "reflection")

    @property
    def live_session_key(self) -> str:
        """The user's current live session id."""
        return self._k.user(self.user_id, "live-session")

    @property
    def prefix(self) -> str:
        """Every key of this user starts with this (and no other user's does)."""
        return self._k.user(self.user_id, "")

    # reads --------------------------------------------------------------------
    def cards(self, include_superseded: bool = False) -> dict[str, Card]:
        raw = self.store.backend.hgetall(self.cards_key)
        cards = {cid: self._own(decode(data, Card)) for cid, data in raw.items()}
        if include_superseded:
            return dict(sorted(cards.items()))
        return {cid: c for cid, c in sorted(cards.items()) if c.superseded_by is None}

    def cards_by_id(self, card_ids: list[str]) -> list[Card]:
        out = []
        for cid in card_ids:
            data = self.store.backend.hget(self.cards_key, cid)
            if data is None:
                raise PartitionError(f"card {cid!r} is not in the store of user {self.user_id!r}")
            out.append(self._own(decode(data, Card)))
        return out

    def embeddings(self) -> dict[str, CardEmbedding]:
        raw = self.store.backend.hgetall(self.embeddings_key)
        return {cid: decode(data, CardEmbedding) for cid, data in sorted(raw.items())}

    def cards_of(self, card_ids: list[str]) -> dict[str, Card | None]:
        """The records of these cards (superseded ones too), None for a card not (or no
        longer) in the store."""
        raw = self.store.backend.hmget(self.cards_key, card_ids)
        return {
            cid: None if data is None else self._own(decode(data, Card))
            for cid, data in zip(card_ids, raw, strict=True)
        }

    def embeddings_of(self, card_ids: list[str]) -> dict[str, CardEmbedding]:
        """The embeddings of these cards (only those that have one)."""
        raw = self.store.backend.hmget(self.embeddings_key, card_ids)
        return {
            cid: decode(data, CardEmbedding)
            for cid, data in zip(card_ids, raw, strict=True)
            if data is not None
        }

    def change_snapshot(self, since: int | None = None) -> ChangeSnapshot:
        """The version and the change log's length, read together; with ``since``, the
        card ids of the log's entries from position ``since`` on (None when the log is
        shorter: it was reset)."""

        def build() -> tuple[list[Op], ChangeSnapshot]:
            data = self.store.backend.get(self.version_key)
            length = self.store.backend.llen(self.changes_key)
            changed = None
            if since is not None and 0 <= since <= length:
                entries = self.store.backend.lrange(self.changes_key, since, -1) if since < length else []
                changed = sorted({cid for e in entries for cid in decode(e, list[str])})
            return [], ChangeSnapshot(int(data) if data else 0, length, changed)

        return self.store.backend.transact([self.version_key, self.changes_key], build)

    def version(self) -> int:
        data = self.store.backend.get(self.version_key)
        return int(data) if data else 0

    def stored_vector(self) -> UserVector | None:
        """The user's vector, or None if it has never been written."""
        data = self.store.backend.get(self.vector_key)
        return None if data is None else decode(data, UserVector)

    def vector(self, dim: int, projection_version: str = "") -> UserVector:
        data = self.store.backend.get(self.vector_key)
        if data is None:
            zeros = [0.0] * dim
            return UserVector(z_long=zeros, z_short=list(zeros), projection_version=projection_version)
        return decode(data, UserVector)

    def history(self) -> list[Message]:
        return [decode(item, Message) for item in self.store.backend.lrange(self.history_key)]

    def summary(self) -> str:
        data = self.store.backend.get(self.summary_key)
        return data.decode() if data else ""

    def reflection(self) -> list[str]:
        data = self.store.backend.get(self.reflection_key)
        return decode(data, list[str]) if data else []

    # write ops ----------------------------------------------------------------
    def put_card_ops(self, card: Card, embedding: CardEmbedding | None) -> list[Op]:
        self._own(card)
        ops = [Op("hset", self.cards_key, card.card_id, encode(card))]
        if embedding is not None:
            ops.append(Op("hset", self.embeddings_key, card.card_id, encode(embedding)))
        return ops

    def delete_card_ops(self, card_id: str) -> list[Op]:
        return [Op("hdel", self.cards_key, card_id), Op("hdel", self.embeddings_key, card_id)]

    def trace_keys(self) -> list[str]:
        """The keys of every retrieval trace of this user."""
        return self.store.backend.scan(self._k.user(self.user_id, "trace:"))

    def forget_card(self, card_id: str) -> list[str]:
        """Delete one card for good: it and the cards it superseded (earlier versions of
        the same preference), their embeddings and item vectors, and every retrieval trace
        that holds any of them (so no later update reads their vectors); the version moves
        on, so no cached index keeps them. Returns the deleted ids, [] for an unknown card."""

        def build() -> tuple[list[Op], list[str]]:
            cards = self.cards(include_superseded=True)
            if card_id not in cards:
                return [], []
            doomed = {card_id}
            grew = True
            while grew:  # the chain of cards superseded, directly or not, by the doomed ones
                grew = False
                for cid, card in cards.items():
                    if cid not in doomed and card.superseded_by in doomed:
                        doomed.add(cid)
                        grew = True
            ops = [op for cid in sorted(doomed) for op in self.delete_card_ops(cid)]
            for key in self.trace_keys():
                data = self.store.backend.get(key)
                if data is not None and doomed & set(decode(data, RetrievalTrace).candidate_ids):
                    ops.append(Op("del", key))
            ops += self.bump_version_ops(sorted(doomed))
            return ops, sorted(doomed)

        return self.store.backend.transact([self.cards_key, self.version_key], build)

    def bump_version_op(self) -> Op:
        """A new version with no change log entry: cached indexes rebuild in full."""
        return Op("incr", self.version_key, value=b"1")

    def bump_version_ops(self, changed_card_ids: list[str]) -> list[Op]:
        """A new version and its change log entry (the cards written or deleted), in the
        same atomic write as the cards themselves."""
        return [self.bump_version_op(), Op("rpush", self.changes_key, value=encode(list(changed_card_ids)))]

    def put_vector_op(self, vector: UserVector) -> Op:
        return Op("set", self.vector_key, value=encode(vector))

    def zero_short_ops(self) -> list[Op]:
        """A new session: z_short back to zero, z_long and the baseline kept (no op for a
        user without a vector)."""
        vector = self.stored_vector()
        if vector is None:
            return []
        return [self.put_vector_op(reset_session(vector))]

    def session_start_ops(self, session_id: str, fresh: UserVector | None = None) -> list[Op]:
        """A new session's vector ops: z_short back to zero (or ``fresh``, a cold-start
        vector), and a copy of the vector as the session starts, which retrieval serves
        with all session long when the policy refreshes per session (an empty vector when
        nothing was learned yet)."""
        if fresh is None:
            stored = self.stored_vector()
            fresh = reset_session(stored) if stored is not None else None
        ops = [self.put_vector_op(fresh)] if fresh is not None else []
        served = fresh if fresh is not None else UserVector(z_long=[], z_short=[])
        return [*ops, self.store.stage_output_op(session_id, START_TURN, "vector", served)]

    def _own(self, card: Card) -> Card:
        if card.user_id != self.user_id:
            raise PartitionError(
                f"card {card.card_id!r} belongs to another user, not {self.user_id!r}"
            )
        return card


class StateStore:
    """Typed access to sessions, messages, stage outputs, profiles and user scopes."""

    def __init__(self, backend: KVBackend | None = None, namespace: str = "vars") -> None:
        self.backend: KVBackend = backend if backend is not None else MemoryBackend()
        self.keys = Keys(namespace)

    def user(self, user_id: str) -> UserScope:
        return UserScope(self, user_id)

    # sessions -------------------------------------------------------------------
    def session(self, session_id: str) -> SessionState:
        data = self.backend.get(self.keys.session(session_id))
        if data is None:
            raise UnknownSession(f"unknown session {session_id!r}")
        return decode(data, SessionState)

    def put_session_op(self, state: SessionState) -> Op:
        return Op("set", self.keys.session(state.session_id), value=encode(state))

    def messages(self, session_id: str) -> list[Message]:
        raw = self.backend.lrange(self.keys.session(session_id, "messages"))
        return [decode(item, Message) for item in raw]

    def append_message_op(self, session_id: str, message: Message) -> Op:
        return Op("rpush", self.keys.session(session_id, "messages"), value=encode(message))

    def stage_output(self, session_id: str, turn: int, stage: str, kind: type[T]) -> T | None:
        data = self.backend.get(self.keys.stage_output(session_id, turn, stage))
        return None if data is None else decode(data, kind)

    def stage_output_op(self, session_id: str, turn: int, stage: str, value: object) -> Op:
        return Op("set", self.keys.stage_output(session_id, turn, stage), value=encode(value))

    def is_committed(self, session_id: str, turn: int, stage: str) -> bool:
        return self.backend.exists(self.keys.marker(session_id, turn, stage))

    def progress_op(self, session_id: str, now: float | None = None) -> Op:
        """Stamp the session's last progress; part of every stage commit (one SET)."""
        stamp = time.time() if now is None else now
        return Op("set", self.keys.progress(session_id), value=repr(stamp).encode())

    def last_progress(self, session_id: str) -> float | None:
        data = self.backend.get(self.keys.progress(session_id))
        return None if data is None else float(data)

    def commit_stage(self, session_id: str, turn: int, stage: str, ops: list[Op]) -> bool:
        """Write a stage's ops and its marker at once; False if it was already committed."""
        ops = [*ops, self.progress_op(session_id)]
        return self.backend.apply(ops, marker=self.keys.marker(session_id, turn, stage))

    def transact_stage(
        self,
        session_id: str,
        turn: int,
        stage: str,
        watch: list[str],
        build: Callable[[], list[Op]],
    ) -> bool:
        """Read-modify-write commit: ``build`` reads current state (e.g. a user's vector)
        and returns ops; they and the marker are written only if nothing watched changed."""
        marker = self.keys.marker(session_id, turn, stage)

        def guarded() -> tuple[list[Op], bool]:
            if self.backend.exists(marker):
                return [], False
            ops = build()
            return [*ops, self.progress_op(session_id), Op("set", marker, value=b"1")], True

        return self.backend.transact([marker, *watch], guarded)

    # profiles and records -------------------------------------------------------
    def put_profile_op(self, campaign_id: str, profile_id: str, profile: object) -> Op:
        return Op("set", self.keys.profile(campaign_id, profile_id), value=encode(profile))

    def profile(self, campaign_id: str, profile_id: str, kind: type[T]) -> T:
        data = self.backend.get(self.keys.profile(campaign_id, profile_id))
        if data is None:
            raise KeyError(f"unknown profile {profile_id!r} in campaign {campaign_id!r}")
        return decode(data, kind)

    def session_record(self, session_id: str) -> SessionRecord | None:
        data = self.backend.get(self.keys.session(session_id, "record"))
        return None if data is None else decode(data, SessionRecord)

    def put_session_record_op(self, record: SessionRecord) -> Op:
        return Op("set", self.keys.session(record.session_id, "record"), value=encode(record))
