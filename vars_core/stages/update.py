"""update: one REINFORCE step on the user's vector from this turn's reward and the
retrieval trace of the previous turn. The read-modify-write of the vector is atomic."""

from __future__ import annotations

from vars_core.notes import restated_notes
from vars_core.reinforce import reinforce_update
from vars_core.stages.context import StageContext
from vars_core.store.state import decode
from vars_core.tenant import tenant_key, tenant_mean_ops, tenant_of
from vars_core.types import JudgeResult, RetrievalTrace, UpdateResult


def restated_candidates(ctx: StageContext, trace: RetrievalTrace) -> list[int]:
    """Indices of the trace's candidates whose note the user's message restates."""
    message = next(
        (m.content for m in reversed(ctx.messages()) if m.role == "user" and m.turn == ctx.turn), ""
    )
    cards = ctx.user.cards(include_superseded=True)  # a card deleted since has no note
    notes = [cards[cid].note if cid in cards else "" for cid in trace.candidate_ids]
    return restated_notes(message, notes)


def handle(ctx: StageContext) -> None:
    sid = ctx.session.session_id
    judge = ctx.store.stage_output(sid, ctx.turn, "judge", JudgeResult)
    trace_data = ctx.store.backend.get(ctx.user.trace_key(sid, ctx.turn - 1))
    cfg = ctx.engine.config

    def build():
        if judge is None or trace_data is None:
            result = UpdateResult(applied=False, reason="no judge result or no trace")
            return [ctx.output_op("update", result)]
        trace = decode(trace_data, RetrievalTrace)
        vector = ctx.user.vector(cfg.projection_dim, trace.projection_version)
        new_vector, result = reinforce_update(
            vector, trace, judge, cfg.reinforce, cfg.policy, restated=restated
        )
        ops = [ctx.output_op("update", result)]
        if result.applied:
            ops.append(ctx.user.put_vector_op(new_vector))
            if keeps_tenant_mean:
                ops += tenant_mean_ops(ctx.store, ctx.user.user_id, vector, new_vector)
        return ops

    restated: list[int] = []
    if judge is not None and judge.label == "neg_constraint_restate" and cfg.reinforce.restate_credit > 0 and trace_data:
        restated = restated_candidates(ctx, decode(trace_data, RetrievalTrace))
    # Live users feed their tenant's cold-start mean; campaign lanes never do.
    keeps_tenant_mean = ctx.session.lane == "live" and cfg.cold_start == "tenant_mean"
    watch = [ctx.user.vector_key]
    if keeps_tenant_mean:
        watch.append(tenant_key(ctx.store, tenant_of(ctx.user.user_id)))
    ctx.store.transact_stage(sid, ctx.turn, "update", watch, build)
