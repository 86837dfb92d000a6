"""Engine settings. Defaults are DESIGN §4's; every field can be set from TOML or VARS_* env."""

from __future__ import annotations

from typing import Literal

import msgspec


class PolicyConfig(msgspec.Struct, frozen=True):
    top_k_dense: int = 64  # FAISS candidates per query
    list_size: int = 5  # k cards in the prompt
    tau: float = 1.0
    beta_long: float = 2.0
    beta_short: float = 5.0


class ReinforceConfig(msgspec.Struct, frozen=True):
    eta_long: float = 0.001
    eta_short: float = 0.002
    alpha: float = 0.05  # baseline step
    decay_short: float = 0.1  # lambda: z_short decay per applied update
    gradient: Literal["exact", "heuristic"] = "exact"
    min_advantage: float = 1e-6


class MemoryConfig(msgspec.Struct, frozen=True):
    dedup_cosine: float = 0.95  # note cosine at or above which a new card is a duplicate
    supersede_cosine: float = 0.9  # condition cosine at or above which conditions match
    max_cards: int = 500  # per-user cap; the oldest unreinforced cards go first


class EngineConfig(msgspec.Struct, frozen=True):
    policy: PolicyConfig = PolicyConfig()
    reinforce: ReinforceConfig = ReinforceConfig()
    memory: MemoryConfig = MemoryConfig()
    projection_dim: int = 256
    projection_seed: int = 0
    embedder: str = "minilm"  # registered embedder name
