"""Which stage comes next: one pure function shared by the in-process runner and the workers.

campaign turn t: simulate -> [judge -> update] -> [extract] -> [retrieve] -> generate -> simulate t+1
Judge and update need a previous turn (t > 1). When the user terminates, only the
learning stages still run (the last reaction is feedback too), then the session ends.
"""

from __future__ import annotations

from typing import NamedTuple

from vars_core.methods import Method

END = "end"
LEARNING_STAGES = ("judge", "update")


class Step(NamedTuple):
    stage: str  # a stage name or END
    turn: int


def turn_stages(method: Method, turn: int, terminated: bool) -> tuple[str, ...]:
    """The stages after simulate at this turn, for this method."""
    stages = method.stages
    if turn <= 1:
        stages = tuple(s for s in stages if s not in LEARNING_STAGES)
    if terminated:
        stages = tuple(s for s in stages if s in LEARNING_STAGES)
    return stages


def next_step(method: Method, stage: str, turn: int, terminated: bool) -> Step:
    if stage == "start":
        return Step("simulate", 1)
    stages = turn_stages(method, turn, terminated)
    if stage == "simulate":
        return Step(stages[0], turn) if stages else Step(END, turn)
    if stage == "generate":
        return Step("simulate", turn + 1)
    if stage not in stages:
        raise ValueError(f"stage {stage!r} is not on method {method.name!r}'s route at turn {turn}")
    position = stages.index(stage)
    if position + 1 < len(stages):
        return Step(stages[position + 1], turn)
    return Step(END, turn) if terminated else Step("simulate", turn + 1)
