"""Do two preference actions conflict (no single reply can follow both)?

One check serves memory hygiene (a new card supersedes an old one under the same condition
only when their actions conflict) and the pairwise conflict credit (a restated card is moved
above the conflicting cards of the list). Three judges, one signature
``(action_a, action_b) -> bool``:

- ``LLMConflictJudge``: a model reads both actions (when one is configured);
- ``vars_core.scripted.conflicts.ScriptedConflictJudge``: the scripted world's, which knows
  the catalog's conflict groups and errs at a stated rate;
- ``table_conflict``: a fixed table of opposite poles (short / long, bullets / numbered /
  prose, formal / casual, ...) and negation ("use headers" / "do not use headers"), written
  for language in general.

In doubt, every judge says no: two cards kept where one should have gone cost a little
prompt space; a card superseded by mistake loses what the user asked for.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

import msgspec

from vars_core.backend_stats import BackendStats
from vars_core.json_repair import RepairError, parse_object
from vars_core.llm.base import ChatLLM, LLMError, complete_sync
from vars_core.lru import LRUCache
from vars_core.types import Message

log = logging.getLogger(__name__)

ConflictCheck = Callable[[str, str], bool]


def _rx(*patterns: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b", re.IGNORECASE)


# Each dimension has poles; two actions conflict when each hits a different pole of one
# dimension (and neither hits two poles of it: such an action is ambiguous here).
_DIMENSIONS: tuple[tuple[re.Pattern[str], ...], ...] = (
    (  # length
        _rx(r"short(?:er)?", r"brief(?:ly)?", r"concise(?:ly)?", r"succinct", r"terse", r"to the point",
            r"(?:under|at most|no more than|fewer than) \d+ words", r"one (?:line|sentence)", r"few sentences"),
        _rx(r"long(?:er)?", r"detailed", r"in detail", r"in[- ]depth", r"thorough(?:ly)?", r"comprehensive",
            r"elaborate", r"verbose", r"lengthy", r"extensive", r"(?:at least|more than|over) \d+ words"),
    ),
    (  # list style
        _rx(r"bullet(?:s|ed)?(?: points?| lists?)?"),
        _rx(r"numbered(?: lists?| steps| points)?", r"number the (?:steps|points|items)"),
        _rx(r"prose", r"(?:full|whole) sentences", r"paragraphs? (?:of|in) text", r"plain paragraphs?"),
    ),
    (  # register
        _rx(r"formal(?:ly)?", r"professional tone"),
        _rx(r"casual(?:ly)?", r"informal(?:ly)?", r"friendly", r"relaxed", r"conversational", r"chatty"),
    ),
    (  # working shown or not
        _rx(r"step[- ]by[- ]step", r"show (?:\w+ )?(?:steps?|work|working|derivations?)", r"derivation steps?",
            r"explain (?:your|the) reasoning", r"walk (?:me )?through"),
        _rx(r"only the (?:final )?(?:answer|result)", r"just the (?:final )?(?:answer|result)",
            r"final answer only", r"skip the (?:working|steps|explanation|reasoning)", r"no explanations?",
            r"without (?:any )?explanations?"),
    ),
    (  # where the answer goes
        _rx(r"answer (?:up )?front", r"answer first", r"(?:lead|start|begin) with the (?:answer|conclusion)",
            r"bottom line up front"),
        _rx(r"answer (?:at|in) the end", r"(?:end|finish) with the (?:answer|conclusion)", r"answer last"),
    ),
    (  # identifier case
        _rx(r"snake_case", r"snake case"),
        _rx(r"camelcase", r"camel case"),
        _rx(r"pascalcase", r"pascal case"),
    ),
    (  # pace
        _rx(r"one (?:part|step|piece) at a time", r"incrementally", r"bit by bit", r"piece by piece"),
        _rx(r"all at once", r"in one (?:piece|go|block)", r"the whole (?:solution|answer|thing)"),
    ),
    (  # vocabulary
        _rx(r"technical terms?", r"jargon", r"precise terminology"),
        _rx(r"plain (?:language|english|words)", r"simple (?:language|words|terms)", r"layman'?s terms",
            r"no jargon", r"everyday (?:language|words|analog(?:y|ies))"),
    ),
)

_NEGATION = _rx(r"not", r"no", r"never", r"without", r"avoid", r"omit", r"skip", r"leave out", r"stop",
                r"don'?t", r"doesn'?t", r"none")
_WORD = re.compile(r"[a-z_]+")
# Words that carry no content of their own in a preference's action.
_STOPWORDS = frozenset(
    "a an the to of in on for with and or any all every each my me i you your it its this that these those "
    "be is are use using add adding include including give put write keep make show end start state "
    "please always do does not no never without avoid omit skip leave out stop don dont doesn doesnt none "
    "reply replies answer answers response responses".split()
)


def _content(text: str) -> set[str]:
    words = _WORD.findall(_NEGATION.sub(" ", text.lower()))
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words if w not in _STOPWORDS}


def _poles(text: str, dimension: tuple[re.Pattern[str], ...]) -> set[int]:
    return {i for i, pole in enumerate(dimension) if pole.search(text)}


_FIGURE = re.compile(r"\d+(?:\.\d+)?")


def table_conflict(action_a: str, action_b: str) -> bool:
    """The generic check: opposite poles of one dimension, one action negating the other,
    or the same words with another figure ("at most 100 words" -> "at most 200 words")."""
    a_text, b_text = " ".join(action_a.lower().split()), " ".join(action_b.lower().split())
    if _FIGURE.search(a_text) and a_text != b_text and _FIGURE.sub("#", a_text) == _FIGURE.sub("#", b_text):
        return True
    for dimension in _DIMENSIONS:
        a, b = _poles(action_a, dimension), _poles(action_b, dimension)
        if len(a) == 1 and len(b) == 1 and a != b:
            return True
    neg_a, neg_b = bool(_NEGATION.search(action_a)), bool(_NEGATION.search(action_b))
    if neg_a == neg_b:
        return False
    negated, plain = (action_a, action_b) if neg_a else (action_b, action_a)
    said, other = _content(negated), _content(plain)
    return bool(said) and len(said & other) * 2 >= len(said)


# --------------------------------------------------------------------------- LLM judge

CONFLICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"conflict": {"type": "boolean"}},
    "required": ["conflict"],
    "additionalProperties": False,
}

SYSTEM_PROMPT = (
    "You compare two preferences a user gave an assistant about how to reply. They "
    "CONFLICT when no single reply can follow both (short vs long, bullets vs numbered "
    "list, formal vs casual, use X vs never use X). They do NOT conflict when one reply can "
    "follow both, even if they are about different things (numbered steps and short "
    "answers). When unsure, say they do not conflict.\n"
    'Reply with JSON only, in this form: {"conflict": false}'
)

COUNTERS = ("calls", "cache_hits", "unparsed", "llm_errors")


class LLMConflictJudge:
    """An LLM asked whether two actions conflict. A reply that does not parse, or a failed
    backend call, is "no conflict" (keep both), and counted. Verdicts are cached by the
    unordered pair, so the same pair is never asked twice (or answered two ways)."""

    def __init__(
        self,
        llm: ChatLLM,
        max_tokens: int = 32,
        cache_size: int = 10000,
        stats: BackendStats | None = None,
    ) -> None:
        self.llm = llm
        self.max_tokens = max_tokens
        self.stats = stats if stats is not None else BackendStats()
        self.stats.declare(COUNTERS)
        self._cache: LRUCache[str, bool] = LRUCache(cache_size)

    def __call__(self, action_a: str, action_b: str) -> bool:
        self.stats.incr("calls")
        key = pair_key(action_a, action_b)
        cached = self._cache.get(key)
        if cached is not None:
            self.stats.incr("cache_hits")
            return cached
        first, second = sorted((action_a.strip(), action_b.strip()))
        prompt = [
            Message("system", SYSTEM_PROMPT),
            Message("user", f"Preference 1: {first}\nPreference 2: {second}"),
        ]
        try:
            completion = complete_sync(
                self.llm, prompt, max_tokens=self.max_tokens, temperature=0.0, json_schema=CONFLICT_SCHEMA
            )
        except LLMError as err:
            self.stats.incr("llm_errors")
            log.warning("conflict judge failed, keeping both cards: %s", err)
            return False
        verdict = parse_conflict_reply(completion.text)
        if verdict is None:
            self.stats.incr("unparsed")
            log.warning("conflict judge reply did not parse: %.200r", completion.text)
            return False
        self._cache.put(key, verdict)
        return verdict


def parse_conflict_reply(text: str) -> bool | None:
    """The verdict of a judge reply, or None when it has none."""
    try:
        found, _ = parse_object(text, want=lambda o: "conflict" in o)
    except RepairError:
        return None
    value = found.get("conflict")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def pair_key(action_a: str, action_b: str) -> str:
    """One key per unordered pair of actions (case and spacing ignored)."""
    a, b = sorted(" ".join(x.lower().split()) for x in (action_a, action_b))
    return hashlib.sha256(msgspec.json.encode([a, b])).hexdigest()
