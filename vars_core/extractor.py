"""Rule-based preference extraction from the user's latest messages.

Two sources, both explicit:
- note-form sentences ("When X, Y.", as the scripted user restates them), read with the same
  parser the memory writes with, so condition and action come back exactly (confidence 0.9);
- a few common phrasings of a standing preference ("I prefer X when Y", "always X",
  "never X", "from now on, X", "X from now on", and a change of mind: "actually, X",
  "on second thought, X") (confidence 0.7). Without a "when" clause their condition is
  ``ANY_REQUEST``.

Questions are ignored: "Could you always use bullets?" asks, it does not state.
Every result round-trips through ``format_note``/``parse_notes``; a phrase that would not
(a comma in the condition, a period in the action, e.g. "Python 3.11") is dropped rather
than stored as a note nobody can read back.
"""

from __future__ import annotations

import re

from vars_core.notes import format_note, parse_notes, text_hash
from vars_core.types import ExtractedPreference, Message

ANY_REQUEST = "answering any request"
NOTE_CONFIDENCE = 0.9
PATTERN_CONFIDENCE = 0.7

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LEADING_FILLER = re.compile(r"^(?:(?:also|and|oh|btw|ok|okay|so|but|please)\b[\s,]*)+", re.I)
_TRAILING_PUNCT = " \t,.;:!?"

# Each pattern captures the action (and, for "prefer", an optional condition); the action's
# own "when Y" clause is split off afterwards for all of them.
_PREFER = re.compile(
    r"^i(?: would|'d)? prefer (?P<direct>that you |you to |to )?(?P<action>.+)$", re.I
)
_ALWAYS = re.compile(r"^(?:you should |make sure to )?always (?P<action>.+)$", re.I)
_NEVER = re.compile(
    r"^(?:you should |please )?(?:never|do not ever|don'?t ever) (?P<action>.+)$", re.I
)
_FROM_NOW_ON_HEAD = re.compile(r"^from now on,? (?P<action>.+)$", re.I)
_FROM_NOW_ON_TAIL = re.compile(r"^(?P<action>.+?),? from now on$", re.I)
# A change of mind states the new standing preference: "actually, give me long answers".
# Only a directive counts ("actually, I think so" states nothing).
_CHANGE_OF_MIND = re.compile(
    r"^(?:actually|on second thought|scratch that),\s+(?P<action>(?:please\s+)?(?:give|use|keep|make|"
    r"write|answer|reply|respond|show|skip|include|put|be|stop|start|explain|format|add|avoid|"
    r"do|don'?t|never|always)\b.+)$",
    re.I,
)
_WHEN_CLAUSE = re.compile(r"^(?P<action>.+?),? (?:when|whenever) (?P<condition>.+)$", re.I)


def rule_extract(messages: list[Message], window: int = 2) -> list[ExtractedPreference]:
    """Preferences stated in the last ``window`` user messages, oldest first, deduplicated."""
    user_texts = [m.content for m in messages if m.role == "user"][-window:] if window > 0 else []
    found: list[ExtractedPreference] = []
    seen: set[str] = set()
    for text in user_texts:
        for sentence in _sentences(text):
            for pref in _from_sentence(sentence):
                key = text_hash(format_note(pref.condition, pref.action))
                if key not in seen:
                    seen.add(key)
                    found.append(pref)
    return found


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _from_sentence(sentence: str) -> list[ExtractedPreference]:
    if sentence.rstrip().endswith("?"):
        return []
    terminated = sentence if sentence[-1] in ".!" else sentence + "."
    notes = parse_notes(terminated)
    if notes:
        return _valid([(c, a, NOTE_CONFIDENCE) for c, a in notes])
    pattern = _from_pattern(sentence)
    return _valid([(*pattern, PATTERN_CONFIDENCE)]) if pattern else []


def _from_pattern(sentence: str) -> tuple[str, str] | None:
    """(condition, action) of one stated-preference phrasing, or None."""
    text = _LEADING_FILLER.sub("", sentence.strip().rstrip(_TRAILING_PUNCT))
    if m := _FROM_NOW_ON_HEAD.match(text) or _FROM_NOW_ON_TAIL.match(text) or _CHANGE_OF_MIND.match(text):
        text = _LEADING_FILLER.sub("", m["action"])
        if not (_ALWAYS.match(text) or _NEVER.match(text)):
            return _split_condition(text)
    if m := _NEVER.match(text):
        condition, action = _split_condition(m["action"])
        return condition, f"do not {action}"
    if m := _ALWAYS.match(text):
        return _split_condition(m["action"])
    if m := _PREFER.match(text):
        condition, action = _split_condition(m["action"])
        # "I prefer that you use X" is already a directive; "I prefer X" becomes "prefer X".
        return condition, action if m["direct"] else f"prefer {action}"
    return None


def _split_condition(action: str) -> tuple[str, str]:
    """Split a trailing "when" clause off: "use X when Y" -> ("Y", "use X")."""
    m = _WHEN_CLAUSE.match(action)
    if m:
        return _clean(m["condition"]), _clean(m["action"])
    return ANY_REQUEST, _clean(action)


def _clean(text: str) -> str:
    text = text.strip().rstrip(_TRAILING_PUNCT).strip()
    # Lower-case a capitalised first word ("Use"), not an acronym or name ("LaTeX", "I").
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


def _valid(items: list[tuple[str, str, float]]) -> list[ExtractedPreference]:
    out = []
    for condition, action, confidence in items:
        condition = condition.strip().rstrip(_TRAILING_PUNCT).strip()
        action = action.strip().rstrip(_TRAILING_PUNCT).strip()
        if parse_notes(format_note(condition, action)) == [(condition, action)]:
            out.append(ExtractedPreference(condition, action, confidence))
    return out
