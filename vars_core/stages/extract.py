"""extract: preferences stated in the user's latest messages become (or refresh) cards; for a
learning method, a restated preference also credits the user vector against the conflicting
cards of the list the user just reacted to (the pairwise conflict credit).

The merge, the credit and the vector write are one atomic commit: a duplicate delivery finds
the stage committed and applies nothing twice."""

from __future__ import annotations

from vars_core.conflicts import ConflictCheck
from vars_core.memory import MergePlan, merge_ops, plan_merge
from vars_core.reinforce import pairwise_credit
from vars_core.stages.context import StageContext
from vars_core.store.backend import Op
from vars_core.store.state import decode
from vars_core.types import (
    Card,
    CardEmbedding,
    ExtractResult,
    JudgeResult,
    PairwiseStep,
    RetrievalTrace,
)


def conflicting_cards(
    trace: RetrievalTrace, restated: Card, cards: dict[str, Card | None], conflicts: ConflictCheck
) -> list[str]:
    """The ranked cards of ``trace``'s list whose action conflicts with the restated card's,
    in list order (``cards``: card id -> record, None for a card gone since)."""
    out = []
    for i in trace.chosen:
        cid = trace.candidate_ids[i]
        card = cards.get(cid)
        if cid != restated.card_id and card is not None and conflicts(restated.action, card.action):
            out.append(cid)
    return out


def handle(ctx: StageContext) -> None:
    sid = ctx.session.session_id
    extracted = ctx.engine.extract(ctx.messages())
    engine = ctx.engine
    user = ctx.user
    conflicts = engine.conflict_check_for(ctx.session.lane)
    trace = _credited_trace(ctx)

    def build() -> list[Op]:
        if not extracted:
            return [ctx.output_op("extract", ExtractResult([], [], [], []))]
        active = user.cards(include_superseded=False)
        embeddings = user.embeddings()
        plan = plan_merge(
            user.user_id,
            active,
            embeddings,
            extracted,
            embed=engine.embedder.embed,
            project=engine.projection.project,
            projection_version=engine.projection.version,
            cfg=engine.config.memory,
            created_at=ctx.card_stamp(),
            conflicts=conflicts,
        )
        ops = merge_ops(user, plan)
        steps: list[PairwiseStep] = []
        if trace is not None:
            credit_ops, steps = _credit(ctx, trace, plan, active, embeddings, conflicts)
            ops += credit_ops
        result = ExtractResult(extracted, plan.added, plan.merged, plan.superseded, steps)
        return [*ops, ctx.output_op("extract", result)]

    watch = [user.version_key] + (ctx.vector_watch() if trace is not None else [])
    ctx.store.transact_stage(sid, ctx.turn, "extract", watch, build)


def _credited_trace(ctx: StageContext) -> RetrievalTrace | None:
    """The list the user reacted to, when this turn earns a pairwise credit: a learning
    method, a previous turn with a trace, and a confident negative reaction (the user
    pushed back and said what they wanted)."""
    if not ctx.method.uses_vector or ctx.turn < 2 or ctx.engine.config.reinforce.eta_pairwise <= 0:
        return None
    judge = ctx.store.stage_output(ctx.session.session_id, ctx.turn, "judge", JudgeResult)
    if judge is None or not judge.apply or judge.reward >= 0:
        return None
    data = ctx.store.backend.get(ctx.user.trace_key(ctx.session.session_id, ctx.turn - 1))
    return None if data is None else decode(data, RetrievalTrace)


def _credit(
    ctx: StageContext,
    trace: RetrievalTrace,
    plan: MergePlan,
    active: dict[str, Card],
    embeddings: dict[str, CardEmbedding],
    conflicts: ConflictCheck,
) -> tuple[list[Op], list[PairwiseStep]]:
    """The credit's vector ops and steps for every card this merge restated."""
    cfg = ctx.engine.config
    written = {w.card.card_id: w for w in plan.writes}
    listed = ctx.user.cards_of([trace.candidate_ids[i] for i in trace.chosen])
    vector = before = ctx.user.vector(cfg.projection_dim, trace.projection_version)
    steps: list[PairwiseStep] = []
    for cid in dict.fromkeys(c for c in plan.cards if c):
        card = written[cid].card if cid in written else active.get(cid)
        if card is None:
            continue
        against = conflicting_cards(trace, card, listed, conflicts)
        if not against:
            continue
        emb = (written[cid].embedding if cid in written else None) or embeddings.get(cid)
        item = emb.item if emb is not None and emb.projection_version == trace.projection_version else None
        vector, done = pairwise_credit(vector, trace, cid, item, against, cfg.reinforce, cfg.policy)
        steps += done
    return (ctx.vector_ops(before, vector) if steps else []), steps
