"""generate: the agent answers, with the method's notes in its system prompt."""

from __future__ import annotations

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
    return []


def handle(ctx: StageContext) -> None:
    notes = method_notes(ctx)
    prompt = build_prompt(notes, ctx.messages())
    reply: AgentReply = scripted_reply(prompt, ctx.rng("generate"), ctx.engine.agent_params, ctx.engine.problem_bank)
    ops = [
        ctx.output_op("generate", GenerateResult(reply, notes)),
        ctx.store.append_message_op(ctx.session.session_id, Message("assistant", reply.content, ctx.turn)),
    ]
    ctx.commit("generate", ops)
