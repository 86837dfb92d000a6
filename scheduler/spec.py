"""Campaign specs: TOML in, validated, with errors that name the bad field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import tomllib

from scheduler.profiles import ProfileFileError, load_profile_file
from vars_core.config import EmbedderConfig, LLMConfig, RerankerConfig
from vars_core.methods import METHODS
from vars_core.problems import known_domains


class SpecError(ValueError):
    """A campaign spec that cannot run; the message names the field."""


# The name starts the campaign id, which starts every lane's user and session ids and
# names the results directory.
NAME = re.compile(r"^[\w.-]{1,64}$")


# The engine roles a spec may pin, and the vars_core.config struct each table decodes into.
BACKEND_TYPES: dict[str, type[msgspec.Struct]] = {
    "agent": LLMConfig,
    "simulator": LLMConfig,
    "judge": LLMConfig,
    "extractor": LLMConfig,
    "embedder": EmbedderConfig,
    "reranker": RerankerConfig,
}


class Backends(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``[backends.<role>]`` tables. Kept as the keys the researcher wrote (validated by
    decoding into the config struct), so workers compare only what was asked for."""

    agent: dict[str, Any] | None = None
    simulator: dict[str, Any] | None = None
    judge: dict[str, Any] | None = None
    extractor: dict[str, Any] | None = None
    embedder: dict[str, Any] | None = None
    reranker: dict[str, Any] | None = None

    def tables(self) -> dict[str, dict[str, Any]]:
        return {role: getattr(self, role) for role in BACKEND_TYPES if getattr(self, role) is not None}


class CampaignSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    methods: list[str]
    profiles: int | str  # how many to generate, or a path to a profile file
    sessions: int  # per profile and method
    max_turns: int = 8
    datasets: list[str] = msgspec.field(default_factory=lambda: ["math-500", "logiqa", "mmlu"])
    seed: int = 0
    parallelism: int | None = None  # lanes running at once; None: every lane at launch
    reward: Literal["keyword", "llm"] | None = None  # the reward judge; None: not pinned
    backends: Backends = Backends()


def parse_spec(
    text: str, source: str = "spec", base_dir: Path | None = None, overrides: list[str] | None = None
) -> CampaignSpec:
    """Decode and validate a TOML spec; ``overrides`` are ``key=value`` strings (the
    command line's ``--set``), dotted keys for tables, values parsed as TOML scalars."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise SpecError(f"{source}: not valid TOML: arrays or tables nested too deeply") from None
    for item in overrides or []:
        apply_override(data, item)
    try:
        spec = msgspec.convert(data, CampaignSpec)
    except msgspec.ValidationError as exc:
        raise SpecError(f"{source}: {_field_message(str(exc))}") from None
    return validate(spec, source, base_dir)


def apply_override(data: dict[str, Any], item: str) -> None:
    """``backends.agent.base_url=http://h:8000/v1`` -> data["backends"]["agent"]["base_url"].
    The value is a TOML scalar when it parses as one (15, 0.5, true, "x"), else a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p.strip() for p in parts):
        raise SpecError(f"--set {item!r}: expected key=value (dotted keys for tables)")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part.strip(), {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {item!r}: field `{'.'.join(parts[: depth + 1])}` is not a table")
        node = child
    node[parts[-1].strip()] = _scalar(raw.strip())


def _scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw


def load_spec(path: str | Path, overrides: list[str] | None = None) -> CampaignSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read campaign spec {path}: {exc.strerror}") from None
    return parse_spec(text, str(path), path.parent, overrides)


def validate(spec: CampaignSpec, source: str = "spec", base_dir: Path | None = None) -> CampaignSpec:
    def bad(field: str, why: str) -> SpecError:
        return SpecError(f"{source}: field `{field}`: {why}")

    if not NAME.match(spec.name):
        raise bad("name", f"{spec.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if not spec.methods:
        raise bad("methods", "needs at least one method")
    for method in spec.methods:
        if method not in METHODS:
            raise bad("methods", f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if len(set(spec.methods)) != len(spec.methods):
        raise bad("methods", "lists a method twice")
    if isinstance(spec.profiles, int):
        if spec.profiles < 1:
            raise bad("profiles", f"must be at least 1, got {spec.profiles}")
    else:
        path = Path(spec.profiles)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise bad("profiles", f"no profile file at {path}")
        try:  # read now: a bad file fails here, before anything is enqueued
            load_profile_file(path)
        except ProfileFileError as exc:
            raise bad("profiles", str(exc)) from None
        spec = msgspec.structs.replace(spec, profiles=str(path))
    if spec.sessions < 1:
        raise bad("sessions", f"must be at least 1, got {spec.sessions}")
    if spec.max_turns < 1:
        raise bad("max_turns", f"must be at least 1, got {spec.max_turns}")
    if not spec.datasets:
        raise bad("datasets", "needs at least one dataset")
    known = known_domains()
    for dataset in spec.datasets:
        if dataset not in known:
            raise bad("datasets", f"unknown dataset {dataset!r}; known: {', '.join(known)}")
    if spec.parallelism is not None and spec.parallelism < 1:
        raise bad("parallelism", f"must be at least 1 (or left out: every lane at once), got {spec.parallelism}")
    for role, table in spec.backends.tables().items():
        try:
            msgspec.convert(table, BACKEND_TYPES[role])
        except msgspec.ValidationError as exc:
            raise SpecError(f"{source}: {_field_message(str(exc), f'backends.{role}')}") from None
    return spec


def _field_message(message: str, prefix: str = "") -> str:
    """msgspec says '... - at `$.sessions`'; lead with the field name instead."""
    if " - at `$." in message:
        what, _, where = message.rpartition(" - at `$.")
        where = where.rstrip("`")
        what = what.replace("Object contains unknown field", "unknown field")
        return f"field `{prefix + '.' if prefix else ''}{where}`: {what}"
    if "unknown field" in message:
        message = message.replace("Object contains unknown field", "unknown field")
        return f"field `{prefix}`: {message}" if prefix else message
    if "missing required field" in message:
        return message.replace("Object missing required field", "missing required field")
    return message
