"""Campaign specs: TOML in, validated, with errors that name the bad field."""

from __future__ import annotations

from pathlib import Path

import msgspec

from vars_core.methods import METHODS
from vars_core.problems import known_domains


class SpecError(ValueError):
    """A campaign spec that cannot run; the message names the field."""


class CampaignSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    methods: list[str]
    profiles: int | str  # how many to generate, or a path to a profile file
    sessions: int  # per profile and method
    max_turns: int = 8
    datasets: list[str] = msgspec.field(default_factory=lambda: ["math-500", "logiqa", "mmlu"])
    seed: int = 0


def parse_spec(text: str, source: str = "spec", base_dir: Path | None = None) -> CampaignSpec:
    try:
        spec = msgspec.toml.decode(text.encode(), type=CampaignSpec)
    except msgspec.ValidationError as exc:
        raise SpecError(f"{source}: {_field_message(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise SpecError(f"{source}: not valid TOML: {exc}") from None
    return validate(spec, source, base_dir)


def load_spec(path: str | Path) -> CampaignSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read campaign spec {path}: {exc.strerror}") from None
    return parse_spec(text, str(path), path.parent)


def validate(spec: CampaignSpec, source: str = "spec", base_dir: Path | None = None) -> CampaignSpec:
    def bad(field: str, why: str) -> SpecError:
        return SpecError(f"{source}: field `{field}`: {why}")

    if not spec.name.strip() or any(c in spec.name for c in "{}: \t\n/"):
        raise bad("name", f"{spec.name!r} must be non-empty, without spaces, ':', '/' or braces")
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
    return spec


def _field_message(message: str) -> str:
    """msgspec says '... - at `$.sessions`'; lead with the field name instead."""
    if " - at `$." in message:
        what, _, where = message.rpartition(" - at `$.")
        return f"field `{where.rstrip('`')}`: {what}"
    if "unknown field" in message:
        return message.replace("Object contains unknown field", "unknown field")
    if "missing required field" in message:
        return message.replace("Object missing required field", "missing required field")
    return message
