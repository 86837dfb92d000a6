"""Global preferences: cards whose condition holds for every request.

They bypass ranking (for rag and rag_vector alike, up to ``PolicyConfig.max_global``) and
follow the k ranked cards in the prompt, so a specific preference is listed before a
general one. The classifier is a fixed list of word-bounded phrases; a bare "general" or
"any" is not enough ("a general knowledge question", "any python code" are conditions).
"""

from __future__ import annotations

import re

GLOBAL_PHRASES: tuple[str, ...] = ("always", "any request", "any question", "every reply", "in general")
_GLOBAL = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in GLOBAL_PHRASES) + r")\b", re.IGNORECASE)


def is_global(condition: str) -> bool:
    """Whether a card's condition holds for every request."""
    return _GLOBAL.search(condition) is not None
