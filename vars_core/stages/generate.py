"""generate: the agent answers, with the method's memory in its prompt.

Split in two so a caller can batch the LLM calls itself (``PersonalizedLLM.chat_prepare``
/ ``chat_complete``): ``prepare`` builds the prompt, ``commit_reply`` stores the answer.
A live turn streams: each text delta goes to the engine's reply sink as it arrives, the
reply is committed, then the sink is closed with the usage and the memories used.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from vars_core.llm.base import LLMError, complete_sync, stream_sync
from vars_core.methods import build_prompt
from vars_core.reply_stream import Done, Failed, Memory, ReplySink
from vars_core.scripted.agent import scripted_reply
from vars_core.stages.context import StageContext
from vars_core.types import (
    AgentReply,
    Card,
    GenerateResult,
    LiveOptions,
    Message,
    RetrieveResult,
    Usage,
)


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


def used_memories(ctx: StageContext, notes: list[str]) -> list[Memory]:
    """The memories in the prompt, in prompt order, with their card ids where they have one."""
    if ctx.method.memory == "retrieved":
        result = ctx.store.stage_output(ctx.session.session_id, ctx.turn, "retrieve", RetrieveResult)
        if result is not None:
            return [Memory(note, cid) for cid, note in zip(result.card_ids, result.notes, strict=True)]
    if ctx.method.memory == "all":
        ids = {card.note: card.card_id for card in ctx.user.cards().values()}
        return [Memory(note, ids.get(note, "")) for note in notes]
    return [Memory(note) for note in notes]


_PIECES = re.compile(r"\s*\S+\s*")


def stream_reply(
    ctx: StageContext, prompt: list[Message], on_delta: Callable[[str], None]
) -> tuple[AgentReply, str, bool]:
    """The agent's reply, each delta handed to ``on_delta`` as it comes; returns the reply,
    the finish reason, and whether the usage is an estimate."""
    engine = ctx.engine
    if engine.agent_is_scripted:
        reply = scripted_reply(prompt, ctx.rng("generate"), engine.agent_params, engine.problem_bank)
        for piece in _PIECES.findall(reply.content):  # word by word, as a server would
            on_delta(piece)
        return reply, "stop", True
    cfg = engine.config.agent
    options = ctx.store.stage_output(ctx.session.session_id, ctx.turn, "options", LiveOptions) or LiveOptions()
    settings = {
        "max_tokens": options.max_tokens if options.max_tokens is not None else cfg.max_tokens,
        "temperature": options.temperature if options.temperature is not None else cfg.temperature,
    }
    if not options.stream:
        completion = complete_sync(engine.agent_llm, prompt, **settings)
        if completion.text:
            on_delta(completion.text)
        reply = AgentReply(completion.text, completion.usage)
        return reply, completion.finish_reason or "stop", completion.usage_estimated
    parts: list[str] = []
    usage, finish_reason, estimated = Usage(), "stop", True
    for chunk in stream_sync(engine.agent_llm, prompt, **settings):
        if chunk.delta:
            parts.append(chunk.delta)
            on_delta(chunk.delta)
        elif chunk.usage is not None:  # the closing chunk
            usage, finish_reason, estimated = chunk.usage, chunk.finish_reason, chunk.usage_estimated
    return AgentReply("".join(parts), usage), finish_reason, estimated


def stream_live(ctx: StageContext, notes: list[str], prompt: list[Message], sink: ReplySink) -> None:
    try:
        reply, finish_reason, estimated = stream_reply(ctx, prompt, sink.delta)
    except LLMError as exc:
        # The LLM client has already retried; a user is waiting, so the turn is answered
        # empty (the session goes on) and the reader is told why.
        commit_reply(ctx, notes, AgentReply(content=""))
        sink.close(Failed(str(exc)))
        return
    # Committed before the sink is closed: a reader that saw the end finds the turn done.
    commit_reply(ctx, notes, reply)
    sink.close(Done(finish_reason, reply.usage, used_memories(ctx, notes), estimated))


def handle(ctx: StageContext) -> None:
    notes, prompt = prepare(ctx)
    if ctx.session.lane == "live":
        sink = ctx.engine.reply_sink(ctx.store, ctx.session.session_id, ctx.turn)
        if sink is not None:
            stream_live(ctx, notes, prompt, sink)
            return
    commit_reply(ctx, notes, agent_reply(ctx, prompt))
