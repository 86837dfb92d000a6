"""The LLM answer judge: does a free-form candidate answer state the reference answer?

Used by ``vars_core.grading`` for problems that are neither math nor multiple choice nor
code (free-form problems from a JSONL file). The model returns ``{"correct": bool}``; the
reply is read like the simulated user's (strict JSON, then the local repair of
``vars_core.json_repair``, then one retry that shows the model its reply). A reply that
still cannot be read, or a failed backend call (``LLMError``), is counted and graded as
not correct: a missed success is a visible undercount, while a raise would fail the
session. A candidate equal to the reference after case and spacing normalization is
correct without a model call.
"""

from __future__ import annotations

import logging
from typing import Any

from vars_core.backend_stats import BackendStats
from vars_core.json_repair import RepairError, parse_object
from vars_core.llm.base import ChatLLM, LLMError, complete_sync
from vars_core.types import Message

log = logging.getLogger(__name__)

COUNTERS = ("calls", "exact", "correct", "incorrect", "repaired", "retried", "unparsed", "llm_errors")

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"correct": {"type": "boolean"}},
    "required": ["correct"],
    "additionalProperties": False,
}

SYSTEM_PROMPT = (
    "You check answers. You are given a question, its reference answer and a candidate "
    "answer. The candidate is correct when it states the same final answer as the "
    "reference; wording, formatting and extra explanation do not matter, a different or "
    "missing final answer does. "
    'Reply with JSON only: {"correct": true} or {"correct": false}'
)

_MAX_CHARS = 2000
_TRUE = frozenset({"true", "yes", "correct", "1"})
_FALSE = frozenset({"false", "no", "incorrect", "wrong", "0"})


class LLMAnswerJudge:
    """``judge(question, reference, candidate) -> bool``, the ``grading.AnswerJudge`` type."""

    def __init__(self, llm: ChatLLM, max_tokens: int = 32, stats: BackendStats | None = None) -> None:
        self.llm = llm
        self.max_tokens = max_tokens
        self.stats = stats if stats is not None else BackendStats()
        self.stats.declare(COUNTERS)

    def __call__(self, question: str, reference: str, candidate: str) -> bool:
        if _norm(candidate) and _norm(candidate) == _norm(reference):
            self.stats.incr("exact")
            return True
        self.stats.incr("calls")
        prompt = build_prompt(question, reference, candidate)
        try:
            verdict = self._ask(prompt)
        except LLMError as err:
            self.stats.incr("llm_errors")
            log.warning("answer judge backend failed, graded not correct: %s", err)
            return False
        if verdict is None:
            self.stats.incr("unparsed")
            return False
        self.stats.incr("correct" if verdict else "incorrect")
        return verdict

    def _ask(self, prompt: list[Message]) -> bool | None:
        text = self._complete(prompt)
        verdict, repaired, error = read_verdict(text)
        if verdict is not None:
            if repaired:
                self.stats.incr("repaired")
            return verdict
        retry = [
            Message("assistant", text),
            Message("user", f'That reply could not be read: {error}. Reply with only {{"correct": true}} or {{"correct": false}}.'),
        ]
        text = self._complete(prompt + retry)
        verdict, _, error = read_verdict(text)
        if verdict is None:
            log.warning("answer judge reply unusable after a retry: %s; reply %.200r", error, text)
            return None
        self.stats.incr("retried")
        return verdict

    def _complete(self, messages: list[Message]) -> str:
        return complete_sync(
            self.llm, messages, max_tokens=self.max_tokens, temperature=0.0, json_schema=ANSWER_SCHEMA
        ).text


def read_verdict(text: str) -> tuple[bool | None, bool, str]:
    """(verdict or None, whether the local repair was needed, the error when None)."""
    try:
        obj, repairs = parse_object(text, want=lambda o: any(str(k).strip().lower() == "correct" for k in o))
    except RepairError as err:
        return None, False, str(err)
    value = next((v for k, v in obj.items() if str(k).strip().lower() == "correct"), None)
    if isinstance(value, bool):
        return value, bool(repairs), ""
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE, True, ""
    return None, bool(repairs), 'the object has no boolean "correct"'


def build_prompt(question: str, reference: str, candidate: str) -> list[Message]:
    body = (
        f"<question>\n{_cut(question)}\n</question>\n\n"
        f"<reference_answer>\n{_cut(reference)}\n</reference_answer>\n\n"
        f"<candidate_answer>\n{_cut(candidate)}\n</candidate_answer>"
    )
    return [Message("system", SYSTEM_PROMPT), Message("user", body)]


def _cut(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS] + " [...]"


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")
