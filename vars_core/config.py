"""Engine settings: DESIGN §4's defaults, backends per role, loaded from TOML, a mapping,
and VARS_* environment variables (``VARS_AGENT__BASE_URL=...`` sets ``agent.base_url``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import tomllib


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field."""


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    top_k_dense: int = 64  # FAISS candidates per query
    # What the query is matched against: a card's condition ("when ...") decides whether it
    # applies to a request; its action text only adds noise to that match.
    match_on: Literal["condition", "note"] = "condition"
    list_size: int = 5  # k ranked cards in the prompt
    tau: float = 1.0
    beta_long: float = 2.0
    beta_short: float = 5.0
    # Share of learning turns whose list is sampled (Plackett-Luce) instead of the greedy
    # top-k; 0 serves greedy always, as the reference does.
    epsilon: float = 0.0
    # Which vector a session's lists are ranked with: "turn" = the vector as it is at each
    # turn (the reference); "session" = the vector as the session started, so what is
    # learned during a session shapes the next one and the prompt's memory does not
    # reshuffle mid-conversation. Learning happens every turn either way.
    refresh: Literal["turn", "session"] = "session"
    # The learned term b(q, m): "bounded" = c * tanh(<z_eff, v_m> / c) on cards the reranker
    # accepts (P(yes) >= 0.5), 0 on the rest, with c = kappa * std(s0 over the top 2k);
    # "linear" = <z_eff, v_m> on every candidate (the reference's form, an ablation).
    learned_term: Literal["bounded", "linear"] = "bounded"
    kappa: float = 1.0
    # What s0 is: "log" = log P(yes) (the reference's scale); "prob" = P(yes) (an ablation).
    s0_scale: Literal["log", "prob"] = "log"
    # Cards whose condition holds for every request ("always", "any request", ...) skip
    # ranking and follow the k ranked cards in the prompt, at most max_global of them.
    global_bypass: bool = True
    max_global: int = 10


class ReinforceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    eta_long: float = 0.001
    eta_short: float = 0.002
    alpha: float = 0.05  # baseline step
    decay_short: float = 0.1  # lambda: z_short decay per applied update
    min_advantage: float = 1e-6
    # Pairwise conflict credit: when the user restates a preference r that conflicts with
    # a card c of the list they reacted to, z_long moves r above c (0: off).
    eta_pairwise: float = 0.2


class LLMConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One LLM role. kind: "scripted" (no model) or "openai" (any OpenAI-compatible
    server: vLLM, llama.cpp, OpenAI).

    schema_format: how a JSON schema (constrained output) is sent. "json_schema" is the
    OpenAI form (vLLM, OpenAI, llama.cpp's C++ server); llama-cpp-python's server enforces
    only "json_object" (``{"type": "json_object", "schema": ...}``) and silently ignores
    the other form.
    """

    kind: Literal["scripted", "openai"] = "scripted"
    base_url: str = ""
    model: str = ""
    api_key_env: str = ""  # name of the environment variable holding the key
    # Requests in flight per process for this role. Above what one server batches: a
    # worker's threads, not this cap, should bound what it sends (docs/decisions.md).
    max_concurrency: int = 256
    timeout_s: float = 60.0
    max_retries: int = 4
    max_tokens: int = 512
    temperature: float = 0.0
    schema_format: Literal["json_schema", "json_object"] = "json_schema"


class MemoryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dedup_cosine: float = 0.95  # note cosine at or above which a new card is a duplicate
    supersede_cosine: float = 0.9  # condition cosine at or above which conditions match
    max_cards: int = 500  # per-user cap on active cards
    # Whether two actions conflict (a new card supersedes an old one under the same
    # condition; the pairwise credit's pairs): "auto" = "llm" when conflict_llm is an
    # openai backend, "scripted" in scripted-world campaigns, else "table".
    conflict_judge: Literal["auto", "llm", "scripted", "table"] = "auto"
    conflict_llm: LLMConfig = LLMConfig()
    # The scripted conflict judge's error rate: the share of action pairs it gets wrong.
    scripted_conflict_error: float = 0.05


class EmbedderConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["minilm", "transformers", "openai"] = "minilm"
    path: str = ""
    pooling: Literal["mean", "cls", "last"] = "mean"
    query_prefix: str = ""
    device: str = "cpu"
    batch_size: int = 32
    base_url: str = ""
    model: str = ""


class RerankerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """kind "auto": the scripted reranker in scripted-world campaigns, "none" otherwise.
    ``auc``: the scripted reranker's ROC AUC (its one quality figure)."""

    kind: Literal["auto", "none", "scripted", "yesno", "cross-encoder", "http"] = "auto"
    auc: float = 0.85
    path: str = ""
    device: str = "cpu"
    base_url: str = ""
    model: str = ""
    endpoint: Literal["rerank", "score"] = "rerank"


class BatcherConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The dynamic batcher of in-process models (embedder, reranker): concurrent requests
    of one process are merged into one forward pass of up to ``max_items`` items, waiting
    at most ``max_wait_ms`` after the first. ``enabled``: true, false, or "auto" (batch
    models on an accelerator; on CPU keep one text per pass, which is bit-reproducible)."""

    enabled: bool | Literal["auto"] = "auto"
    max_items: int = 32
    max_wait_ms: float = 5.0


class EngineConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    policy: PolicyConfig = PolicyConfig()
    reinforce: ReinforceConfig = ReinforceConfig()
    memory: MemoryConfig = MemoryConfig()
    projection: Literal["random", "pca"] = "random"
    projection_dim: int = 256
    projection_seed: int = 0
    agent: LLMConfig = LLMConfig()
    judge: Literal["keyword", "llm"] = "keyword"
    judge_llm: LLMConfig = LLMConfig()
    extractor: Literal["rules", "llm"] = "rules"
    extractor_llm: LLMConfig = LLMConfig()
    extractor_window: int = 4  # turns an LLM extractor reads
    # The simulated user of campaigns: "scripted" (deterministic, catalog verifiers) or
    # "llm" (the MultiSessionCollab protocol, played by simulator_llm; its max_tokens and
    # temperature apply). Turn 1 is the harness-built opening for both.
    simulator: Literal["scripted", "llm"] = "scripted"
    simulator_llm: LLMConfig = LLMConfig()
    # The LLM answer judge for free-form problems (vars_core.grading): answer_judge_llm
    # when its kind is "openai", else judge_llm when judge = "llm" and judge_llm is an
    # openai backend, else none (free-form answers are compared as text). A scripted LLM
    # cannot judge answers, so kind "scripted" means "not configured".
    answer_judge_llm: LLMConfig = LLMConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    reranker: RerankerConfig = RerankerConfig()
    batcher: BatcherConfig = BatcherConfig()
    method: str = "rag_vector"  # the live method when a caller names none
    cold_start: Literal["zero", "tenant_mean"] = "zero"  # live users only; campaigns: zero
    context_budget_tokens: int = 2000  # contextual: history above this is summarized
    redis_url: str = ""  # the library facade's store: memory when empty


ENV_PREFIX = "VARS_"


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """VARS_SECTION__FIELD=value -> {"section": {"field": value}}; values parsed as TOML
    scalars when they parse, else kept as strings. Only known top-level fields are read,
    so unrelated VARS_* variables (VARS_HOME) are ignored."""
    environ = os.environ if environ is None else environ
    known = set(EngineConfig.__struct_fields__)
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if path[0] not in known:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _scalar(raw)
    return out


def _scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_config(
    source: str | Path | Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> EngineConfig:
    """Defaults, then the TOML file or mapping, then VARS_* environment overrides."""
    if source is None:
        data: dict[str, Any] = {}
        where = "defaults"
    elif isinstance(source, Mapping):
        data, where = dict(source), "config mapping"
    else:
        path = Path(source)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        where = str(path)
    data = _merge(data, env_overrides(environ))
    try:
        return msgspec.convert(data, EngineConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_name_field(str(exc))}") from None


def _name_field(message: str) -> str:
    if " - at `$." in message:
        what, _, where = message.rpartition(" - at `$.")
        return f"field `{where.rstrip('`')}`: {what}"
    return message.replace("Object contains unknown field", "unknown field")


def config_from_env(environ: Mapping[str, str] | None = None) -> EngineConfig:
    """A process's config: the TOML file named by VARS_CONFIG (if any), then VARS_* overrides."""
    environ = os.environ if environ is None else environ
    return load_config(environ.get("VARS_CONFIG") or None, environ)
