"""LLM backends by name: a lazy "module:Class" map, so choosing one imports only it."""

from __future__ import annotations

import importlib
from typing import Any

from vars_core.llm.base import ChatLLM

BACKENDS: dict[str, str] = {
    "openai": "vars_core.llm.openai:OpenAIChat",
    "scripted": "vars_core.llm.scripted:ScriptedChat",
}
# Other names for a backend, with the options that name implies (the caller's win).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "vllm": ("openai", {}),
    # Both llama.cpp servers (C++ and llama-cpp-python) enforce a schema sent this way.
    "llama.cpp": ("openai", {"schema_format": "json_object"}),
}


def known_kinds() -> list[str]:
    return sorted([*BACKENDS, *ALIASES])


def make_llm(kind: str, **options: Any) -> ChatLLM:
    """A backend by kind, built with ``options`` (its constructor's keyword arguments)."""
    name = kind.strip().lower()
    implied: dict[str, Any] = {}
    if name in ALIASES:
        name, implied = ALIASES[name]
    target = BACKENDS.get(name)
    if target is None:
        raise ValueError(f"unknown LLM kind {kind!r}; known kinds: {', '.join(known_kinds())}")
    module, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        return cls(**{**implied, **options})
    except TypeError as exc:  # a missing or unknown option: name the kind, not just __init__
        raise ValueError(f"bad options for LLM kind {kind!r}: {exc}") from None
