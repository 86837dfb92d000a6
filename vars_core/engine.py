"""The process-wide resources that stage handlers use: models, backends, projection, caches.

One Engine per process, built from an EngineConfig. Every backend is made lazily on first
use, so a worker for a stage that never embeds never loads the embedder, and a campaign
on the scripted world never opens an HTTP client.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import cached_property, partial
from typing import Any

import msgspec
import numpy as np

from vars_core.backend_stats import BackendStats
from vars_core.config import EngineConfig, LLMConfig
from vars_core.conflicts import ConflictCheck, table_conflict
from vars_core.embedder import Embedder
from vars_core.extractor import rule_extract
from vars_core.judge import keyword_judge
from vars_core.projection import Projection, random_projection
from vars_core.reply_stream import ReplySink, redis_reply_sink
from vars_core.retrieval import IndexCache
from vars_core.scripted.agent import ScriptedAgentParams
from vars_core.scripted.user import ScriptedUserParams, simulate_turn
from vars_core.types import (
    ExtractedPreference,
    JudgeResult,
    Message,
    Problem,
    Profile,
    SimulatorTurn,
)

JudgeFn = Callable[[str, str, str], JudgeResult]
ExtractFn = Callable[[list[Message]], list[ExtractedPreference]]
# (question, reference answer, candidate answer) -> correct? (vars_core.grading.AnswerJudge)
AnswerJudgeFn = Callable[[str, str, str], bool]
# (profile, problem, opening, history, turn, max_turns, rng) -> the user's turn
SimulatorFn = Callable[
    [Profile, Problem, str, list[Message], int, int, np.random.Generator], SimulatorTurn
]
ReplySinkFactory = Callable[[Any, str, int], ReplySink | None]
# Roles whose components keep BackendStats counters (calls, repairs, fallbacks, errors).
STATS_ROLES = ("judge", "extractor", "simulator", "answer_judge", "conflict_judge")


def make_role_llm(cfg: LLMConfig, role: str) -> Any:
    """An OpenAI-compatible client for one role (agent, judge, extractor, simulator)."""
    from vars_core.llm.registry import make_llm

    if cfg.kind == "scripted":
        return make_llm("scripted")
    if not cfg.base_url:
        raise ValueError(f"{role}: an openai backend needs base_url")
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    return make_llm(
        "openai",
        base_url=cfg.base_url,
        model=cfg.model,
        api_key=api_key,
        max_concurrency=cfg.max_concurrency,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        schema_format=cfg.schema_format,
        name=role,
    )


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        embedder: Embedder | None = None,
        user_params: ScriptedUserParams | None = None,
        agent_params: ScriptedAgentParams | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self._embedder = embedder
        self.user_params = user_params or ScriptedUserParams()
        self.agent_params = agent_params or ScriptedAgentParams()
        self.index_cache = IndexCache()
        self._reranker_cache: dict[str, Any] = {}  # kind -> reranker, made on first use
        # Where a live turn's reply streams as it is generated (replaceable: any
        # (store, session_id, turn) -> ReplySink | None).
        self.reply_sink: ReplySinkFactory = redis_reply_sink
        self._lock = threading.Lock()
        # One counter set per LLM-backed role, shared by every component of that role
        # this engine builds; read them with ``backend_stats()``.
        self.stats: dict[str, BackendStats] = {role: BackendStats() for role in STATS_ROLES}
        # A derived engine (``derive``) borrows these in-process resources from its donor.
        self._donor: Engine | None = None
        self._borrowed: frozenset[str] = frozenset()

    def derive(self, config: EngineConfig) -> Engine:
        """An engine for ``config`` (a campaign's own backends) that shares this engine's
        in-process models where their settings are the same: the embedder (and with it the
        projection), the reranker, the problem bank and the FAISS index cache. Its LLM
        clients are its own, made on first use."""
        if config == self.config:
            return self
        child = Engine(config, user_params=self.user_params, agent_params=self.agent_params)
        borrowed = {"problem_bank"}
        if config.embedder == self.config.embedder:
            borrowed.add("embedder")
            same_projection = (config.projection, config.projection_dim, config.projection_seed) == (
                self.config.projection,
                self.config.projection_dim,
                self.config.projection_seed,
            )
            if same_projection:
                borrowed.add("projection")
        if config.reranker == self.config.reranker:
            child._reranker_cache = self._reranker_cache  # the same models, loaded once
        # Indexes are keyed by user and store version; a campaign's users are its own.
        child.index_cache = self.index_cache
        child.reply_sink = self.reply_sink
        child._donor, child._borrowed = self, frozenset(borrowed)
        return child

    def _borrow(self, name: str) -> Any:
        return getattr(self._donor, name) if self._donor is not None and name in self._borrowed else None

    def backend_stats(self) -> dict[str, dict[str, int]]:
        return {role: stats.snapshot() for role, stats in self.stats.items()}

    # models ---------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._borrow("embedder") or self._make_embedder()
            return self._embedder

    def _make_embedder(self) -> Embedder:
        from vars_core.batched import BatchedEmbedder, embedder_batched
        from vars_core.embedder import make_embedder

        cfg = self.config.embedder
        options = {k: v for k, v in msgspec.structs.asdict(cfg).items() if k != "kind" and v not in ("", None)}
        if not embedder_batched(self.config.batcher, cfg):
            return make_embedder(cfg.kind, **options)  # minilm on CPU: the shared instance
        # Merged requests are only worth it if the model runs them as one padded pass.
        batcher = self.config.batcher
        inner = make_embedder(cfg.kind, **options, batch_invariant=False)
        return BatchedEmbedder(inner, batcher.max_items, batcher.max_wait_ms)

    def scripted_world(self, lane: str) -> bool:
        """Is this lane's traffic the scripted world? Campaign lanes whose simulated user is
        scripted: the catalog knows every preference their users state."""
        return lane == "campaign" and self.config.simulator == "scripted"

    def reranker_for(self, lane: str) -> Any:
        """The reranker of a lane's retrievals (None for "none"). Kind "auto" is the
        scripted reranker in the scripted world and "none" elsewhere."""
        kind = self.config.reranker.kind
        if kind == "auto":
            kind = "scripted" if self.scripted_world(lane) else "none"
        return self._rerankers(kind)

    def _rerankers(self, kind: str) -> Any:
        if kind == "none":
            return None
        with self._lock:
            if kind not in self._reranker_cache:
                self._reranker_cache[kind] = self._make_reranker(kind)
            return self._reranker_cache[kind]

    def _make_reranker(self, kind: str) -> Any:
        from vars_core.batched import BatchedReranker, reranker_batched
        from vars_core.rerankers import make_reranker

        cfg = self.config.reranker
        options = {k: v for k, v in msgspec.structs.asdict(cfg).items() if k != "kind" and v not in ("", None)}
        reranker = make_reranker(kind, **options)
        if reranker_batched(self.config.batcher, cfg):
            batcher = self.config.batcher
            return BatchedReranker(reranker, batcher.max_items, batcher.max_wait_ms)
        return reranker

    def conflict_check_for(self, lane: str) -> ConflictCheck:
        """Whether two actions conflict, for a lane's memory and pairwise credit: "auto" is
        the LLM judge when ``memory.conflict_llm`` is an openai backend, the scripted judge
        in the scripted world, else the generic table."""
        cfg = self.config.memory
        kind = cfg.conflict_judge
        if kind == "auto":
            if cfg.conflict_llm.kind == "openai":
                kind = "llm"
            else:
                kind = "scripted" if self.scripted_world(lane) else "table"
        if kind == "llm":
            return self._llm_conflict_judge
        if kind == "scripted":
            return self._scripted_conflict_judge
        return table_conflict

    @cached_property
    def _llm_conflict_judge(self) -> ConflictCheck:
        from vars_core.conflicts import LLMConflictJudge

        return LLMConflictJudge(
            make_role_llm(self.config.memory.conflict_llm, "conflict_judge"), stats=self.stats["conflict_judge"]
        )

    @cached_property
    def _scripted_conflict_judge(self) -> ConflictCheck:
        from vars_core.scripted.conflicts import ScriptedConflictJudge

        return ScriptedConflictJudge(self.config.memory.scripted_conflict_error)

    @cached_property
    def projection(self) -> Projection:
        if "projection" in self._borrowed:
            return self._borrow("projection")
        if self.config.projection == "pca":
            from vars_core.projection import load_projection

            return load_projection("pca")
        return random_projection(
            input_dim=self.embedder.dim,
            dim=self.config.projection_dim,
            seed=self.config.projection_seed,
        )

    @cached_property
    def problem_bank(self):  # -> ProblemBank; imported lazily: it reads the shipped data
        if "problem_bank" in self._borrowed:
            return self._borrow("problem_bank")
        from vars_core.problems import ProblemBank, known_domains, load_problems

        return ProblemBank(load_problems(known_domains()))

    # roles ----------------------------------------------------------------------
    @property
    def agent_is_scripted(self) -> bool:
        return self.config.agent.kind == "scripted"

    @cached_property
    def agent_llm(self) -> Any:
        return make_role_llm(self.config.agent, "agent")

    @cached_property
    def judge(self) -> JudgeFn:
        if self.config.judge == "keyword":
            return keyword_judge
        from vars_core.llm_judge import LLMJudge

        return LLMJudge(make_role_llm(self.config.judge_llm, "judge"), stats=self.stats["judge"]).judge

    @cached_property
    def extract(self) -> ExtractFn:
        if self.config.extractor == "rules":
            return lambda messages: rule_extract(messages, window=1)
        from vars_core.llm_extractor import LLMExtractor

        return LLMExtractor(
            make_role_llm(self.config.extractor_llm, "extractor"),
            window=self.config.extractor_window,
            stats=self.stats["extractor"],
        ).extract

    @cached_property
    def answer_judge(self) -> AnswerJudgeFn | None:
        """The LLM answer judge for free-form problems, or None when no openai backend is
        configured for it (see ``EngineConfig.answer_judge_llm``)."""
        cfg = self.config.answer_judge_llm
        if cfg.kind != "openai":
            cfg = self.config.judge_llm
            if self.config.judge != "llm" or cfg.kind != "openai":
                return None
        from vars_core.answer_judge import LLMAnswerJudge

        return LLMAnswerJudge(make_role_llm(cfg, "answer_judge"), stats=self.stats["answer_judge"])

    @cached_property
    def simulator(self) -> SimulatorFn:
        """The simulated user of campaigns: the scripted rule, or ``LLMUser`` (an object
        with ``stats`` and ``examples``) when ``simulator = "llm"``."""
        if self.config.simulator == "scripted":
            return partial(simulate_turn, params=self.user_params, answer_judge=self.answer_judge)
        from vars_core.llm_user import LLMUser

        cfg = self.config.simulator_llm
        return LLMUser(
            make_role_llm(cfg, "simulator"),
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            params=self.user_params,
            answer_judge=self.answer_judge,
            stats=self.stats["simulator"],
        )

