"""Context features of a request: what both the scripted user and the scripted agent read
from the text of a user's opening message to decide which preference conditions hold.

Features come from explicit phrases only, read from the message's first paragraph (the
scripted user writes "<domain phrase> <cue phrases>" there and pastes the problem below a
blank line, so words inside a problem never count as cues):

- "any": always present, for unconditional preferences;
- one domain feature: "math", "logic", "medical", "general", "code";
- cue features: "quick", "explain", "exam", "notes", "beginner", "work", "team", "stuck".
"""

from __future__ import annotations

ANY = "any"

# domain feature -> the phrase the scripted user writes (and the agent recognises)
DOMAIN_PHRASES: dict[str, str] = {
    "math": "I'm working on a math problem.",
    "logic": "I'm working on a logic puzzle.",
    "medical": "I have a medical question.",
    "general": "I have a general knowledge question.",
    "code": "I'm working on a coding task.",
}

# cue feature -> the phrase the scripted user writes
CUE_PHRASES: dict[str, str] = {
    "quick": "Quick question:",
    "explain": "Please explain your reasoning.",
    "exam": "I'm preparing for an exam.",
    "notes": "This is going into my notes.",
    "beginner": "I'm new to this topic.",
    "work": "This is for a report at work.",
    "team": "I'll share this with my team.",
    "stuck": "I tried this myself and got stuck.",
}

# problem-set name -> domain feature
PROBLEM_DOMAINS: dict[str, str] = {
    "math-500": "math",
    "math_hard": "math",
    "logiqa": "logic",
    "medqa": "medical",
    "mmlu": "general",
    "code": "code",
}

# Lowercase fragments that signal a feature (a few paraphrases beyond the scripted phrase).
_MARKERS: dict[str, tuple[str, ...]] = {
    "math": ("math problem", "math question"),
    "logic": ("logic puzzle", "logic question"),
    "medical": ("medical question", "medical exam question"),
    "general": ("general knowledge question",),
    "code": ("coding task", "coding question", "writing code"),
    "quick": ("quick question",),
    "explain": ("explain your reasoning", "explain the reasoning"),
    "exam": ("preparing for an exam", "exam prep"),
    "notes": ("going into my notes", "for my notes"),
    "beginner": ("new to this topic", "new to this subject", "i'm a beginner", "i am a beginner"),
    "work": ("report at work", "for a work report"),
    "team": ("share this with my team", "for my team"),
    "stuck": ("got stuck", "i'm stuck", "i am stuck"),
}

DOMAINS: tuple[str, ...] = tuple(DOMAIN_PHRASES)
CUES: tuple[str, ...] = tuple(CUE_PHRASES)
FEATURES: frozenset[str] = frozenset({ANY, *DOMAINS, *CUES})


def context_of(text: str) -> frozenset[str]:
    head = text.strip().split("\n\n", 1)[0].lower()
    return frozenset({ANY} | {f for f, marks in _MARKERS.items() if any(m in head for m in marks)})


def domain_feature(problem_domain: str) -> str:
    """The context feature of a problem set ("math-500" -> "math"); unknown sets are general."""
    return PROBLEM_DOMAINS.get(problem_domain, "general")


def request_header(domain: str, cues: list[str] | tuple[str, ...] = ()) -> str:
    """The first paragraph of a scripted opening: "Quick question: I'm working on ..."."""
    prefix = [CUE_PHRASES[c] for c in cues if c == "quick"]
    suffix = [CUE_PHRASES[c] for c in cues if c != "quick"]
    return " ".join([*prefix, DOMAIN_PHRASES[domain], *suffix])
