"""retrieve: dense top-K over the user's own cards, s0, then the policy picks the list.

The trace (candidates, their item vectors, pi and the list) is stored under the user's
keys; the next turn's update reads exactly these values."""

from __future__ import annotations

import numpy as np

from vars_core.embedder import Embedder, query_embeddings
from vars_core.retrieval import active_embeddings, retrieve
from vars_core.stages.context import StageContext
from vars_core.store.backend import Op
from vars_core.store.state import encode
from vars_core.types import RetrieveResult


def retrieval_query(opening: str, latest: str) -> str:
    """The session's request plus, after turn 1, what the user just said (the reranker's
    query text)."""
    return opening if latest == opening or not latest else f"{opening}\n{latest}"


MAX_QUERY_PARAGRAPHS = 8


def query_vector(embedder: Embedder, opening: str, latest: str) -> np.ndarray:
    """The dense query: the opening's paragraphs embedded one by one and averaged, plus,
    after turn 1, the latest message's embedding; renormalized.

    A request ("Quick question: I'm working on a math problem.") over a pasted problem
    keeps its weight next to the problem's many tokens, and the embedder's text cache
    serves the opening for every turn of a session and templated feedback for every
    session."""
    paragraphs = [p.strip() for p in opening.split("\n\n") if p.strip()][:MAX_QUERY_PARAGRAPHS]
    rows = query_embeddings(embedder, paragraphs or [opening])
    combined = _unit(rows.sum(axis=0))
    if latest and latest != opening:
        combined = _unit(combined + query_embeddings(embedder, [latest])[0])
    return combined.astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def handle(ctx: StageContext) -> None:
    engine, user, session = ctx.engine, ctx.user, ctx.session
    cfg = engine.config
    latest = ctx.simulator_turn()
    query = retrieval_query(session.opening, latest.message if latest else "")
    cards = user.cards()
    embeddings = {cid: e for cid, e in user.embeddings().items() if cid in cards}
    index = engine.index_cache.get(
        user.user_id,
        user.version(),
        lambda: active_embeddings(cards, embeddings, cfg.policy.match_on),
    )
    projection_version = engine.projection.version
    # rag: the policy sees no user vector (and so samples nothing: greedy top-k).
    vector = user.vector(cfg.projection_dim, projection_version) if ctx.method.uses_vector else None
    trace = retrieve(
        user.user_id,
        query_vector(engine.embedder, session.opening, latest.message if latest else ""),
        index,
        embeddings,
        vector,
        cfg.policy,
        ctx.rng("retrieve"),
        learning=ctx.method.uses_vector,
        projection_version=projection_version,
        rerank=engine.reranker,
        query=query,
        notes={cid: card.note for cid, card in cards.items()},
    )
    chosen_ids = [trace.candidate_ids[i] for i in trace.chosen]
    result = RetrieveResult(chosen_ids, [cards[cid].note for cid in chosen_ids])
    ops = [
        Op("set", user.trace_key(session.session_id, ctx.turn), value=encode(trace)),
        ctx.output_op("retrieve", result),
    ]
    ctx.commit("retrieve", ops)
