"""Problem sets: loading, reference answers, answer comparison, problem choice, lookup."""

from __future__ import annotations

import pytest

from vars_core.problems import (
    ProblemBank,
    answers_match,
    choices_of,
    known_domains,
    last_boxed,
    load_problems,
    normalize_answer,
    pick_problem,
    reference_answer,
)

DOMAINS = ["math-500", "math_hard", "logiqa", "medqa", "mmlu"]


def test_all_five_domains_ship_and_load():
    assert set(DOMAINS) <= set(known_domains())
    for split in ("test", "train"):
        problems = load_problems(DOMAINS, split)
        assert len(problems) == 100
        for domain in DOMAINS:
            mine = [p for p in problems if p.domain == domain]
            assert len(mine) == 20
            assert [p.problem_id for p in mine] == [f"{domain}/{split}/{i}" for i in range(20)]
        for p in problems:
            assert p.question.strip() and p.answer.strip()
            assert 1 <= p.difficulty <= 5


def test_difficulty_is_math_level_else_three():
    problems = {p.problem_id: p for p in load_problems(DOMAINS)}
    assert problems["math-500/test/2"].difficulty == 1
    assert problems["math-500/test/0"].difficulty == 5
    assert {p.difficulty for p in problems.values() if p.domain == "math_hard"} == {5}
    assert {p.difficulty for p in problems.values() if p.domain in ("logiqa", "medqa", "mmlu")} == {
        3
    }
    assert len({p.difficulty for p in problems.values() if p.domain == "math-500"}) >= 4


def test_boxed_answers_are_extracted():
    problems = {p.problem_id: p for p in load_problems(DOMAINS)}
    assert problems["math-500/test/5"].answer == r"\frac{1997}{2}"
    assert problems["math-500/test/2"].answer == r"137 \frac{1}{2}"
    assert problems["math_hard/test/0"].answer == "10455"
    assert problems["math_hard/test/19"].answer == "-338016"
    # solution with two boxed answers: the last one
    assert problems["math-500/test/6"].answer == "2"
    train = {p.problem_id: p for p in load_problems(["math-500"], "train")}
    assert train["math-500/train/11"].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert problems["medqa/test/0"].answer == "Sickle cell disease"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{1} or rather \boxed{\sqrt{2^{3}}}", r"\sqrt{2^{3}}"),
        (r"the answer is \boxed 5.", "5"),
        (r"\fbox{3}", "3"),
        (r"\boxed{a{b}c}", "a{b}c"),
        ("no box here", None),
        (r"\boxed{unbalanced", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_reference_answer_by_domain():
    assert reference_answer("math-500", r"thus $\boxed{\dfrac{3}{4}}$.") == r"\dfrac{3}{4}"
    assert reference_answer("mmlu", "  III only \n") == "III only"
    assert reference_answer("logiqa", "(B)F and G") == "(B)F and G"
    with pytest.raises(ValueError, match="boxed"):
        reference_answer("math_hard", "the answer is 4")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (r"$\dfrac{1}{2}$", r"\frac{1}{2}"),
        (r"\frac 59", r"\frac{5}{9}"),
        ("12.0", "12"),
        ("3.50", "3.5"),
        ("10,000", "10000"),
        (r"50,\!625", "50625"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"55^\circ", "55"),
        (r"\boxed{7}.", "7"),
        (r"\text{ 5 }", "5"),
    ],
)
def test_normalize_answer_equates(a, b):
    assert normalize_answer(a) == normalize_answer(b)


@pytest.mark.parametrize(
    ("a", "b"), [("12", "13"), (r"\frac{1}{2}", r"\frac{2}{1}"), ("3.5", "35"), ("-2", "2")]
)
def test_normalize_answer_separates(a, b):
    assert normalize_answer(a) != normalize_answer(b)


def test_answers_match():
    assert answers_match("math-500", r"$\frac{1997}{2}$", r"\frac{1997}{2}")
    assert not answers_match("math-500", "", "0")
    assert answers_match("mmlu", "iii only.", "III only")
    assert not answers_match("mmlu", "II only", "III only")
    assert not answers_match("medqa", "", "Fomepizole")


def test_unknown_domain_is_named():
    with pytest.raises(ValueError) as err:
        load_problems(["math-500", "gsm9k"])
    message = str(err.value)
    assert "gsm9k" in message
    for domain in DOMAINS:
        assert domain in message
    with pytest.raises(ValueError, match="split"):
        load_problems(["mmlu"], "validation")


def test_choices_of_each_format():
    problems = {p.problem_id: p for p in load_problems(DOMAINS)}
    for pid in ("medqa/test/0", "mmlu/test/0", "logiqa/test/3"):
        assert len(choices_of(problems[pid].question)) == 4, pid
    # every multiple-choice problem: exactly one option states the reference answer
    for split in ("test", "train"):
        for p in load_problems(["logiqa", "medqa", "mmlu"], split):
            choices = choices_of(p.question)
            assert len(choices) >= 4, p.problem_id
            assert sum(answers_match(p.domain, c, p.answer) for c in choices) == 1, p.problem_id
    assert choices_of(problems["math-500/test/3"].question) == []


def test_pick_problem_is_deterministic_and_order_free():
    problems = load_problems(DOMAINS)
    forward = [pick_problem(problems, 7, "lane-a", i).problem_id for i in range(30)]
    backward = [pick_problem(problems, 7, "lane-a", i).problem_id for i in reversed(range(30))][
        ::-1
    ]
    assert forward == backward
    # no repeats until the set is used up
    first_pass = [pick_problem(problems, 7, "lane-a", i).problem_id for i in range(len(problems))]
    assert len(set(first_pass)) == len(problems)
    other_lane = [pick_problem(problems, 7, "lane-b", i).problem_id for i in range(30)]
    other_seed = [pick_problem(problems, 8, "lane-a", i).problem_id for i in range(30)]
    assert forward != other_lane and forward != other_seed
    with pytest.raises(ValueError):
        pick_problem([], 0, "x", 0)


def test_problem_bank_finds_the_pasted_problem():
    problems = load_problems(DOMAINS)
    bank = ProblemBank(problems)
    for p in problems[::7]:
        assert bank.lookup(f"I'm working on a math problem.\n\n{p.question}") is not None
        found = bank.lookup(f"Please help.\n\n{p.question}")
        assert found is not None and found.question == p.question and found.answer == p.answer
        assert bank.lookup(f"Help with this: {p.question} Thanks") is not None
    assert bank.lookup("What is the capital of France?") is None
    assert bank.lookup("") is None
