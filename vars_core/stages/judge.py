"""judge: turn the user's reaction to the last reply into a reward and a gate."""

from __future__ import annotations

from vars_core.stages.context import StageContext
from vars_core.types import JudgeResult

NO_REACTION = JudgeResult(label="neutral", confidence=0.0, reward=0.0, apply=False, g=0.0)


def handle(ctx: StageContext) -> None:
    messages = ctx.messages()
    prev_query = _last(messages, "user", ctx.turn - 1)
    prev_answer = _last(messages, "assistant", ctx.turn - 1)
    query = _last(messages, "user", ctx.turn)
    # A session that ran out of turns ends with no new message: there is no reaction to
    # judge, so no judge call and no update.
    result = ctx.engine.judge(prev_query, prev_answer, query) if query.strip() else NO_REACTION
    ctx.commit("judge", [ctx.output_op("judge", result)])


def _last(messages, role: str, turn: int) -> str:
    for message in reversed(messages):
        if message.role == role and message.turn == turn:
            return message.content
    return ""
