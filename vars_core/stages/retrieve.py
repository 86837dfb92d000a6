"""retrieve: dense top-K over the user's own cards, s0, then the policy picks the list.

The trace (candidates, their item vectors, s0, the learned term, pi and the list) is
stored under the user's keys; the next turn's update and the pairwise credit read exactly
these values. The prompt gets the k ranked cards, then the global cards that bypassed
ranking."""

from __future__ import annotations

import numpy as np

from vars_core.embedder import Embedder, query_embeddings
from vars_core.retrieval import IndexCache, UserIndex, retrieve
from vars_core.stages.context import StageContext
from vars_core.store import UserScope
from vars_core.store.backend import Op
from vars_core.store.state import START_TURN, encode
from vars_core.types import RetrieveResult, UserVector


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


def user_index(cache: IndexCache, user: UserScope, match_on: str) -> UserIndex:
    """The user's index at the store's version, reading as little as it can: the cached
    one (one GET); the cached one patched with the cards the change log names since it was
    built; or, when the log cannot account for every version since (a reset, a write
    without a log entry, nothing cached), one built from every active card."""

    def build(stale: UserIndex | None) -> UserIndex:
        since = stale.log_length if stale is not None and stale.log_length >= 0 else None
        snap = user.change_snapshot(since)
        if (
            stale is not None
            and since is not None
            and snap.changed is not None
            and snap.version - stale.version == snap.log_length - since
        ):
            changed = user.cards_of(snap.changed)
            embeddings = user.embeddings_of(snap.changed)
            return stale.patched(changed, embeddings, match_on, snap.version, snap.log_length)
        cards = user.cards()
        embeddings = user.embeddings_of(list(cards))
        return UserIndex.from_cards(cards, embeddings, match_on, snap.version, snap.log_length)

    return cache.get_or_update(user.user_id, user.version(), build)


def served_vector(ctx: StageContext, projection_version: str) -> UserVector:
    """The vector this turn ranks with: the user's current one, or (``refresh = "session"``)
    the one the session started with; a session started before such copies were kept
    uses the current one."""
    cfg = ctx.engine.config
    if cfg.policy.refresh == "session":
        start = ctx.store.stage_output(ctx.session.session_id, START_TURN, "vector", UserVector)
        if start is not None:
            return start
    return ctx.user.vector(cfg.projection_dim, projection_version)


def handle(ctx: StageContext) -> None:
    engine, user, session = ctx.engine, ctx.user, ctx.session
    cfg = engine.config
    latest = ctx.simulator_turn()
    query = retrieval_query(session.opening, latest.message if latest else "")
    # A cached index holds the cards' item vectors and notes: no card is read here.
    index = user_index(engine.index_cache, user, cfg.policy.match_on)
    projection_version = engine.projection.version
    # rag: the policy sees no user vector (and so never explores: greedy top-k).
    vector = served_vector(ctx, projection_version) if ctx.method.uses_vector else None
    trace = retrieve(
        user.user_id,
        query_vector(engine.embedder, session.opening, latest.message if latest else ""),
        index,
        None,
        vector,
        cfg.policy,
        ctx.rng("retrieve"),
        learning=ctx.method.uses_vector,
        projection_version=projection_version,
        rerank=engine.reranker_for(session.lane),
        query=query,
        opening=session.opening,
    )
    prompt_ids = [trace.candidate_ids[i] for i in trace.chosen] + trace.bypassed
    result = RetrieveResult(prompt_ids, index.notes_of(prompt_ids))
    ops = [
        Op("set", user.trace_key(session.session_id, ctx.turn), value=encode(trace)),
        ctx.output_op("retrieve", result),
    ]
    ctx.commit("retrieve", ops)
