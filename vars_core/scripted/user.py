"""The scripted simulated user: deterministic, no model.

It opens a session with the problem pasted below a short request ("I'm working on a math
problem." plus cues), then judges each agent reply with the catalog verifiers of the
preferences that apply, and says one of three things:

- a violated preference: "As I mentioned before: when {condition}, {action}." (the note
  form, so extractors and the keyword judge read it as a restated constraint);
- a wrong final answer: "That doesn't look right. Please check your answer again.";
- otherwise: "Thanks, that's exactly what I needed. TERMINATE".
"""

from __future__ import annotations

import hashlib
import re

import msgspec
import numpy as np
from msgspec.structs import replace

from vars_core.grading import AnswerJudge, grade
from vars_core.notes import format_note
from vars_core.scripted.context import ANY, CUES, context_of, domain_feature, request_header
from vars_core.scripted.profiles import trigger_of, triggered_conflicts
from vars_core.scripted.rating import rate_reply
from vars_core.types import Message, Preference, Problem, Profile, SimulatorTurn

ENFORCE_PREFIX = "As I mentioned before: "
CORRECTION = "That doesn't look right. Please check your answer again."
PRAISE = "Thanks, that's exactly what I needed. TERMINATE"

_FINAL = re.compile(r"Final answer:\s*(.+)")


class ScriptedUserParams(msgspec.Struct, frozen=True):
    # Violated preferences restated per message; a person names one or two things at a
    # time rather than re-reading a whole checklist.
    max_enforce_per_turn: int = 2
    # Share of openings built so that both sides of one of the user's conflict groups
    # apply (when the problem's domain allows one): the conflict-resolution probes.
    conflict_probe_rate: float = 0.3
    # Share of other openings that carry one cue ("Quick question:", ...) that triggers no
    # conflict, so cue-conditioned preferences are exercised outside probes too.
    cue_rate: float = 0.3
    # Conflict groups a user's probes come from (0: all of them). A person meets the same
    # tensions again and again ("quick question" vs wanting detail), and a conflict met only
    # once in a campaign is a coin flip no learner could call; see profile_focus().
    probe_focus: int = 2


def opening_message(
    profile: Profile, problem: Problem, rng: np.random.Generator, params: ScriptedUserParams
) -> tuple[str, bool]:
    """The first user message and whether it is a conflict probe.

    A probe adds the cues that make both sides of one of the profile's conflict groups
    hold. Other openings only carry cues that trigger no conflict, so ``is_probe`` is True
    exactly when some conflict applies (a group whose sides both hold in the problem's
    domain with no cue at all makes every opening of that domain a probe).
    """
    domain = domain_feature(problem.domain)
    u_probe, u_cue = rng.random(), rng.random()
    pick_group, pick_cue = rng.random(), rng.random()
    cues: list[str] = []
    if u_probe < params.conflict_probe_rate:
        options = _probe_cue_sets(profile, domain, params.probe_focus)
        if options:
            cues = options[int(pick_group * len(options))]
    if not cues and u_cue < params.cue_rate:
        calm = [c for c in CUES if not triggered_conflicts(profile, _ctx(domain, [c]))]
        if calm:
            cues = [calm[int(pick_cue * len(calm))]]
    text = f"{request_header(domain, cues)}\n\n{problem.question}"
    return text, bool(triggered_conflicts(profile, context_of(text)))


def _ctx(domain: str, cues: list[str]) -> frozenset[str]:
    return frozenset({ANY, domain, *cues})


def _probe_cue_sets(profile: Profile, domain: str, focus: int = 0) -> list[list[str]]:
    """For each conflict group the profile holds both sides of and the domain allows, the
    cues that make both sides hold (one entry per group, in profile order); only the
    profile's focus groups when any of them is possible in this domain."""
    groups: dict[str, list[Preference]] = {}
    for p in profile.preferences:
        if p.conflict_group:
            groups.setdefault(p.conflict_group, []).append(p)
    focused = set(profile_focus(profile, focus)) if focus > 0 else set(groups)
    sets: dict[str, list[str]] = {}
    for group, sides in groups.items():
        if len(sides) < 2:
            continue
        triggers = {trigger_of(p) for p in sides[:2]}
        if any(t not in CUES and t not in (ANY, domain) for t in triggers):
            continue  # one side needs another domain
        sets[group] = sorted(t for t in triggers if t in CUES)
    preferred = [cues for group, cues in sets.items() if group in focused]
    return preferred or list(sets.values())


def profile_focus(profile: Profile, focus: int) -> list[str]:
    """The ``focus`` conflict groups (of those it holds both sides of) a user's probes come
    from: a fixed draw per profile id, so every method and seed meets the same ones."""
    counts: dict[str, int] = {}
    for p in profile.preferences:
        if p.conflict_group:
            counts[p.conflict_group] = counts.get(p.conflict_group, 0) + 1
    held = [g for g, n in counts.items() if n >= 2]
    ranked = sorted(held, key=lambda g: hashlib.sha256(f"{profile.profile_id}|{g}".encode()).digest())
    return ranked[:focus]


def final_answer(reply: str) -> str:
    """The answer the user takes from a reply: its last "Final answer: X" line."""
    found = _FINAL.findall(reply)
    if not found:
        return ""
    answer = found[-1].strip()
    answer = answer.strip("*").strip()
    if len(answer) > 1 and answer.startswith("$") and answer.endswith("$"):
        answer = answer[1:-1].strip()
    return answer


def enforcement(pref: Preference) -> str:
    """The enforcement sentence: the note form after "As I mentioned before: "."""
    note = format_note(pref.condition, pref.action)
    return ENFORCE_PREFIX + note[0].lower() + note[1:]


def simulate_turn(
    profile: Profile,
    problem: Problem,
    opening: str,
    history: list[Message],
    turn: int,
    max_turns: int,
    rng: np.random.Generator,
    params: ScriptedUserParams,
    answer_judge: AnswerJudge | None = None,
) -> SimulatorTurn:
    """The user's message at ``turn``; for turn > 1 it rates the last message of ``history``
    (the agent's reply) first. ``answer_judge`` grades free-form answers (else by text)."""
    context = context_of(opening)
    if turn <= 1:
        return SimulatorTurn(
            message=opening,
            terminate=False,
            conflict_probe=bool(triggered_conflicts(profile, context)),
        )
    reply = next((m.content for m in reversed(history) if m.role == "assistant"), "")
    rating = rate_reply(profile, opening, reply)
    satisfied = rating.satisfied
    draft = final_answer(reply)
    rated = SimulatorTurn(
        message="",
        terminate=False,
        satisfied=satisfied,
        draft_answer=draft,
        conflict_probe=bool(rating.conflict_correct),
        conflict_correct=rating.conflict_correct,
        over_personalized=rating.over_personalized,
    )
    if turn > max_turns:
        solved = grade(problem, reply, draft, answer_judge).success
        return replace(rated, terminate=True, timeout=True, solved=solved)

    by_id = {p.pref_id: p for p in profile.preferences}
    violated = [by_id[pid] for pid, ok in satisfied.items() if not ok]
    if violated:
        k = min(max(1, params.max_enforce_per_turn), len(violated))
        picked = sorted(rng.choice(len(violated), size=k, replace=False))
        restated = [violated[int(i)] for i in picked]
        message = " ".join(enforcement(p) for p in restated) + " Please revise your answer."
        return replace(rated, message=message, enforced=[p.pref_id for p in restated])
    if not grade(problem, reply, draft, answer_judge).success:
        return replace(rated, message=CORRECTION)
    return replace(rated, message=PRAISE, terminate=True, solved=True)
