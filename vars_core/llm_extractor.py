"""Preference extraction by an LLM: the last few messages in, typed preferences out.

The model is asked for strict JSON (and given the JSON schema, which a server with
constrained decoding enforces); the reply is still read leniently, because a model without
constrained decoding wraps JSON in code fences or prose. A reply that does not match the
schema gets one repair request (the bad reply and the error go back to the model); a second
bad reply is counted and yields no preferences.

A failed backend call (``LLMError``, after the client's own retries) is also counted and
yields no preferences instead of raising: extraction only adds cards, so a session that
misses one turn's extraction loses at most those cards and picks the preference up again
when the user restates it, while a raise would fail the whole session.

Every preference returned round-trips through ``format_note``/``parse_notes``: punctuation
the note form cannot carry is replaced where that keeps the meaning, and a preference that
still does not round-trip is dropped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

import msgspec

from vars_core.backend_stats import BackendStats
from vars_core.extractor import ANY_REQUEST
from vars_core.llm.base import ChatLLM, LLMError, complete_sync
from vars_core.notes import format_note, parse_notes, text_hash
from vars_core.types import ExtractedPreference, Message

log = logging.getLogger(__name__)

COUNTERS = ("calls", "repaired", "failures", "llm_errors", "dropped")

PREFERENCES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "preferences": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "condition": {"type": "string"},
                    "action": {"type": "string"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["condition", "action", "confidence"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["preferences"],
    "additionalProperties": False,
}

_SHAPE = '{"preferences": [{"condition": "...", "action": "...", "confidence": 0.9}]}'

SYSTEM_PROMPT = f"""\
You extract a user's standing preferences about how they want answers.
Read the conversation. Only the USER's messages are evidence; the ASSISTANT's messages are \
context. Report only preferences the user states about how answers should be given (format, \
length, style, language, level of detail, notation, tools). Do not report the task itself, \
facts, questions, or anything the assistant said. If the user states none, return an empty \
list.
Each preference has:
- condition: when it applies, a short phrase such as "writing code" (use "{ANY_REQUEST}" \
when it always applies); no commas;
- action: what the assistant should do, an imperative phrase such as "use type hints"; \
no periods;
- confidence: from 0 to 1, how clearly the user stated it.
Reply with JSON only, in this form: {_SHAPE}"""

# Assistant replies are context, not evidence: a long one is cut so it cannot crowd the
# user's messages out of a small model's context.
_MAX_ASSISTANT_CHARS = 1500


class _Preference(msgspec.Struct):
    condition: str
    action: str
    confidence: float


class _Reply(msgspec.Struct):
    preferences: list[_Preference]


class ReplyError(ValueError):
    """An extractor reply that holds no object matching the schema, with the reason."""


class LLMExtractor:
    """``extract(messages)`` reads the last ``window`` messages (user and assistant, system
    messages skipped) and returns the preferences the user stated in them."""

    def __init__(
        self,
        llm: ChatLLM,
        window: int = 4,
        max_tokens: int = 512,
        stats: BackendStats | None = None,
    ) -> None:
        self.llm = llm
        self.window = window
        self.max_tokens = max_tokens
        self.stats = stats if stats is not None else BackendStats()
        self.stats.declare(COUNTERS)

    def extract(self, messages: list[Message]) -> list[ExtractedPreference]:
        recent = (
            [m for m in messages if m.role != "system"][-self.window :] if self.window > 0 else []
        )
        if not any(m.role == "user" and m.content.strip() for m in recent):
            return []  # no user evidence: nothing to ask the model
        self.stats.incr("calls")
        try:
            raw = self._ask(build_prompt(recent))
        except LLMError as err:
            self.stats.incr("llm_errors")
            log.warning("extractor backend failed, no preferences this turn: %s", err)
            return []
        return self._clean_all(raw)

    def _ask(self, prompt: list[Message]) -> list[_Preference]:
        """The model's preferences, after at most one repair request; [] (counted as a
        failure) when the repaired reply is junk too."""
        reply = self._complete(prompt)
        try:
            return parse_reply(reply)
        except ReplyError as err:
            error = str(err)
        reply = self._complete(prompt + repair_messages(reply, error))
        try:
            raw = parse_reply(reply)
        except ReplyError as err:
            self.stats.incr("failures")
            log.warning("extractor reply unusable after repair: %s; reply %.200r", err, reply)
            return []
        self.stats.incr("repaired")
        return raw

    def _complete(self, messages: list[Message]) -> str:
        completion = complete_sync(
            self.llm,
            messages,
            max_tokens=self.max_tokens,
            temperature=0.0,
            json_schema=PREFERENCES_SCHEMA,
        )
        return completion.text

    def _clean_all(self, raw: list[_Preference]) -> list[ExtractedPreference]:
        out: list[ExtractedPreference] = []
        seen: set[str] = set()
        for item in raw:
            pref = clean_preference(item.condition, item.action, item.confidence)
            if pref is None:
                self.stats.incr("dropped")
                continue
            key = text_hash(format_note(pref.condition, pref.action))
            if key not in seen:
                seen.add(key)
                out.append(pref)
        return out


# --------------------------------------------------------------------------- prompt


def build_prompt(recent: list[Message]) -> list[Message]:
    lines = []
    for m in recent:
        text = m.content.strip()
        if m.role == "assistant" and len(text) > _MAX_ASSISTANT_CHARS:
            text = text[:_MAX_ASSISTANT_CHARS] + " [...]"
        lines.append(f"{m.role.upper()}: {text}")
    conversation = "\n\n".join(lines)
    return [
        Message("system", SYSTEM_PROMPT),
        Message(
            "user", f"Conversation, oldest first:\n<conversation>\n{conversation}\n</conversation>"
        ),
    ]


def repair_messages(bad_reply: str, error: str) -> list[Message]:
    return [
        Message("assistant", bad_reply),
        Message(
            "user",
            f"That reply could not be used: {error}. Reply again with only the corrected JSON "
            f"object, in this form: {_SHAPE}",
        ),
    ]


# --------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)
_MAX_SPANS = 32  # brace positions tried in prose; replies are bounded by max_tokens anyway


def parse_reply(text: str) -> list[_Preference]:
    """The preferences of the first JSON object in ``text`` that matches the schema: the
    whole reply, a fenced block, or an object embedded in prose. Raises ``ReplyError``."""
    schema_error = None
    for candidate in _candidates(text):
        try:
            return msgspec.json.decode(candidate, type=_Reply, strict=False).preferences
        except msgspec.ValidationError as err:
            schema_error = schema_error or f"JSON does not match the schema ({err})"
        except (msgspec.DecodeError, RecursionError):  # junk, or nested past the limit
            continue
    raise ReplyError(schema_error or "no JSON object found in the reply")


def _candidates(text: str) -> list[str]:
    candidates = [text.strip(), *(block.strip() for block in _FENCE.findall(text))]
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1 and len(candidates) < _MAX_SPANS:
        try:
            _, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        candidates.append(text[start:end])
        start = text.find("{", end)
    return candidates


# --------------------------------------------------------------------------- cleaning

_ABBREVIATIONS = (
    (re.compile(r"\be\.g\.", re.I), "for example"),
    (re.compile(r"\bi\.e\.", re.I), "that is"),
    (re.compile(r"\betc\.", re.I), "and so on"),
    (re.compile(r"\bvs\.", re.I), "versus"),
)
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_CONDITION_BREAK = re.compile(r"\s*[,;:.!?]+\s+|\s*[,;:]+\s*")
_ACTION_BREAK = re.compile(r"\s*[.!?]+\s+(?=\S)")
_LEADING_WHEN = re.compile(r"^(?:when|whenever|if)\s+", re.I)
_LEADING_PLEASE = re.compile(r"^please\s+", re.I)
_TRAILING_PUNCT = " \t,.;:!?"


def clean_preference(condition: str, action: str, confidence: float) -> ExtractedPreference | None:
    """A stored-note-ready preference, or None when it cannot be written as a note.

    Repairs keep the meaning: "e.g." becomes "for example", "3.11" becomes "3 point 11",
    a comma in the condition becomes a space, a sentence break in the action a semicolon.
    """
    condition = _LEADING_WHEN.sub("", _strip(_CONDITION_BREAK.sub(" ", _common(condition))))
    action = _LEADING_PLEASE.sub("", _strip(_ACTION_BREAK.sub("; ", _common(action))))
    condition, action = _lower_first(_strip(condition)), _lower_first(_strip(action))
    if not condition or not action:
        return None
    if parse_notes(format_note(condition, action)) != [(condition, action)]:
        return None
    if not isinstance(confidence, (int, float)) or math.isnan(confidence):
        confidence = 0.0
    return ExtractedPreference(condition, action, min(1.0, max(0.0, float(confidence))))


def _common(text: str) -> str:
    for pattern, words in _ABBREVIATIONS:
        text = pattern.sub(words, text)
    return " ".join(_DECIMAL_POINT.sub(" point ", text).split())


def _strip(text: str) -> str:
    return " ".join(text.split()).strip(_TRAILING_PUNCT).strip()


def _lower_first(text: str) -> str:
    # A capitalised first word ("Use") reads wrong after "When ...,"; an acronym does not.
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text
