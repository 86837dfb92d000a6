"""The reward judge as an LLM call: (previous query, previous answer, new query) -> label.

The reply is read by ``vars_core.judge.parse_judge_reply``, so the LLM judge and the keyword
judge share one label map and one gate: a reply that does not parse is neutral, marked
``parsed=False`` and never applied. A failed backend call (``LLMError``) is treated the same
way, since a missed update costs one turn of learning while a raise would fail the session;
both are counted.

Judgements are cached by a hash of the three texts, so a redelivered judge task does not
pay for (or, with a sampling server, change) a judgement already made. Failed calls are
not cached: the next attempt may succeed.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgspec

from vars_core.backend_stats import BackendStats
from vars_core.judge import LABEL_REWARDS, gate, parse_judge_reply
from vars_core.llm.base import ChatLLM, LLMError, complete_sync
from vars_core.lru import LRUCache
from vars_core.types import JudgeResult, Message, RewardLabel

log = logging.getLogger(__name__)

COUNTERS = ("calls", "cache_hits", "unparsed", "llm_errors")

LABEL_DEFINITIONS: dict[RewardLabel, str] = {
    "neg_constraint_restate": "the user repeats a preference or constraint (format, length, "
    "style, language, notation) that the answer ignored",
    "neg_correction": "the user says the answer is wrong or corrects it",
    "neg_confusion": "the user says they do not understand the answer",
    "pos_praise": "the user praises the answer or thanks the assistant for it",
    "pos_progress": "the user accepts the answer and continues with the same task",
    "neutral": "none of the above",
    "topic_shift": "the user starts a new, unrelated request",
}

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": list(LABEL_REWARDS)},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}

SYSTEM_PROMPT = (
    "You judge how a user reacted to an assistant's answer. You are given the user's "
    "previous message, the assistant's answer to it, and the user's new message. Label the "
    "NEW message with exactly one of these labels:\n"
    + "\n".join(f"- {label}: {text}" for label, text in LABEL_DEFINITIONS.items())
    + "\nconfidence is from 0 to 1: how sure you are of the label.\n"
    'Reply with JSON only, in this form: {"label": "<label>", "confidence": 0.9}'
)

# The reaction, not the whole answer, carries the label: a long answer keeps its head and
# tail so a small judge model's context is not spent on its middle.
_MAX_ANSWER_CHARS = 3000


class LLMJudge:
    def __init__(
        self,
        llm: ChatLLM,
        max_tokens: int = 128,
        cache_size: int = 10000,
        stats: BackendStats | None = None,
    ) -> None:
        self.llm = llm
        self.max_tokens = max_tokens
        self.stats = stats if stats is not None else BackendStats()
        self.stats.declare(COUNTERS)
        self._cache: LRUCache[str, JudgeResult] = LRUCache(cache_size)

    def judge(self, prev_query: str, prev_answer: str, query: str) -> JudgeResult:
        self.stats.incr("calls")
        key = cache_key(prev_query, prev_answer, query)
        cached = self._cache.get(key)
        if cached is not None:
            self.stats.incr("cache_hits")
            return cached
        # Two threads judging the same new turn at once may both call the model; the
        # results agree at temperature 0, and the lock is never held across a call.
        try:
            completion = complete_sync(
                self.llm,
                build_prompt(prev_query, prev_answer, query),
                max_tokens=self.max_tokens,
                temperature=0.0,
                json_schema=JUDGE_SCHEMA,
            )
        except LLMError as err:
            self.stats.incr("llm_errors")
            log.warning("judge backend failed, no update this turn: %s", err)
            return gate("neutral", 0.0, parsed=False)
        result = parse_judge_reply(completion.text)
        if not result.parsed:
            self.stats.incr("unparsed")
            log.warning("judge reply did not parse: %.200r", completion.text)
        self._cache.put(key, result)
        return result


def cache_key(prev_query: str, prev_answer: str, query: str) -> str:
    # JSON-encoding the triple keeps ("ab", "c") and ("a", "bc") apart.
    return hashlib.sha256(msgspec.json.encode([prev_query, prev_answer, query])).hexdigest()


def build_prompt(prev_query: str, prev_answer: str, query: str) -> list[Message]:
    answer = prev_answer.strip()
    if len(answer) > _MAX_ANSWER_CHARS:
        half = _MAX_ANSWER_CHARS // 2
        answer = f"{answer[:half]} [...] {answer[-half:]}"
    body = (
        f"<previous_user_message>\n{prev_query.strip()}\n</previous_user_message>\n\n"
        f"<assistant_answer>\n{answer}\n</assistant_answer>\n\n"
        f"<new_user_message>\n{query.strip()}\n</new_user_message>"
    )
    return [Message("system", SYSTEM_PROMPT), Message("user", body)]
