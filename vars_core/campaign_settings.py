"""A campaign's own engine settings: the spec's `reward` and `[backends.<role>]` tables
applied over a worker's configuration.

Workers are started with one configuration (VARS_CONFIG / VARS_* variables), but a
campaign may name its own backends per role (agent, simulator, judge, extractor,
embedder, reranker) and its reward mode. The keys a spec wrote replace the worker's
values for that role; the keys it did not write keep the worker's. ``campaign_config``
is the plain function; the worker caches one derived Engine per campaign.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vars_core.config import ConfigError, EmbedderConfig, EngineConfig, LLMConfig, RerankerConfig

# role -> (the EngineConfig field holding its backend, that field's struct, the mode field
# that an "openai" backend switches to its LLM variant, and the mode's two values)
ROLE_FIELDS: dict[str, tuple[str, type[msgspec.Struct], tuple[str, str, str] | None]] = {
    "agent": ("agent", LLMConfig, None),
    "simulator": ("simulator_llm", LLMConfig, ("simulator", "llm", "scripted")),
    "judge": ("judge_llm", LLMConfig, None),  # the mode is the spec's `reward`
    "extractor": ("extractor_llm", LLMConfig, ("extractor", "llm", "rules")),
    "embedder": ("embedder", EmbedderConfig, None),
    "reranker": ("reranker", RerankerConfig, None),
}


class CampaignSettingsError(ConfigError):
    """A campaign's settings cannot run on this worker; the message names the spec field."""


def campaign_config(
    base: EngineConfig, reward: str | None, backends: dict[str, dict[str, Any]]
) -> EngineConfig:
    """``base`` with the campaign's pins applied. Unpinned roles keep ``base``'s values."""
    changes: dict[str, Any] = {}
    for role, table in backends.items():
        if role not in ROLE_FIELDS:
            raise CampaignSettingsError(f"campaign spec field `backends.{role}`: unknown role")
        field, kind, mode = ROLE_FIELDS[role]
        have = msgspec.structs.asdict(getattr(base, field))
        try:
            merged = msgspec.convert({**have, **table}, kind)
        except msgspec.ValidationError as exc:
            raise CampaignSettingsError(f"campaign spec field `backends.{role}`: {exc}") from None
        changes[field] = merged
        if mode is not None and "kind" in table:
            # Naming an openai backend for the simulator or extractor means using it.
            name, llm_value, plain_value = mode
            changes[name] = llm_value if merged.kind == "openai" else plain_value
    if reward is not None:
        changes["judge"] = reward
    config = msgspec.structs.replace(base, **changes) if changes else base
    if config.judge == "llm" and config.judge_llm.kind != "openai":
        raise CampaignSettingsError(
            "campaign spec field `reward` = 'llm' needs an OpenAI-compatible judge: add "
            "[backends.judge] with kind = 'openai' and base_url, or start the workers with a "
            "judge_llm of kind 'openai'"
        )
    for role, (field, _, _) in ROLE_FIELDS.items():
        cfg = getattr(config, field)
        if getattr(cfg, "kind", "") in ("openai", "http") and not getattr(cfg, "base_url", "x"):
            if role in backends or _in_use(config, role):
                raise CampaignSettingsError(
                    f"campaign spec field `backends.{role}`: kind {cfg.kind!r} needs base_url"
                )
    return config


def _in_use(config: EngineConfig, role: str) -> bool:
    """Does ``config`` call the backend of ``role``? (An unused one needs no URL.)"""
    if role == "simulator":
        return config.simulator == "llm"
    if role == "extractor":
        return config.extractor == "llm"
    if role == "judge":
        return config.judge == "llm"
    return True
