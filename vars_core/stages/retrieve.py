"""retrieve: dense top-K over the user's own cards, s0, then the policy picks the list.

The trace (candidates, their item vectors, pi and the list) is stored under the user's
keys; the next turn's update reads exactly these values."""

from __future__ import annotations

import numpy as np

from vars_core.policy import select
from vars_core.retrieval import base_scores, dense_candidates
from vars_core.stages.context import StageContext
from vars_core.store.backend import Op
from vars_core.store.state import encode
from vars_core.types import RetrieveResult, UserVector


def retrieval_query(opening: str, latest: str) -> str:
    """The session's request plus, after turn 1, what the user just said."""
    return opening if latest == opening or not latest else f"{opening}\n{latest}"


def handle(ctx: StageContext) -> None:
    engine, user, session = ctx.engine, ctx.user, ctx.session
    cfg = engine.config
    latest = ctx.simulator_turn()
    query = retrieval_query(session.opening, latest.message if latest else "")
    cards = user.cards()
    embeddings = user.embeddings()
    active = {cid: embeddings[cid] for cid in cards if cid in embeddings}
    index = engine.index_cache.get(
        user.user_id,
        user.version(),
        lambda: {cid: np.asarray(e.note, dtype=np.float32) for cid, e in active.items()},
    )
    query_embedding = engine.embedder.embed([query])[0]
    candidate_ids, cosines = dense_candidates(index, query_embedding, cfg.policy.top_k_dense)
    candidate_ids = [cid for cid in candidate_ids if cid in active]  # a card deleted since
    cosines = cosines[: len(candidate_ids)]
    items = np.asarray([active[cid].item for cid in candidate_ids], dtype=np.float32).reshape(
        len(candidate_ids), cfg.projection_dim
    )
    projection_version = engine.projection.version
    if ctx.method.uses_vector:
        vector = user.vector(cfg.projection_dim, projection_version)
    else:  # rag: the policy sees no user vector
        zeros = [0.0] * cfg.projection_dim
        vector = UserVector(z_long=zeros, z_short=zeros, projection_version=projection_version)
    trace = select(
        user.user_id,
        candidate_ids,
        base_scores(cosines),
        items,
        vector,
        cfg.policy,
        ctx.rng("retrieve"),
        learning=ctx.method.uses_vector,
        projection_version=projection_version,
    )
    chosen_ids = [trace.candidate_ids[i] for i in trace.chosen]
    result = RetrieveResult(chosen_ids, [cards[cid].note for cid in chosen_ids])
    ops = [
        Op("set", user.trace_key(session.session_id, ctx.turn), value=encode(trace)),
        ctx.output_op("retrieve", result),
    ]
    ctx.commit("retrieve", ops)
