"""Scripted-world user profiles: catalog preferences plus, for every conflict group a user
holds both sides of, which side wins when both apply.

The winner is marked by ``Preference.priority_context``:
- ``["tie-break"]``: this side wins whenever both apply (most users);
- ``["cue:quick"]`` on one side and ``["tie-break"]`` on the other: the cue side wins when
  the query carries that cue, the tie-break side otherwise (a "quick question" wants the
  concise answer even from a user who usually wants detail).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from vars_core.notes import normalize
from vars_core.scripted.catalog import CatalogEntry, catalog, entry, find_by_condition
from vars_core.scripted.context import ANY
from vars_core.types import Preference, Profile

TIE_BREAK = "tie-break"
CUE_PREFIX = "cue:"
CUE_WINNER_RATE = 0.25  # share of (profile, group) pairs whose winner depends on a cue

_ROLES = ("student", "teacher", "engineer", "nurse", "analyst", "researcher", "writer", "lawyer")
_TRAITS = (
    "who skims answers between meetings",
    "who studies late at night",
    "who copies answers into a notebook",
    "who likes to see the reasoning",
    "who reviews everything twice",
    "who is new to the subject",
)


# Preferences per generated profile (DESIGN §5: ~40). Conditions are spread over domains
# and cues, so about eight of them hold for a typical request: more than the k = 5 cards
# a retrieval method may put in a prompt, which is the regime the benchmark probes.
DEFAULT_PREFS_PER_PROFILE = 40


def generate_profiles(
    n: int, seed: int, prefs_per_profile: int | None = DEFAULT_PREFS_PER_PROFILE
) -> list[Profile]:
    """``n`` profiles, deterministic for ``seed``; profile i does not depend on ``n``.

    Each holds ``prefs_per_profile`` catalog preferences (all of them when None or when
    the catalog is smaller), in catalog order.
    """
    entries = catalog()
    k = len(entries) if prefs_per_profile is None else max(1, min(prefs_per_profile, len(entries)))
    return [_profile(i, seed, entries, k) for i in range(n)]


def _profile(i: int, seed: int, entries: tuple[CatalogEntry, ...], k: int) -> Profile:
    digest = hashlib.sha256(f"profile|{seed}|{i}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "little"))
    chosen = (
        sorted(rng.choice(len(entries), size=k, replace=False))
        if k < len(entries)
        else range(len(entries))
    )
    held = [entries[j] for j in chosen]
    priority: dict[str, list[str]] = {}
    groups: dict[str, list[CatalogEntry]] = {}
    for e in held:
        if e.conflict_group:
            groups.setdefault(e.conflict_group, []).append(e)
    for sides in groups.values():
        cue_mode, pick = rng.random() < CUE_WINNER_RATE, int(rng.integers(2))  # always drawn
        if len(sides) < 2:
            continue
        cued = [s for s in sides if s.priority_cue]
        if cue_mode and cued:
            cue_side = cued[0]
            other = sides[1] if sides[0] is cue_side else sides[0]
            priority[cue_side.pref_id] = [CUE_PREFIX + str(cue_side.priority_cue)]
            priority[other.pref_id] = [TIE_BREAK]
        else:
            priority[sides[pick].pref_id] = [TIE_BREAK]
    role = _ROLES[int(rng.integers(len(_ROLES)))]
    trait = _TRAITS[int(rng.integers(len(_TRAITS)))]
    return Profile(
        profile_id=f"s{seed}-p{i:03d}",
        persona=f"A {role} {trait}.",
        preferences=[e.preference(priority.get(e.pref_id)) for e in held],
    )


def trigger_of(pref: Preference) -> str:
    """The context feature under which ``pref``'s condition holds.

    Catalog preferences by id (when the condition text agrees), others by condition text;
    a condition the catalog does not know is taken to hold always.
    """
    try:
        known = entry(pref.pref_id)
        if normalize(known.condition) == normalize(pref.condition):
            return known.trigger
    except KeyError:
        pass
    by_condition = find_by_condition(pref.condition)
    return by_condition.trigger if by_condition else ANY


def _resolve(sides: list[Preference], context: Iterable[str]) -> Preference:
    ctx = set(context)
    for p in sides:
        if any(
            t.startswith(CUE_PREFIX) and t[len(CUE_PREFIX) :] in ctx for t in p.priority_context
        ):
            return p
    for p in sides:
        if TIE_BREAK in p.priority_context:
            return p
    return sides[0]  # unmarked (an imported profile): the first listed


def _holding(profile: Profile, context: frozenset[str]) -> list[Preference]:
    return [p for p in profile.preferences if trigger_of(p) in context]


def triggered_conflicts(
    profile: Profile, context: frozenset[str]
) -> list[tuple[Preference, Preference]]:
    """(winner, loser) for every conflict group both sides of which apply to ``context``."""
    groups: dict[str, list[Preference]] = {}
    for p in _holding(profile, context):
        if p.conflict_group:
            groups.setdefault(p.conflict_group, []).append(p)
    pairs: list[tuple[Preference, Preference]] = []
    for sides in groups.values():
        if len(sides) > 1:
            winner = _resolve(sides, context)
            pairs += [(winner, p) for p in sides if p is not winner]
    return pairs


def applicable_preferences(profile: Profile, context: frozenset[str]) -> list[Preference]:
    """Preferences whose condition holds in ``context``, each conflict's loser removed."""
    losers = {id(loser) for _, loser in triggered_conflicts(profile, context)}
    return [p for p in _holding(profile, context) if id(p) not in losers]
