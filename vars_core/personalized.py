"""`PersonalizedLLM`: the engine as a library, with the reference API.

    llm = PersonalizedLLM.from_config()          # scripted LLM, MiniLM, in-memory state
    result = llm.chat("alice", "When writing python code, use snake_case names. Sort a list?")
    result.answer, result.usage, result.debug.cards

Every call goes through the same stage handlers as the queued pipeline (judge the previous
turn -> update -> extract -> retrieve -> generate), over the same state-store layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from vars_core.config import EngineConfig, load_config
from vars_core.engine import Engine
from vars_core.judge import gate
from vars_core.live import (
    begin_turn,
    current_session,
    last_turn,
    run_until_generate,
    start_live_session,
)
from vars_core.methods import get_method
from vars_core.reinforce import reinforce_update
from vars_core.stages import START_TURN, generate
from vars_core.stages.context import StageContext
from vars_core.stages.lifecycle import end_session
from vars_core.store import MemoryBackend, StateStore
from vars_core.store.backend import Op
from vars_core.store.state import decode, encode
from vars_core.tenant import tenant_mean_ops
from vars_core.types import (
    AgentReply,
    Card,
    CardEmbedding,
    ExtractedPreference,
    ExtractResult,
    JudgeResult,
    Message,
    RetrievalTrace,
    RewardLabel,
    SessionState,
    UpdateResult,
    Usage,
    UserVector,
)


class DebugCard(msgspec.Struct, frozen=True):
    card_id: str
    note: str
    base_score: float  # s0
    prob: float  # pi under the policy
    rank: int  # position in the prompt, from 0


class ChatDebug(msgspec.Struct, frozen=True):
    cards: list[DebugCard] = []
    vector_before: UserVector | None = None
    vector_after: UserVector | None = None
    judge: JudgeResult | None = None
    update: UpdateResult | None = None
    extracted: list[ExtractedPreference] = []


class ChatContext(msgspec.Struct, frozen=True):
    """Everything ``chat_complete`` needs: the prepared prompt and where it belongs."""

    user_id: str
    session_id: str
    turn: int
    method: str
    messages: list[Message]
    notes: list[str]
    debug: ChatDebug


class ChatResult(msgspec.Struct, frozen=True):
    answer: str
    usage: Usage
    session_id: str
    turn: int
    debug: ChatDebug


class Feedback(msgspec.Struct, frozen=True):
    """An explicit reward in [-1, 1] for one turn (default: the user's last answered turn),
    or a judge label (its reward and gate, as if the judge had said it)."""

    user_id: str
    reward: float = 0.0
    confidence: float = 1.0
    session_id: str = ""
    turn: int = 0
    label: RewardLabel | None = None


class UserSnapshot(msgspec.Struct):
    """A user's whole state, for save and load."""

    user_id: str
    cards: list[Card]
    embeddings: dict[str, CardEmbedding]
    vector: UserVector | None
    history: list[Message]
    summary: str
    reflection: list[str]


class PersonalizedLLM:
    def __init__(self, engine: Engine, store: StateStore) -> None:
        self.engine = engine
        self.store = store

    @classmethod
    def from_config(cls, path_or_mapping: str | Path | Mapping[str, Any] | EngineConfig | None = None) -> PersonalizedLLM:
        config = path_or_mapping if isinstance(path_or_mapping, EngineConfig) else load_config(path_or_mapping)
        if config.redis_url:
            from vars_core.store.connect import connect
            from vars_core.store.redis_backend import RedisBackend

            store = StateStore(RedisBackend(connect(config.redis_url)))
        else:
            store = StateStore(MemoryBackend())
        return cls(Engine(config), store)

    # chat -----------------------------------------------------------------------
    def chat(self, user_id: str, query: str, method: str | None = None) -> ChatResult:
        context = self.chat_prepare(user_id, query, method)
        ctx = self._ctx(context.session_id, context.turn)
        try:
            reply = generate.agent_reply(ctx, context.messages)
        except Exception:
            # The turn stays answered (empty), so the next turn is not stuck behind it.
            generate.commit_reply(ctx, context.notes, AgentReply(content=""))
            raise
        return self._complete(context, reply)

    def chat_prepare(self, user_id: str, query: str, method: str | None = None) -> ChatContext:
        """Judge the previous turn, update, extract, retrieve and build the prompt; no LLM
        call for the answer, so a caller can batch those itself."""
        if not query.strip():
            raise ValueError("query is empty")
        method = get_method(method or self.engine.config.method).name
        user = self.store.user(user_id)
        session = current_session(self.store, user)
        if session is not None and session.method != method:
            self.reset_session(user_id)
            session = None
        if session is None:
            session = start_live_session(self.engine, self.store, user_id, method, query)
        before = self._vector(user_id)
        turn = begin_turn(self.engine, self.store, session, query)
        run_until_generate(self.engine, self.store, session, turn)
        ctx = self._ctx(session.session_id, turn)
        notes, messages = generate.prepare(ctx)
        return ChatContext(user_id, session.session_id, turn, method, messages, notes, self._debug(ctx, before))

    def chat_complete(self, answer: str, context: ChatContext, usage: Usage | None = None) -> ChatResult:
        return self._complete(context, AgentReply(answer, usage or Usage()))

    def _complete(self, context: ChatContext, reply: AgentReply) -> ChatResult:
        ctx = self._ctx(context.session_id, context.turn)
        generate.commit_reply(ctx, context.notes, reply)
        return ChatResult(reply.content, reply.usage, context.session_id, context.turn, context.debug)

    # feedback and resets --------------------------------------------------------
    def apply_feedback(self, feedback: Feedback) -> UpdateResult:
        """One REINFORCE step from an explicit reward, on the retrieval trace of that turn.
        Applied at most once per turn."""
        if not -1.0 <= feedback.reward <= 1.0:
            raise ValueError(f"reward must be in [-1, 1], got {feedback.reward}")
        user = self.store.user(feedback.user_id)
        session_id = feedback.session_id
        if not session_id:
            session = current_session(self.store, user)
            if session is None:
                raise ValueError(f"user {feedback.user_id!r} has no live session to give feedback on")
            session_id = session.session_id
        session = self.store.session(session_id)
        if session.user_id != feedback.user_id:
            raise PermissionError(f"session {session_id!r} is not user {feedback.user_id!r}'s")
        turn = feedback.turn or last_turn(self.store, session)
        data = self.store.backend.get(user.trace_key(session_id, turn))
        if data is None:
            return UpdateResult(applied=False, reason=f"no retrieval trace for turn {turn}")
        trace = decode(data, RetrievalTrace)
        if feedback.label is not None:
            judge = gate(feedback.label, feedback.confidence)
        else:
            label = "pos_praise" if feedback.reward > 0 else "neg_correction" if feedback.reward < 0 else "neutral"
            judge = JudgeResult(label, feedback.confidence, feedback.reward, True, feedback.confidence)
        cfg = self.engine.config
        ctx = self._ctx(session_id, turn)
        outcome: list[UpdateResult] = []

        def build() -> list[Op]:
            vector = user.vector(cfg.projection_dim, trace.projection_version)
            new_vector, result = reinforce_update(vector, trace, judge, cfg.reinforce, cfg.policy)
            outcome.append(result)
            ops = [self.store.stage_output_op(session_id, turn, "feedback", result)]
            if result.applied:
                ops += ctx.vector_ops(vector, new_vector)
            return ops

        if not self.store.transact_stage(session_id, turn, "feedback", ctx.vector_watch(), build):
            return UpdateResult(applied=False, reason=f"feedback for turn {turn} was already applied")
        return outcome[-1]

    def reset_session(self, user_id: str) -> None:
        """End the user's live session: z_short goes to zero, z_long and memory stay."""
        user = self.store.user(user_id)
        session = current_session(self.store, user)
        if session is not None:
            end_session(self._ctx(session.session_id, START_TURN))
        def build():
            return [Op("del", user.live_session_key), *user.zero_short_ops()], None

        self.store.backend.transact([user.vector_key], build)

    def reset_user(self, user_id: str) -> None:
        """Forget everything about the user: cards, embeddings, vectors, baseline, traces,
        history, notes, sessions; its share of the tenant aggregate goes too."""
        user = self.store.user(user_id)
        version = user.version()

        def build():
            old = user.stored_vector()
            ops = [Op("del", key) for key in self.store.backend.scan(user.prefix)]
            # A fresh version (never a reused one), so no cached index survives.
            ops.append(Op("set", user.version_key, value=str(version + 1).encode()))
            if old is not None:
                ops += tenant_mean_ops(self.store, user_id, old, None)
            return ops, None

        self.store.backend.transact([user.vector_key, user.version_key], build)

    # memory -------------------------------------------------------------------------
    def memory(self, user_id: str, include_superseded: bool = False) -> list[Card]:
        """The user's cards, oldest first: the active ones, or with ``include_superseded``
        also those a later preference replaced (``superseded_by`` names the replacing card)
        or the cap evicted."""
        cards = self.store.user(user_id).cards(include_superseded=include_superseded)
        return sorted(cards.values(), key=lambda c: (c.created_at, c.card_id))

    # persistence ----------------------------------------------------------------
    def save_user(self, user_id: str) -> bytes:
        user = self.store.user(user_id)
        vector = user.stored_vector()
        snapshot = UserSnapshot(
            user_id=user_id,
            cards=list(user.cards(include_superseded=True).values()),
            embeddings=user.embeddings(),
            vector=vector,
            history=user.history(),
            summary=user.summary(),
            reflection=user.reflection(),
        )
        return msgspec.msgpack.encode(snapshot)

    def load_user(self, data: bytes, user_id: str | None = None) -> str:
        """Restore a saved user (under ``user_id`` if given); replaces what was there."""
        try:
            snapshot = msgspec.msgpack.decode(data, type=UserSnapshot)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a saved VARS user: {exc}") from None
        user_id = user_id or snapshot.user_id
        self.reset_user(user_id)
        user = self.store.user(user_id)
        ops: list[Op] = []
        for card in snapshot.cards:
            card = msgspec.structs.replace(card, user_id=user_id)
            ops += user.put_card_ops(card, snapshot.embeddings.get(card.card_id))
        if snapshot.vector is not None:
            ops.append(user.put_vector_op(snapshot.vector))
        ops += [Op("rpush", user.history_key, value=encode(m)) for m in snapshot.history]
        if snapshot.summary:
            ops.append(Op("set", user.summary_key, value=snapshot.summary.encode()))
        if snapshot.reflection:
            ops.append(Op("set", user.reflection_key, value=encode(snapshot.reflection)))
        ops.append(user.bump_version_op())
        self.store.backend.apply(ops)
        return user_id

    # helpers ----------------------------------------------------------------------
    def _ctx(self, session_id: str, turn: int) -> StageContext:
        session: SessionState = self.store.session(session_id)
        return StageContext(self.engine, self.store, session, turn)

    def _vector(self, user_id: str) -> UserVector | None:
        return self.store.user(user_id).stored_vector()

    def _debug(self, ctx: StageContext, before: UserVector | None) -> ChatDebug:
        sid, turn = ctx.session.session_id, ctx.turn
        cards: list[DebugCard] = []
        data = self.store.backend.get(ctx.user.trace_key(sid, turn))
        if data is not None:
            trace = decode(data, RetrievalTrace)
            notes = {c.card_id: c.note for c in ctx.user.cards(include_superseded=True).values()}
            for rank, i in enumerate(trace.chosen):
                cid = trace.candidate_ids[i]
                cards.append(DebugCard(cid, notes.get(cid, ""), trace.base_scores[i], trace.probs[i], rank))
        extracted = self.store.stage_output(sid, turn, "extract", ExtractResult)
        return ChatDebug(
            cards=cards,
            vector_before=before,
            vector_after=self._vector(ctx.user.user_id),
            judge=self.store.stage_output(sid, turn, "judge", JudgeResult),
            update=self.store.stage_output(sid, turn, "update", UpdateResult),
            extracted=list(extracted.extracted) if extracted else [],
        )
