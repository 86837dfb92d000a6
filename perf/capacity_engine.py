"""An engine whose LLM roles take their time from a server and their words from the
scripted world: for measuring the pipeline against a backend's capacity.

Each LLM role (agent, simulated user, reward judge, extractor) makes the request it
would make with an OpenAI-compatible backend: the same prompt (built by the role's own
``build_prompt``), the same ``max_tokens`` and JSON schema, through the same client
(``OpenAIChat``: pooled connections, the role's ``max_concurrency``, retries), to the
URL in the role's config. It waits for the whole reply, then uses the scripted world's
answer instead of the server's filler text: the scripted agent writes the reply, the
scripted user rates it, the keyword judge labels the reaction, the rule extractor reads
the preferences. So the server decides how long every call takes and the scripted world
decides what happens, and sessions are the scripted world's sessions, deterministic.

The agent's reply comes from ``ScriptedChat`` (keyed by the prompt, not by the stage's
rng): the same prompt gets the same reply in any process. Its usage is the server's (the
tokens the call spent). Calls are made exactly where the real roles make them: the
simulated user from turn 2 on, the judge when there is a new message, the extractor when
its window holds a user message. The free-form answer judge is not paced (the datasets
used are graded by text), nor are contextual's summaries and reflection's notes (use
methods without them).

Config: the four role tables (``agent``, ``simulator_llm``, ``judge_llm``,
``extractor_llm``) with ``kind = "openai"`` and the server's URL; ``perf.capacity_worker``
runs ``vars worker`` on this engine.
"""

from __future__ import annotations

import asyncio
import inspect
from functools import cached_property
from typing import Any

import numpy as np

from vars_core import llm_extractor, llm_judge, llm_user
from vars_core.config import LLMConfig
from vars_core.engine import Engine, ExtractFn, JudgeFn, SimulatorFn, make_role_llm
from vars_core.extractor import rule_extract
from vars_core.judge import keyword_judge
from vars_core.llm.base import Completion, complete_sync
from vars_core.llm.scripted import ScriptedChat
from vars_core.scripted.user import simulate_turn
from vars_core.types import Message, Problem, Profile, SimulatorTurn

# The max_tokens the real roles send when the engine builds them (vars_core/engine.py):
# LLMJudge and LLMExtractor with their defaults, LLMUser and the agent with their config's.
JUDGE_MAX_TOKENS: int = inspect.signature(llm_judge.LLMJudge).parameters["max_tokens"].default
EXTRACTOR_MAX_TOKENS: int = inspect.signature(llm_extractor.LLMExtractor).parameters["max_tokens"].default


def _client(cfg: LLMConfig, role: str) -> Any:
    if cfg.kind != "openai":
        raise ValueError(f"{role}: the paced engine needs kind = 'openai' with the server's base_url")
    return make_role_llm(cfg, role)


class PacedAgent:
    """The agent role: the server spends the time, the scripted agent writes the reply."""

    def __init__(self, timing: Any, content: ScriptedChat, name: str = "agent") -> None:
        self.timing, self.content, self.name = timing, content, name

    def complete_blocking(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict[str, Any] | None = None,
    ) -> Completion:
        spent = self.timing.complete_blocking(
            messages, max_tokens=max_tokens, temperature=temperature, json_schema=json_schema
        )
        reply = self.content.complete_blocking(messages)
        return Completion(reply.text, spent.usage, spent.model, spent.finish_reason, spent.usage_estimated)

    async def complete(self, messages: list[Message], **options: Any) -> Completion:
        return await asyncio.to_thread(self.complete_blocking, messages, **options)

    def close(self) -> None:
        self.timing.close()

    async def aclose(self) -> None:
        await self.timing.aclose()


class PacedEngine(Engine):
    @property
    def agent_is_scripted(self) -> bool:
        return False  # the generate stage calls agent_llm, which is paced

    @cached_property
    def agent_llm(self) -> PacedAgent:
        return PacedAgent(_client(self.config.agent, "agent"), ScriptedChat(params=self.agent_params))

    @cached_property
    def answer_judge(self) -> None:
        return None  # free-form answers are compared as text, as in the scripted world

    @cached_property
    def judge(self) -> JudgeFn:
        client = _client(self.config.judge_llm, "judge")

        def judge(prev_query: str, prev_answer: str, query: str):
            complete_sync(
                client,
                llm_judge.build_prompt(prev_query, prev_answer, query),
                max_tokens=JUDGE_MAX_TOKENS,
                temperature=0.0,
                json_schema=llm_judge.JUDGE_SCHEMA,
            )
            return keyword_judge(prev_query, prev_answer, query)

        return judge

    @cached_property
    def extract(self) -> ExtractFn:
        client = _client(self.config.extractor_llm, "extractor")
        window = self.config.extractor_window

        def extract(messages: list[Message]):
            recent = [m for m in messages if m.role != "system"][-window:] if window > 0 else []
            if any(m.role == "user" and m.content.strip() for m in recent):
                complete_sync(
                    client,
                    llm_extractor.build_prompt(recent),
                    max_tokens=EXTRACTOR_MAX_TOKENS,
                    temperature=0.0,
                    json_schema=llm_extractor.PREFERENCES_SCHEMA,
                )
            return rule_extract(messages, window=1)

        return extract

    @cached_property
    def simulator(self) -> SimulatorFn:
        cfg = self.config.simulator_llm
        client = _client(cfg, "simulator")
        params = self.user_params

        def simulator(
            profile: Profile,
            problem: Problem,
            opening: str,
            history: list[Message],
            turn: int,
            max_turns: int,
            rng: np.random.Generator,
        ) -> SimulatorTurn:
            if turn > 1:  # turn 1 is the harness-built opening, no model call
                complete_sync(
                    client,
                    llm_user.build_prompt(profile, problem, opening, history),
                    max_tokens=cfg.max_tokens,
                    temperature=cfg.temperature,
                    json_schema=llm_user.user_schema(profile),
                )
            return simulate_turn(profile, problem, opening, history, turn, max_turns, rng, params)

        return simulator


def paced_config(base_url: str, max_concurrency: int | None = None, **engine: Any) -> dict[str, Any]:
    """An EngineConfig mapping with every LLM role on ``base_url`` (each role names
    itself in the request's model field, so the server can tell them apart)."""

    def role(name: str) -> dict[str, Any]:
        table: dict[str, Any] = {"kind": "openai", "base_url": base_url, "model": name}
        if max_concurrency is not None:
            table["max_concurrency"] = max_concurrency
        return table

    return {
        "judge": "llm",
        "extractor": "llm",
        "simulator": "llm",
        "agent": role("agent"),
        "simulator_llm": role("simulator"),
        "judge_llm": role("judge"),
        "extractor_llm": role("extractor"),
        **engine,
    }
