"""The scripted agent behind the ChatLLM protocol: no model, no network, exact replies.

A reply is a pure function of the seed and the messages (roles and contents): the rng of
each call is derived from both, so the same prompt gets the same reply in any process, in
any order, from any thread. Sampling options and ``json_schema`` are ignored; the scripted
agent renders prose replies only.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
import numpy as np

from vars_core.llm.base import Completion
from vars_core.problems import ProblemBank
from vars_core.rng import rng_for
from vars_core.scripted.agent import ScriptedAgentParams, scripted_reply
from vars_core.types import Message


class ScriptedChat:
    """bank: the problems whose answers the agent "knows"; "shipped" loads the problems
    shipped with vars_core on first use, None knows none (every answer is "I am not sure")."""

    def __init__(
        self,
        seed: int = 0,
        params: ScriptedAgentParams | None = None,
        bank: ProblemBank | None | Literal["shipped"] = "shipped",
        name: str = "scripted",
    ) -> None:
        self.seed = seed
        self.params = params or ScriptedAgentParams()
        self.name = name
        self._bank = bank
        self._lock = threading.Lock()
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    @property
    def bank(self) -> ProblemBank | None:
        with self._lock:
            if isinstance(self._bank, str):  # "shipped"
                from vars_core.problems import known_domains, load_problems

                self._bank = ProblemBank(load_problems(known_domains()))
            return self._bank

    def complete_blocking(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
    ) -> Completion:
        reply = scripted_reply(list(messages), self._rng(messages), self.params, self.bank)
        with self._lock:
            self.requests += 1
            self.prompt_tokens += reply.usage.prompt_tokens
            self.completion_tokens += reply.usage.completion_tokens
        return Completion(
            text=reply.content,
            usage=reply.usage,
            model="scripted",
            finish_reason="stop",
            usage_estimated=True,  # count_tokens, not a tokenizer
        )

    async def complete(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
    ) -> Completion:
        return self.complete_blocking(messages)

    async def stream(
        self, messages: list[Message], *, max_tokens: int = 512, temperature: float = 0.0
    ) -> AsyncIterator[str]:
        text = self.complete_blocking(messages).text
        words = text.split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "
            await asyncio.sleep(0)

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "retries": 0,
            "failures": 0,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _rng(self, messages: list[Message]) -> np.random.Generator:
        # Role and content only: the turn number does not change what the agent reads.
        key = msgspec.json.encode([(m.role, m.content) for m in messages])
        return rng_for(self.seed, "scripted-chat", hashlib.sha256(key).hexdigest())
