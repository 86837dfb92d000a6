"""The one text form of a remembered preference: "When {condition}, {action}."

Writing and reading notes live together so the memory, the prompt builders, the rule
extractor and the scripted agent can never disagree about the format.
"""

from __future__ import annotations

import hashlib
import re

# "when <condition>, [please] <action>." - condition has no comma, action no period.
_NOTE = re.compile(r"\b[Ww]hen ([^,.;:!?\n]{3,160}), (?:please )?([^.!?\n]{3,240})[.!]")


def format_note(condition: str, action: str) -> str:
    condition = condition.strip().rstrip(",.")
    action = action.strip().rstrip(".")
    return f"When {condition}, {action}."


def parse_notes(text: str) -> list[tuple[str, str]]:
    """Every (condition, action) written in note form anywhere in ``text``, in order."""
    return [(c.strip(), a.strip()) for c, a in _NOTE.findall(text)]


def restated_notes(message: str, notes: list[str]) -> list[int]:
    """Indices of ``notes`` that ``message`` states again in note form ("... when X, Y.").
    Exact up to case and punctuation: a paraphrase is not matched."""
    said = {normalize(format_note(c, a)) for c, a in parse_notes(message)}
    return [i for i, note in enumerate(notes) if note and normalize(note) in said]


def normalize(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form used for exact dedup."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def text_hash(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()[:16]
