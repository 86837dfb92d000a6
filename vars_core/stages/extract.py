"""extract: preferences stated in the user's latest messages become (or refresh) cards."""

from __future__ import annotations

from vars_core.memory import merge_ops, plan_merge
from vars_core.stages.context import StageContext
from vars_core.types import ExtractResult


def handle(ctx: StageContext) -> None:
    sid = ctx.session.session_id
    extracted = ctx.engine.extract(ctx.messages())
    engine = ctx.engine
    user = ctx.user

    def build():
        if not extracted:
            return [ctx.output_op("extract", ExtractResult([], [], [], []))]
        plan = plan_merge(
            user.user_id,
            user.cards(include_superseded=False),
            user.embeddings(),
            extracted,
            embed=engine.embedder.embed,
            project=engine.projection.project,
            projection_version=engine.projection.version,
            cfg=engine.config.memory,
            created_at=ctx.card_stamp(),
        )
        result = ExtractResult(extracted, plan.added, plan.merged, plan.superseded)
        return [*merge_ops(user, plan), ctx.output_op("extract", result)]

    ctx.store.transact_stage(sid, ctx.turn, "extract", [user.version_key], build)
