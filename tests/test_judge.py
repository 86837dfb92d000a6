from __future__ import annotations

import pytest

from vars_core.judge import (
    LABEL_REWARDS,
    MIN_CONFIDENCE,
    gate,
    keyword_judge,
    parse_judge_reply,
)

PREV_Q = "What is the derivative of x^2 sin(x)?"
PREV_A = "The derivative is 2x sin(x) + x^2 cos(x)."


def test_label_rewards_are_the_designed_values():
    assert LABEL_REWARDS == {
        "neg_constraint_restate": -1.0,
        "neg_correction": -0.8,
        "neg_confusion": -0.6,
        "pos_praise": 0.8,
        "pos_progress": 0.1,
        "neutral": 0.0,
        "topic_shift": 0.0,
    }
    assert MIN_CONFIDENCE == 0.6


@pytest.mark.parametrize(
    ("label", "confidence", "parsed", "apply"),
    [
        ("neg_correction", 0.6, True, True),  # the threshold itself applies
        ("neg_correction", 0.5999, True, False),
        ("pos_praise", 1.0, True, True),
        ("pos_praise", 0.0, True, False),
        ("topic_shift", 0.99, True, False),  # never an update
        ("neg_constraint_restate", 0.95, False, False),  # unparsed never applies
        ("neutral", 0.9, True, True),  # applied with reward 0: it still moves the baseline
    ],
)
def test_gate_edges(label, confidence, parsed, apply):
    result = gate(label, confidence, parsed)
    assert result.apply is apply
    assert result.g == (confidence if apply else 0.0)
    assert result.reward == LABEL_REWARDS[label]
    assert result.label == label
    assert result.parsed is parsed


def test_gate_clamps_and_rejects_nan():
    assert gate("pos_praise", 1.7).confidence == 1.0
    nan = gate("pos_praise", float("nan"))
    assert nan.confidence == 0.0 and not nan.apply


def test_scripted_user_sentences():
    enforce = "As I mentioned before: when answering a math question, show every derivation step."
    correct = "That doesn't look right. Please check your answer again."
    praise = "Thanks, that's exactly what I needed. TERMINATE"
    expected = {
        enforce: "neg_constraint_restate",
        correct: "neg_correction",
        praise: "pos_praise",
    }
    for text, label in expected.items():
        result = keyword_judge(PREV_Q, PREV_A, text)
        assert result.label == label, text
        assert result.confidence >= 0.6 and result.apply
        assert result.g == result.confidence
        assert result.reward == LABEL_REWARDS[label]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I told you to use bullet points.", "neg_constraint_restate"),
        ("Remember: no emojis.", "neg_constraint_restate"),
        ("When writing code, use type hints.", "neg_constraint_restate"),  # bare note
        ("That's wrong, the sign is off.", "neg_correction"),
        ("No, that is incorrect.", "neg_correction"),
        ("I don't understand the second step.", "neg_confusion"),
        ("What do you mean by chain rule?", "neg_confusion"),
        ("Perfect, great work.", "pos_praise"),
        ("Thank you!", "pos_praise"),
        ("Thanks.", "pos_praise"),
        ("Thanks, but I told you to use bullet points.", "neg_constraint_restate"),
        ("Ok, got it.", "pos_progress"),
        ("Next question please.", "pos_progress"),
    ],
)
def test_keyword_rules(text, label):
    assert keyword_judge(PREV_Q, PREV_A, text).label == label


def test_restatement_beats_praise():
    text = "Thanks, great answer, but as I said: when answering a math question, be brief."
    result = keyword_judge(PREV_Q, PREV_A, text)
    assert result.label == "neg_constraint_restate"
    assert result.reward == -1.0


def test_bare_note_restatement_is_less_sure_than_an_explicit_one():
    bare = keyword_judge(PREV_Q, PREV_A, "When writing code, use type hints.")
    cued = keyword_judge(PREV_Q, PREV_A, "As I said: when writing code, use type hints.")
    assert MIN_CONFIDENCE <= bare.confidence < cued.confidence


def test_unrelated_question_is_a_topic_shift_and_never_applies():
    result = keyword_judge(PREV_Q, PREV_A, "Which European capital hosts the Louvre museum?")
    assert result.label == "topic_shift"
    assert not result.apply and result.g == 0.0


def test_related_follow_up_is_neutral_low_confidence():
    result = keyword_judge(PREV_Q, PREV_A, "And the derivative of x^2 cos(x)?")
    assert result.label == "neutral"
    assert result.confidence < MIN_CONFIDENCE and not result.apply


@pytest.mark.parametrize(
    "reply",
    [
        '{"label": "neg_correction", "confidence": 0.8}',
        'Sure! ```json\n{"label": "neg_correction", "confidence": 0.8}\n``` done',
        'My verdict is {"label": "NEG_CORRECTION", "confidence": "0.8"} because...',
    ],
)
def test_parse_judge_reply_lenient(reply):
    result = parse_judge_reply(reply)
    assert result.parsed and result.apply
    assert result.label == "neg_correction" and result.confidence == 0.8
    assert result.reward == -0.8


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I think the user is unhappy.",
        '{"label": "angry", "confidence": 0.9}',  # unknown label
        '{"label": "pos_praise"}',  # no confidence
        '{"label": "pos_praise", "confidence": 7}',  # out of range
        '{"label": "pos_praise", "confidence": true}',
        "{not json at all}",
        '["pos_praise", 0.9]',
    ],
)
def test_parse_judge_reply_junk_is_neutral_unparsed(reply):
    result = parse_judge_reply(reply)
    assert result.label == "neutral"
    assert result.parsed is False
    assert result.apply is False and result.g == 0.0 and result.reward == 0.0


def test_parse_judge_reply_low_confidence_parses_but_does_not_apply():
    result = parse_judge_reply('{"label": "pos_praise", "confidence": 0.4}')
    assert result.parsed and result.label == "pos_praise" and not result.apply
