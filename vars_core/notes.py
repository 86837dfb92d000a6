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


def normalize(text: str) -> str:
    """Case-, punctuation- and whitespace-insensitive form used for exact dedup."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def text_hash(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()[:16]
