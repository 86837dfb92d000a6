from __future__ import annotations

import pytest

from vars_core.extractor import ANY_REQUEST, NOTE_CONFIDENCE, PATTERN_CONFIDENCE, rule_extract
from vars_core.notes import format_note, parse_notes
from vars_core.types import ExtractedPreference, Message


def user(text: str, turn: int = 0) -> Message:
    return Message("user", text, turn)


def pairs(prefs: list[ExtractedPreference]) -> list[tuple[str, str]]:
    return [(p.condition, p.action) for p in prefs]


def test_enforcement_sentence_is_recovered_exactly():
    condition = "answering a question about Python code"
    action = "add type hints to every function signature"
    text = f"As I mentioned before: when {condition}, {action}."
    prefs = rule_extract([user(text)])
    assert prefs == [ExtractedPreference(condition, action, NOTE_CONFIDENCE)]


def test_questions_are_ignored():
    messages = [
        user("When should I use a for loop, and when a while loop?"),
        user("Could you always use bullet points?"),
    ]
    assert rule_extract(messages) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "I prefer bullet points when listing options.",
            ("listing options", "prefer bullet points"),
        ),
        ("I prefer that you use metric units.", (ANY_REQUEST, "use metric units")),
        ("Please always use LaTeX for equations!", (ANY_REQUEST, "use LaTeX for equations")),
        ("Always cite your sources", (ANY_REQUEST, "cite your sources")),
        ("Never use emojis when writing code.", ("writing code", "do not use emojis")),
        ("From now on, answer in English.", (ANY_REQUEST, "answer in English")),
        ("From now on, never apologize.", (ANY_REQUEST, "do not apologize")),
        ("Use type hints from now on.", (ANY_REQUEST, "use type hints")),
    ],
)
def test_simple_patterns(text, expected):
    prefs = rule_extract([user(text)])
    assert pairs(prefs) == [expected]
    assert prefs[0].confidence == PATTERN_CONFIDENCE


def test_only_the_last_window_user_messages_are_read():
    messages = [
        user("Always use bullet points.", 0),
        Message("assistant", "When answering any request, be verbose.", 0),
        user("Never use emojis.", 1),
        Message("assistant", "Sure.", 1),
        user("What is 2 + 2? Also, always be concise.", 2),
    ]
    assert pairs(rule_extract(messages, window=2)) == [
        (ANY_REQUEST, "do not use emojis"),
        (ANY_REQUEST, "be concise"),
    ]
    assert pairs(rule_extract(messages, window=1)) == [(ANY_REQUEST, "be concise")]
    assert rule_extract(messages, window=0) == []


def test_duplicates_within_the_result_are_dropped():
    text = "When writing code, use snake_case. As I said: When writing code, use snake_case!"
    prefs = rule_extract([user(text), user("when writing code, use snake_case")])
    assert pairs(prefs) == [("writing code", "use snake_case")]


def test_every_result_round_trips_through_the_note_format():
    messages = [
        user("I prefer that you use Python 3.11 when writing code."),  # period in the action
        user("Always answer briefly, clearly and politely. When solving equations, show steps."),
    ]
    prefs = rule_extract(messages)
    assert pairs(prefs) == [
        (ANY_REQUEST, "answer briefly, clearly and politely"),
        ("solving equations", "show steps"),
    ]
    for p in prefs:
        assert "." not in p.condition and "." not in p.action
        assert parse_notes(format_note(p.condition, p.action)) == [(p.condition, p.action)]


def test_feedback_without_a_preference_extracts_nothing():
    messages = [
        user("That doesn't look right. Please check your answer again."),
        user("Thanks, that's exactly what I needed. TERMINATE"),
    ]
    assert rule_extract(messages) == []
