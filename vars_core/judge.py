"""The reward judge: the user's next message -> a reward label, a confidence, and the gate.

Two judges share one label map and one gate: ``keyword_judge`` (ordered rules over the new
user message, no model) and ``parse_judge_reply`` (the JSON answer of an LLM judge).
"""

from __future__ import annotations

import json
import math
import re
from typing import get_args

from vars_core.notes import parse_notes
from vars_core.types import JudgeResult, RewardLabel

LABEL_REWARDS: dict[RewardLabel, float] = {
    "neg_constraint_restate": -1.0,
    "neg_correction": -0.8,
    "neg_confusion": -0.6,
    "pos_praise": 0.8,
    "pos_progress": 0.1,
    "neutral": 0.0,
    "topic_shift": 0.0,
}
LABELS: frozenset[str] = frozenset(get_args(RewardLabel))
MIN_CONFIDENCE = 0.6


def gate(label: RewardLabel, confidence: float, parsed: bool = True) -> JudgeResult:
    """Reward and gate of one judgement: an update applies only to a parsed, confident,
    on-topic judgement, weighted by its confidence."""
    if not isinstance(confidence, (int, float)) or math.isnan(confidence):
        confidence = 0.0
    confidence = min(1.0, max(0.0, float(confidence)))
    apply = parsed and label != "topic_shift" and confidence >= MIN_CONFIDENCE
    return JudgeResult(
        label=label,
        confidence=confidence,
        reward=LABEL_REWARDS[label],
        apply=apply,
        g=confidence if apply else 0.0,
        parsed=parsed,
    )


# --------------------------------------------------------------------------- keyword judge


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


# Ordered: the first rule that matches wins, so a restated constraint outranks the praise or
# thanks that often wraps it, and a correction outranks a polite "great, but ...".
_RULES: tuple[tuple[RewardLabel, float, re.Pattern[str]], ...] = (
    (
        "neg_constraint_restate",
        0.9,
        _rx(
            r"\bas i (?:mentioned|said|asked|told you|stated|noted)\b",
            r"\blike i (?:said|mentioned|asked)\b",
            r"\bi (?:already )?told you\b",
            r"\bi (?:already|just) (?:said|asked|mentioned)\b",
            r"\bi asked you to\b",
            r"\bremember\b",
            r"\bagain, please\b",
            r"\bdon'?t forget\b",
            r"\bplease stick to\b",
        ),
    ),
    (
        "neg_correction",
        0.85,
        _rx(
            r"\b(?:doesn'?t|does not|don'?t|do not) look right\b",
            r"\bwrong\b",
            r"\bincorrect\b",
            r"\bthat'?s not\b",
            r"\bthat is not\b",
            r"\bnot (?:correct|right)\b",
            r"\bmistake\b",
            r"(?:^|[.!?]\s+)(?:no|nope)\s*[,.!]",
            r"\bcheck your (?:answer|work|math)\b",
        ),
    ),
    (
        "neg_confusion",
        0.8,
        _rx(
            r"\bi (?:don'?t|do not) (?:understand|get it|follow)\b",
            r"\bconfus(?:ing|ed)\b",
            r"\bwhat do you mean\b",
            r"\b(?:doesn'?t|does not) make sense\b",
            r"\bunclear\b",
            r"\bi'?m lost\b",
        ),
    ),
    (
        "pos_praise",
        0.85,
        _rx(
            r"\bthanks?\b",
            r"\bthank you\b",
            r"\bperfect\b",
            r"\bgreat\b",
            r"\bexactly what i (?:needed|wanted)\b",
            r"\bexcellent\b",
            r"\bawesome\b",
            r"\bwell done\b",
            r"\bvery helpful\b",
        ),
    ),
    (
        "pos_progress",
        0.7,
        _rx(
            r"^\s*(?:ok|okay|alright|next)\b",
            r"\bgot it\b",
            r"\bmakes sense\b",
            r"\bsounds good\b",
            r"\bmove on\b",
            r"\bnext (?:question|one|step|problem)\b",
        ),
    ),
)

# A note-form sentence ("When X, Y.") with no explicit cue is still most likely a restated
# constraint, but less surely than one that says "as I mentioned".
_NOTE_RESTATE_CONFIDENCE = 0.75
_TOPIC_SHIFT_CONFIDENCE = 0.7
_TOPIC_SHIFT_OVERLAP = 0.15  # content-word Jaccard below which a new question is a new topic
_NEUTRAL_CONFIDENCE = 0.3

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    "the a an and or but of to in on for with at by from is are was were be been it this that "
    "these those i you me my your we our can could would should will what which who how why "
    "when where do does did please there their its as if so not no yes".split()
)


def keyword_judge(prev_query: str, prev_answer: str, query: str) -> JudgeResult:
    """Label the user's new message ``query`` (the reaction to ``prev_answer``)."""
    for label, confidence, pattern in _RULES:
        if pattern.search(query):
            return gate(label, confidence)
    if parse_notes(query):
        return gate("neg_constraint_restate", _NOTE_RESTATE_CONFIDENCE)
    if _is_new_topic(prev_query, query):
        return gate("topic_shift", _TOPIC_SHIFT_CONFIDENCE)
    return gate("neutral", _NEUTRAL_CONFIDENCE)


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in _STOPWORDS}


def _is_new_topic(prev_query: str, query: str) -> bool:
    new, old = _content_words(query), _content_words(prev_query)
    if len(new) < 3 or not old:  # too short to tell, or nothing to compare with
        return False
    return len(new & old) / len(new | old) < _TOPIC_SHIFT_OVERLAP


# --------------------------------------------------------------------------- LLM judge replies

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_judge_reply(text: str) -> JudgeResult:
    """An LLM judge's reply -> a gated result. JSON ``{"label", "confidence"}`` is found in
    the bare reply, inside a code fence, or as the first object in surrounding prose. A reply
    without it, with an unknown label, or with a confidence outside [0, 1] is neutral,
    ``parsed=False``, and never applied."""
    for obj in _json_objects(text):
        label = obj.get("label")
        confidence = obj.get("confidence")
        if isinstance(label, str):
            label = label.strip().lower()
        if isinstance(confidence, str):
            try:
                confidence = float(confidence.strip())
            except ValueError:
                continue
        if (
            isinstance(label, str)  # a list or an object is not a label (nor hashable)
            and label in LABELS
            and isinstance(confidence, (int, float))
            and not isinstance(confidence, bool)
            and 0.0 <= confidence <= 1.0
        ):
            return gate(label, float(confidence))
    return gate("neutral", 0.0, parsed=False)


def _json_objects(text: str) -> list[dict]:
    """JSON objects found in ``text``, most explicit first: the whole reply, fenced blocks,
    then each balanced ``{...}`` span."""
    candidates = [text, *_FENCE.findall(text), *_brace_spans(text)]
    out = []
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, TypeError, RecursionError):  # junk, or nested past the limit
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _brace_spans(text: str) -> list[str]:
    spans, depth, start = [], 0, -1
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans
