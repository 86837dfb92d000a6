"""The process-wide resources that stage handlers use: models, projection, caches, settings.

One Engine per process. Models load lazily on first use, so a worker for a stage that
never embeds never loads the embedder.
"""

from __future__ import annotations

import threading
from functools import cached_property

from vars_core.config import EngineConfig
from vars_core.embedder import Embedder, default_embedder
from vars_core.projection import Projection, random_projection
from vars_core.retrieval import IndexCache
from vars_core.scripted.agent import ScriptedAgentParams
from vars_core.scripted.user import ScriptedUserParams


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
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = default_embedder()
            return self._embedder

    @cached_property
    def projection(self) -> Projection:
        return random_projection(
            input_dim=self.embedder.dim,
            dim=self.config.projection_dim,
            seed=self.config.projection_seed,
        )

    @cached_property
    def problem_bank(self):  # -> ProblemBank; imported lazily: it reads the shipped data
        from vars_core.problems import ProblemBank, known_domains, load_problems

        return ProblemBank(load_problems(known_domains()))
