"""judge: turn the user's reaction to the last reply into a reward and a gate."""

from __future__ import annotations

from vars_core.stages.context import StageContext


def handle(ctx: StageContext) -> None:
    messages = ctx.messages()
    prev_query = _last(messages, "user", ctx.turn - 1)
    prev_answer = _last(messages, "assistant", ctx.turn - 1)
    query = _last(messages, "user", ctx.turn)
    result = ctx.engine.judge(prev_query, prev_answer, query)
    ctx.commit("judge", [ctx.output_op("judge", result)])


def _last(messages, role: str, turn: int) -> str:
    for message in reversed(messages):
        if message.role == role and message.turn == turn:
            return message.content
    return ""
