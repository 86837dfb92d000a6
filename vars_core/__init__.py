"""VARS: per-user preference memory and a learned user vector for LLM assistants.

`from vars_core import PersonalizedLLM` loads the facade lazily, so importing the package
costs nothing until it is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PersonalizedLLM"]


def __getattr__(name: str) -> Any:
    if name == "PersonalizedLLM":
        from vars_core.personalized import PersonalizedLLM

        return PersonalizedLLM
    raise AttributeError(f"module 'vars_core' has no attribute {name!r}")
