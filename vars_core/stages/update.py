"""update: one REINFORCE step on the user's vector from this turn's reward and the
retrieval trace of the previous turn. The read-modify-write of the vector is atomic."""

from __future__ import annotations

from vars_core.reinforce import reinforce_update
from vars_core.stages.context import StageContext
from vars_core.store.state import decode
from vars_core.types import JudgeResult, RetrievalTrace, UpdateResult


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
        new_vector, result = reinforce_update(vector, trace, judge, cfg.reinforce, cfg.policy)
        ops = [ctx.output_op("update", result)]
        if result.applied:
            ops += ctx.vector_ops(vector, new_vector)
        return ops

    ctx.store.transact_stage(sid, ctx.turn, "update", ctx.vector_watch(), build)
