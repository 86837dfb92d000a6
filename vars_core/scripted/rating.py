"""How a simulated user rates an agent reply against its profile, by the catalog verifiers.

Both simulated users (scripted and LLM) report their ratings through this one function, so
the harness's metrics never depend on what a simulator model claims: compliance, conflict
resolution and over-personalization are measured the same way whoever plays the user.
"""

from __future__ import annotations

import msgspec

from vars_core.scripted.catalog import check
from vars_core.scripted.context import context_of
from vars_core.scripted.profiles import applicable_preferences, trigger_of, triggered_conflicts
from vars_core.types import Preference, Profile


class ReplyRating(msgspec.Struct, frozen=True):
    satisfied: dict[str, bool]  # applicable preference with a verifier -> satisfied
    conflict_correct: list[bool]  # per conflict group both sides of which apply
    # Preferences whose condition does not hold but whose mark is in the reply. Only
    # verifiers that look for a mark (regex) count: a reply "without bold" or "under 100
    # words" shows nothing that was applied.
    over_personalized: list[str]


def passes(pref: Preference, reply: str) -> bool:
    return pref.verifier is not None and check(pref.verifier, reply)


def rate_reply(profile: Profile, opening: str, reply: str) -> ReplyRating:
    context = context_of(opening)
    # Only preferences with a verifier can be judged (imported profiles may lack them).
    applicable = [p for p in applicable_preferences(profile, context) if p.verifier is not None]
    conflicts = [
        (w, lo) for w, lo in triggered_conflicts(profile, context) if w.verifier and lo.verifier
    ]
    # The right side of a conflict: the winner's verifier passes and the loser's fails.
    conflict_correct = [passes(w, reply) and not passes(lo, reply) for w, lo in conflicts]
    over = [
        p.pref_id
        for p in profile.preferences
        if p.verifier is not None
        and p.verifier.kind == "regex"
        and trigger_of(p) not in context
        and passes(p, reply)
    ]
    return ReplyRating(
        satisfied={p.pref_id: passes(p, reply) for p in applicable},
        conflict_correct=conflict_correct,
        over_personalized=over,
    )
