"""Session start and end: the two steps around the turn loop."""

from __future__ import annotations

import msgspec

from vars_core.engine import Engine
from vars_core.rng import rng_for
from vars_core.scripted.user import opening_message
from vars_core.session_memory import history_tokens, reflect, summarize
from vars_core.session_metrics import is_repetition
from vars_core.stages.context import StageContext, world_key
from vars_core.store import StateStore
from vars_core.store.backend import Op
from vars_core.store.state import START_TURN, encode
from vars_core.tokens import count_tokens
from vars_core.types import (
    GenerateResult,
    JudgeResult,
    Message,
    Profile,
    SessionRecord,
    SessionState,
    SimulatorTurn,
    UpdateResult,
)


def start_session(engine: Engine, store: StateStore, state: SessionState) -> SessionState:
    """Decide the opening, store the session, and zero the user's short-term vector.

    Idempotent: a second call for the same session id returns the stored state.
    """
    if store.is_committed(state.session_id, START_TURN, "start"):
        return store.session(state.session_id)
    profile = store.profile(state.campaign_id, state.profile_id, Profile)
    rng = rng_for(state.seed, world_key(state), START_TURN, "start")
    opening, probe = opening_message(profile, state.problem, rng, engine.user_params)
    state = msgspec.structs.replace(state, opening=opening, conflict_probe=probe)
    user = store.user(state.user_id)

    def build() -> list[Op]:
        return [store.put_session_op(state), *user.session_start_ops(state.session_id)]

    store.transact_stage(state.session_id, START_TURN, "start", [user.vector_key], build)
    return store.session(state.session_id)


def session_record(ctx: StageContext) -> SessionRecord:
    """Summarize a finished session from its committed stage outputs."""
    session, store = ctx.session, ctx.store
    sid = session.session_id
    record = SessionRecord(
        session_id=sid,
        campaign_id=session.campaign_id,
        user_id=session.user_id,
        profile_id=session.profile_id,
        method=session.method,
        session_index=session.session_index,
        problem_id=session.problem.problem_id,
        domain=session.problem.domain,
    )
    turn, replies = 1, []
    while (sim := store.stage_output(sid, turn, "simulate", SimulatorTurn)) is not None:
        record.user_tokens += count_tokens(sim.message)
        record.enforcements += len(sim.enforced)
        record.applicable_pairs += len(sim.satisfied)
        record.satisfied_pairs += sum(sim.satisfied.values())
        if turn == 2:  # the rating of the first reply
            record.conflict_probes += len(sim.conflict_correct)
            record.conflict_correct += sum(sim.conflict_correct)
        if turn >= 2:
            record.rated_turns += 1
            record.over_personalized_turns += bool(sim.over_personalized)
        record.simulator_fallbacks += bool(sim.fallback)
        judge = store.stage_output(sid, turn, "judge", JudgeResult)
        if judge is not None and judge.apply:
            record.rewards.append(judge.reward)
        update = store.stage_output(sid, turn, "update", UpdateResult)
        if update is not None and update.applied:
            record.updates_applied += 1
        if sim.terminate:
            record.timeout = sim.timeout
            record.success = sim.solved
            break
        generated = store.stage_output(sid, turn, "generate", GenerateResult)
        if generated is not None:
            record.turns += 1
            record.agent_tokens += generated.reply.usage.completion_tokens
            if replies and is_repetition(replies[-1], generated.reply.content):
                record.repetitions += 1
            replies.append(generated.reply.content)
        turn += 1
    return record


def carry_over_ops(ctx: StageContext) -> list[Op]:
    """What contextual and reflection keep from this session for the next ones."""
    memory, user = ctx.method.memory, ctx.user
    messages = ctx.messages()
    llm = None if ctx.engine.agent_is_scripted else ctx.engine.agent_llm
    if memory == "reflection":
        notes = reflect(user.reflection(), messages, llm)
        return [Op("set", user.reflection_key, value=encode(notes))]
    if memory != "history":
        return []
    history = user.history() + list(messages)
    if history_tokens(history) <= ctx.engine.config.context_budget_tokens:
        return [Op("rpush", user.history_key, value=encode(m)) for m in messages]
    earlier = user.summary()
    prior = [Message("system", earlier)] if earlier else []
    summary = summarize(prior + history, llm)
    return [Op("del", user.history_key), Op("set", user.summary_key, value=summary.encode())]


def end_session(ctx: StageContext, failure: str = "") -> SessionRecord:
    """Commit the session's record once (and count it in its campaign, and carry its
    memory over for contextual and reflection); later calls return the committed one.
    ``failure`` marks a session that could not go on."""
    store, session, user = ctx.store, ctx.session, ctx.user
    record = session_record(ctx)
    if failure:
        record.status, record.failure = "failed", failure

    def build() -> list[Op]:
        # A failed session's memory is not carried over: `vars campaign retry` runs it
        # again, and its successful end carries it over once (no partial history twice).
        ops = [store.put_session_record_op(record), *([] if failure else carry_over_ops(ctx))]
        if session.campaign_id:
            campaign = session.campaign_id
            ops += [
                Op("rpush", store.keys.campaign(campaign, "finished"), value=session.session_id.encode()),
                Op("incr", store.keys.campaign(campaign, "failed" if failure else "done"), value=b"1"),
            ]
        return ops

    watch = [user.history_key, user.summary_key, user.reflection_key]
    store.transact_stage(session.session_id, START_TURN, "end", watch, build)
    if session.campaign_id:
        # finished_at is set right after the counters' commit, not inside it: deciding it
        # in the transaction would mean WATCHing the campaign-wide done/failed counters, so
        # every concurrent session end of the campaign would conflict and re-run ``build``
        # (carry_over_ops may call an LLM to reflect or summarize). Instead each end, after
        # its own increment, sets the stamp if absent once done + failed reaches the total:
        # the end that completes the campaign always sees it. Should that worker die right
        # here, `vars campaign status` sets it on first observation (scheduler/status.py).
        from vars_core.campaign import mark_finished_if_complete  # campaign imports stages

        mark_finished_if_complete(store, session.campaign_id)
    committed = store.session_record(session.session_id)
    assert committed is not None
    return committed
