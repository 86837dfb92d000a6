"""The personalization methods: which stages a turn passes through, and the prompt each builds.

A method is data, not code: the router reads ``stages`` to skip the others, and the
generate stage reads ``memory`` to decide which notes go into the system prompt.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from vars_core.types import Message

SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's request."
PREFERENCES_HEADER = "User preferences:"


class Method(msgspec.Struct, frozen=True):
    name: str
    stages: tuple[str, ...]  # stages after simulate, in order, for every turn
    memory: Literal["none", "history", "reflection", "all", "retrieved"]
    uses_vector: bool  # retrieval adds the learned user vector, and the vector learns


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("vanilla", ("generate",), memory="none", uses_vector=False),
        Method("contextual", ("generate",), memory="history", uses_vector=False),
        Method("reflection", ("generate",), memory="reflection", uses_vector=False),
        Method("all_memory", ("extract", "generate"), memory="all", uses_vector=False),
        Method("rag", ("extract", "retrieve", "generate"), memory="retrieved", uses_vector=False),
        Method(
            "rag_vector",
            ("judge", "update", "extract", "retrieve", "generate"),
            memory="retrieved",
            uses_vector=True,
        ),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def system_prompt(notes: list[str]) -> str:
    if not notes:
        return SYSTEM_PROMPT
    lines = "\n".join(f"- {note}" for note in notes)
    return f"{SYSTEM_PROMPT}\n\n{PREFERENCES_HEADER}\n{lines}"


EARLIER_HEADER = "Earlier conversations with this user:"


def build_prompt(notes: list[str], history: list[Message], earlier: str = "") -> list[Message]:
    """System prompt with the method's notes (in the order given) and, for contextual, the
    user's earlier conversations; then this session's conversation."""
    system = system_prompt(notes)
    if earlier:
        system = f"{system}\n\n{EARLIER_HEADER}\n{earlier}"
    return [Message("system", system), *history]
