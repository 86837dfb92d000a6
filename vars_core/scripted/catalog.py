"""The catalog of verifiable preferences of the scripted world.

Each entry is one preference a scripted user can hold and a scripted agent can render:
its note text (condition, action), the context feature under which the condition holds
(``trigger``, see ``context.py``), the agent render options its action sets (``render``),
and a programmatic verifier. The two sides of a conflict group set the same render key to
different values, and their triggers can hold together, so one query can ask for both.

The data lives in ``vars_core/data/scripted_catalog.json``; it is validated on load.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import msgspec

from vars_core.notes import format_note, normalize
from vars_core.scripted.context import DOMAINS, FEATURES
from vars_core.types import Preference, Verifier

CATALOG_PATH = Path(__file__).resolve().parent.parent / "data" / "scripted_catalog.json"


class CatalogEntry(msgspec.Struct, frozen=True):
    pref_id: str
    category: str
    condition: str  # lowercase, no commas or periods: it must survive the note format
    action: str  # no periods
    trigger: str  # the context feature under which the condition holds
    render: dict[str, str]  # agent render options the action sets
    verifier: Verifier
    conflict_group: str | None = None
    # A query cue under which this side wins its conflict for users whose winner is
    # cue-dependent ("quick question" -> the concise side); see profiles.py.
    priority_cue: str | None = None

    @property
    def note(self) -> str:
        return format_note(self.condition, self.action)

    def preference(self, priority_context: list[str] | None = None) -> Preference:
        return Preference(
            pref_id=self.pref_id,
            category=self.category,
            condition=self.condition,
            action=self.action,
            conflict_group=self.conflict_group,
            priority_context=list(priority_context or []),
            verifier=self.verifier,
        )


@cache
def catalog() -> tuple[CatalogEntry, ...]:
    entries = msgspec.json.decode(CATALOG_PATH.read_bytes(), type=tuple[CatalogEntry, ...])
    _validate(entries)
    return entries


@cache
def _index() -> tuple[dict[str, CatalogEntry], dict[str, CatalogEntry], dict[str, CatalogEntry]]:
    by_id = {e.pref_id: e for e in catalog()}
    by_action = {normalize(e.action): e for e in catalog()}
    by_condition: dict[str, CatalogEntry] = {}
    for e in catalog():
        by_condition.setdefault(normalize(e.condition), e)
    return by_id, by_action, by_condition


def entry(pref_id: str) -> CatalogEntry:
    try:
        return _index()[0][pref_id]
    except KeyError:
        raise KeyError(f"no catalog preference {pref_id!r}") from None


def find_by_action(action: str) -> CatalogEntry | None:
    """The entry whose action reads ``action`` (case, punctuation, spacing ignored)."""
    return _index()[1].get(normalize(action))


def find_by_condition(condition: str) -> CatalogEntry | None:
    """An entry with this condition text; entries sharing a condition share its trigger."""
    return _index()[2].get(normalize(condition))


def conflict_groups() -> dict[str, tuple[CatalogEntry, CatalogEntry]]:
    groups: dict[str, list[CatalogEntry]] = {}
    for e in catalog():
        if e.conflict_group:
            groups.setdefault(e.conflict_group, []).append(e)
    return {g: (sides[0], sides[1]) for g, sides in groups.items()}


_FENCED = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)


def word_count(text: str) -> int:
    """Words of prose: fenced code blocks do not count, so a length preference ("under 100
    words") can be met by a reply that carries a whole program."""
    return len(_FENCED.sub(" ", text).split())


def check(verifier: Verifier, text: str) -> bool:
    """Whether ``text`` satisfies the verifier. Regex flags live inline in the pattern."""
    if verifier.kind == "regex":
        return re.search(verifier.pattern, text) is not None
    if verifier.kind == "not_regex":
        return re.search(verifier.pattern, text) is None
    if verifier.kind == "max_words":
        return word_count(text) <= verifier.limit
    if verifier.kind == "min_words":
        return word_count(text) >= verifier.limit
    raise ValueError(f"unknown verifier kind {verifier.kind!r}")


def _validate(entries: tuple[CatalogEntry, ...]) -> None:
    def fail(e: CatalogEntry, why: str) -> None:
        raise ValueError(f"{CATALOG_PATH.name}: entry {e.pref_id!r} {why}")

    seen_ids: set[str] = set()
    seen_actions: set[str] = set()
    triggers: dict[str, str] = {}
    for e in entries:
        if e.pref_id in seen_ids:
            fail(e, "repeats a pref_id")
        if normalize(e.action) in seen_actions:
            fail(e, "repeats an action")
        seen_ids.add(e.pref_id)
        seen_actions.add(normalize(e.action))
        if e.condition != e.condition.lower() or re.search(r"[,.;:!?]", e.condition):
            fail(e, "has a condition that is not lowercase or holds punctuation")
        if re.search(r"[.!?\n]", e.action) or e.action.lower().startswith("please "):
            fail(e, "has an action that would not survive the note format")
        if e.trigger not in FEATURES:
            fail(e, f"has an unknown trigger {e.trigger!r}")
        if triggers.setdefault(normalize(e.condition), e.trigger) != e.trigger:
            fail(e, "shares a condition with an entry of another trigger")
        if e.priority_cue is not None and e.priority_cue not in FEATURES:
            fail(e, f"has an unknown priority cue {e.priority_cue!r}")
        re.compile(e.verifier.pattern)
    groups: dict[str, list[CatalogEntry]] = {}
    for e in entries:
        if e.conflict_group:
            groups.setdefault(e.conflict_group, []).append(e)
    for sides in groups.values():
        if len(sides) != 2:
            fail(sides[0], "is in a conflict group that does not have exactly two sides")
        a, b = sides
        if set(a.render) != set(b.render) or len(a.render) != 1 or a.render == b.render:
            fail(a, "and its conflict side do not set one render key to different values")
        if a.trigger != b.trigger and a.trigger in DOMAINS and b.trigger in DOMAINS:
            fail(a, "and its conflict side have triggers that can never hold together")
