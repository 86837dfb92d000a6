"""What the contextual and reflection methods carry between sessions, as plain functions.

contextual: the user's earlier conversations, and a summary of the oldest once they pass a
token budget. reflection: the agent's notes about the user, rewritten at session end.
Both have an LLM path and an extractive one (the scripted world, and the fallback when the
LLM fails): the user's own note-form statements ("when X, Y.") and the last turns.
"""

from __future__ import annotations

from typing import Any

from vars_core.llm.base import LLMError, complete_sync
from vars_core.notes import format_note, normalize, parse_notes
from vars_core.tokens import count_tokens
from vars_core.types import Message


def stated_notes(messages: list[Message]) -> list[str]:
    """The user's note-form statements, oldest first; a later one for the same condition
    replaces an earlier one (the user changed their mind)."""
    by_condition: dict[str, str] = {}
    for message in messages:
        if message.role != "user":
            continue
        for condition, action in parse_notes(message.content):
            key = normalize(condition)
            by_condition.pop(key, None)
            by_condition[key] = format_note(condition, action)
    return list(by_condition.values())


def merge_notes(old: list[str], new: list[str]) -> list[str]:
    """Old notes, with any whose condition a new note restates replaced; new notes first."""
    conditions = {normalize(c) for note in new for c, _ in parse_notes(note)}
    kept = [n for n in old if not any(normalize(c) in conditions for c, _ in parse_notes(n))]
    merged: list[str] = []
    for note in [*new, *kept]:
        if note not in merged:
            merged.append(note)
    return merged


def history_tokens(messages: list[Message]) -> int:
    return sum(count_tokens(m.content) for m in messages)


def extractive_summary(messages: list[Message], keep_last: int = 4) -> str:
    """The user's stated preferences and the last turns, verbatim."""
    notes = stated_notes(messages)
    lines = ["Summary of earlier conversations."]
    if notes:
        lines.append("The user said: " + " ".join(notes))
    for message in messages[-keep_last:]:
        lines.append(f"{message.role}: {message.content}")
    return "\n".join(lines)


SUMMARY_PROMPT = (
    "Summarize these earlier conversations for the assistant who will talk to this user "
    "next. Keep every preference the user stated about how they want answers, each as a "
    "sentence of the form 'When <condition>, <action>.'; then two or three sentences on "
    "what was discussed."
)

REFLECTION_PROMPT = (
    "You keep notes about a user to serve them better next time. Rewrite the notes given "
    "the conversation below. Output only the notes, one per line, each of the form "
    "'When <condition>, <action>.'"
)


def summarize(messages: list[Message], llm: Any | None, max_tokens: int = 400) -> str:
    if llm is None:
        return extractive_summary(messages)
    transcript = "\n".join(f"{m.role}: {m.content}" for m in messages)
    try:
        text = complete_sync(
            llm, [Message("system", SUMMARY_PROMPT), Message("user", transcript)], max_tokens=max_tokens
        ).text.strip()
    except LLMError:
        text = ""
    return text or extractive_summary(messages)


def reflect(old_notes: list[str], session: list[Message], llm: Any | None, max_tokens: int = 400) -> list[str]:
    stated = merge_notes(old_notes, stated_notes(session))
    if llm is None:
        return stated
    transcript = "\n".join(f"{m.role}: {m.content}" for m in session)
    prompt = "Current notes:\n" + "\n".join(old_notes or ["(none)"]) + "\n\nConversation:\n" + transcript
    try:
        text = complete_sync(
            llm, [Message("system", REFLECTION_PROMPT), Message("user", prompt)], max_tokens=max_tokens
        ).text
    except LLMError:
        return stated
    rewritten = [format_note(c, a) for c, a in parse_notes(text)]
    # A reply with no usable note keeps what the user said verbatim: never lose memory.
    return merge_notes(stated, rewritten) if rewritten else stated
