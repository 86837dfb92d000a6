"""Task success: whether a session's answer solves its problem.

Three graders, chosen by the problem: math answers are normalized and compared; code is
run against the task's unit tests in a sandboxed subprocess; answers that are neither a
math value nor one of printed options (free-form problems from a JSONL file) go to an LLM
answer judge when one is configured, and are compared as text otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import msgspec

from vars_core.code_tasks import CODE_DOMAIN, grade_code
from vars_core.problems import MATH_DOMAINS, answers_match, choices_of
from vars_core.types import Problem

log = logging.getLogger(__name__)

Grader = Literal["math", "code", "match", "judge"]
# (question, reference answer, candidate answer) -> correct?
AnswerJudge = Callable[[str, str, str], bool]


class Grade(msgspec.Struct, frozen=True):
    success: bool
    grader: Grader
    detail: str = ""


def grader_for(problem: Problem, judge: AnswerJudge | None) -> Grader:
    if problem.domain == CODE_DOMAIN:
        return "code"
    if problem.domain in MATH_DOMAINS:
        return "math"
    if judge is not None and not choices_of(problem.question):
        return "judge"
    return "match"


def grade(problem: Problem, reply: str, draft: str, judge: AnswerJudge | None = None) -> Grade:
    """Grade ``draft`` (the answer the user took from ``reply``; code is read from the reply
    itself) against ``problem``."""
    kind = grader_for(problem, judge)
    if kind == "code":
        result = grade_code(problem, reply)
        return Grade(result.passed, kind, result.detail or result.reason)
    if kind == "judge":
        assert judge is not None
        if not draft.strip():
            return Grade(False, kind, "no answer")
        return Grade(bool(judge(problem.question, problem.answer, draft)), kind)
    return Grade(answers_match(problem.domain, draft, problem.answer), kind)
