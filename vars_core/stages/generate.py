"""generate: the agent answers, with the method's memory in its prompt.

Split in two so a caller can batch the LLM calls itself (``PersonalizedLLM.chat_prepare``
/ ``chat_complete``): ``prepare`` builds the prompt, ``commit_reply`` stores the answer.
"""

from __future__ import annotations

from vars_core.llm.base import complete_sync
from vars_core.methods import build_prompt
from vars_core.scripted.agent import scripted_reply
from vars_core.stages.context import StageContext
from vars_core.types import AgentReply, Card, GenerateResult, Message, RetrieveResult


def method_notes(ctx: StageContext) -> list[str]:
    memory = ctx.method.memory
    if memory == "all":
        # Creation order; the note (not the id, which embeds the user id) breaks ties, so
        # the order does not depend on the campaign's id.
        cards: list[Card] = sorted(ctx.user.cards().values(), key=lambda c: (c.created_at, c.note))
        return [card.note for card in cards]
    if memory == "retrieved":
        result = ctx.store.stage_output(ctx.session.session_id, ctx.turn, "retrieve", RetrieveResult)
        return list(result.notes) if result else []
    if memory == "reflection":
        return ctx.user.reflection()
    return []


def earlier_conversations(ctx: StageContext) -> str:
    if ctx.method.memory != "history":
        return ""
    parts = [ctx.user.summary()] + [f"{m.role}: {m.content}" for m in ctx.user.history()]
    return "\n".join(p for p in parts if p)


def prepare(ctx: StageContext) -> tuple[list[str], list[Message]]:
    notes = method_notes(ctx)
    return notes, build_prompt(notes, ctx.messages(), earlier_conversations(ctx))


def commit_reply(ctx: StageContext, notes: list[str], reply: AgentReply) -> bool:
    return ctx.commit(
        "generate",
        [
            ctx.output_op("generate", GenerateResult(reply, notes)),
            ctx.store.append_message_op(ctx.session.session_id, Message("assistant", reply.content, ctx.turn)),
        ],
    )


def agent_reply(ctx: StageContext, prompt: list[Message]) -> AgentReply:
    engine = ctx.engine
    if engine.agent_is_scripted:
        return scripted_reply(prompt, ctx.rng("generate"), engine.agent_params, engine.problem_bank)
    cfg = engine.config.agent
    completion = complete_sync(
        engine.agent_llm, prompt, max_tokens=cfg.max_tokens, temperature=cfg.temperature
    )
    return AgentReply(completion.text, completion.usage)


def handle(ctx: StageContext) -> None:
    notes, prompt = prepare(ctx)
    commit_reply(ctx, notes, agent_reply(ctx, prompt))
