"""Per-session measures that need more than one turn's outputs."""

from __future__ import annotations

from difflib import SequenceMatcher

REPETITION_RATIO = 0.85  # DESIGN §5: two adjacent agent replies this similar are a repeat


def is_repetition(previous: str, reply: str, threshold: float = REPETITION_RATIO) -> bool:
    """Whether ``reply`` repeats ``previous``: SequenceMatcher ratio above ``threshold``.

    Compared word by word: characters make the matcher quadratic in a long reply's length,
    and a reply that repeats the last one repeats its words."""
    a, b = previous.split(), reply.split()
    if not a or not b:
        return False
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    # The cheap upper bounds settle most pairs of different replies.
    return (
        matcher.real_quick_ratio() > threshold
        and matcher.quick_ratio() > threshold
        and matcher.ratio() > threshold
    )
