"""Every record and message of the engine, as msgspec structs.

Structs are frozen where they are values passed between stages; the few that are
accumulated in place (a session's running metrics) are not. Float vectors are plain
lists of floats on the wire; code that does arithmetic converts them to numpy.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["system", "user", "assistant"]
Stage = Literal["simulate", "judge", "update", "extract", "retrieve", "generate"]
STAGES: tuple[Stage, ...] = ("simulate", "judge", "update", "extract", "retrieve", "generate")

MethodName = Literal["vanilla", "contextual", "reflection", "all_memory", "rag", "rag_vector"]

RewardLabel = Literal[
    "neg_constraint_restate",
    "neg_correction",
    "neg_confusion",
    "pos_praise",
    "pos_progress",
    "neutral",
    "topic_shift",
]


# --------------------------------------------------------------------------- profiles


class Verifier(msgspec.Struct, frozen=True):
    """A programmatic check of one preference on an agent reply.

    kind: "regex" (pattern must match), "not_regex" (must not match),
    "max_words", "min_words" (limit on the word count).
    """

    kind: Literal["regex", "not_regex", "max_words", "min_words"]
    pattern: str = ""
    limit: int = 0


class Preference(msgspec.Struct, frozen=True):
    pref_id: str
    category: str
    condition: str
    action: str
    conflict_group: str | None = None
    priority_context: list[str] = []
    verifier: Verifier | None = None


class Profile(msgspec.Struct, frozen=True):
    profile_id: str
    persona: str
    preferences: list[Preference]


class Problem(msgspec.Struct, frozen=True):
    problem_id: str
    domain: str
    question: str
    answer: str
    difficulty: int = 1


# --------------------------------------------------------------------------- conversation


class Message(msgspec.Struct, frozen=True):
    role: Role
    content: str
    turn: int = 0


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


# --------------------------------------------------------------------------- memory


class ExtractedPreference(msgspec.Struct, frozen=True):
    condition: str
    action: str
    confidence: float = 1.0


class Card(msgspec.Struct, frozen=True):
    """One remembered preference of one user: "When {condition}, {action}."."""

    card_id: str
    user_id: str
    condition: str
    action: str
    note: str
    confidence: float = 1.0
    created_at: str = ""  # "session:turn" that created it, for audit
    superseded_by: str | None = None


class CardEmbedding(msgspec.Struct, frozen=True):
    """The card's note and condition embeddings (unit norm) and its item vector."""

    note: list[float]
    condition: list[float]
    item: list[float]
    projection_version: str


# --------------------------------------------------------------------------- policy


class RetrievalTrace(msgspec.Struct, frozen=True):
    """Everything a later update needs, frozen at retrieval time."""

    user_id: str
    candidate_ids: list[str]  # the ranked candidates (bypassed global cards are not)
    item_vectors: list[list[float]]
    base_scores: list[float]  # s0 per candidate: the reranker's log P(yes)
    probs: list[float]  # pi = softmax((s0 + learned) / tau) over candidates
    chosen: list[int]  # indices into candidate_ids, in list order
    tau: float
    sampled: bool  # Plackett-Luce sample (True, exploration) or greedy top-k (False)
    projection_version: str
    learned: list[float] = []  # b(q, m) per candidate: the user vector's term in s
    # d b / d <z_eff, v_m> per candidate (0 where there is no learned term): u_m = slope v_m
    slopes: list[float] = []
    cap: float = 0.0  # c: the bound of the learned term
    bypassed: list[str] = []  # global cards put in the prompt after the ranked ones


class UserVector(msgspec.Struct, frozen=True):
    z_long: list[float]
    z_short: list[float]
    baseline: float = 0.0
    updates: int = 0  # REINFORCE steps applied
    projection_version: str = ""
    pairwise_steps: int = 0  # pairwise conflict-credit steps applied


# --------------------------------------------------------------------------- stage outputs


class JudgeResult(msgspec.Struct, frozen=True):
    label: RewardLabel
    confidence: float
    reward: float
    apply: bool  # the gate: False means no update this turn
    g: float  # gate weight (= confidence when applied, else 0)
    parsed: bool = True  # False when an LLM judge reply did not parse


class UpdateResult(msgspec.Struct, frozen=True):
    applied: bool
    advantage: float = 0.0
    reason: str = ""


class SimulatorTurn(msgspec.Struct, frozen=True):
    """What the simulated user says at one turn, and how it rated the last reply."""

    message: str
    terminate: bool
    satisfied: dict[str, bool] = {}  # pref_id -> satisfied, applicable prefs only
    enforced: list[str] = []  # pref_ids restated in this message
    draft_answer: str = ""
    timeout: bool = False
    conflict_probe: bool = False
    conflict_correct: list[bool] = []  # per conflict group both sides of which applied
    over_personalized: list[str] = []  # pref_ids applied although their condition fails
    # On the turn that ends the session: whether the answer the user takes away (its
    # draft answer, or the reply's code) solves the problem, graded, timeout or not.
    solved: bool = False
    # Why a model simulator's turn was replaced by the fallback ("" when it was not).
    fallback: str = ""


class AgentReply(msgspec.Struct, frozen=True):
    content: str
    usage: Usage = Usage()


class GenerateResult(msgspec.Struct, frozen=True):
    """The agent's reply and the notes the method put in its prompt (an audit of what
    memory reached the agent)."""

    reply: AgentReply
    notes: list[str] = []


class RetrieveResult(msgspec.Struct, frozen=True):
    card_ids: list[str]  # in prompt order
    notes: list[str]


class PairwiseStep(msgspec.Struct, frozen=True):
    """One applied conflict-credit step: the restated card moved above a conflicting card
    of the list the user reacted to. ``delta`` = (s_r - s_c) / tau before the step."""

    restated: str
    conflicting: str
    delta: float


class ExtractResult(msgspec.Struct, frozen=True):
    extracted: list[ExtractedPreference]
    added: list[str]
    merged: list[str]
    superseded: list[str]
    credit: list[PairwiseStep] = []  # pairwise conflict-credit steps applied with this merge


# --------------------------------------------------------------------------- sessions


class SessionState(msgspec.Struct, frozen=True):
    """A session's fixed facts; everything that changes lives in stage outputs."""

    session_id: str
    user_id: str
    method: str
    profile_id: str
    session_index: int
    problem: Problem
    max_turns: int
    seed: int
    campaign_id: str = ""
    opening: str = ""  # the user's first message, decided at session start
    conflict_probe: bool = False  # the opening triggers both sides of a conflict group
    lane: Literal["campaign", "live"] = "campaign"


class LiveOptions(msgspec.Struct, frozen=True):
    """A live request's own generation settings (None: the engine's), stored with its turn.
    ``stream``: whether the client reads the reply as it is generated; when it does not,
    the agent is called without streaming (servers that count usage only then still do)."""

    max_tokens: int | None = None
    temperature: float | None = None
    stream: bool = True


class SessionRecord(msgspec.Struct):
    """One finished session: what `sessions.jsonl` holds, one line each."""

    session_id: str
    campaign_id: str
    user_id: str
    profile_id: str
    method: str
    session_index: int
    problem_id: str
    domain: str
    turns: int = 0
    enforcements: int = 0
    success: bool = False
    timeout: bool = False
    user_tokens: int = 0
    agent_tokens: int = 0
    applicable_pairs: int = 0  # (applicable preference, agent turn) pairs
    satisfied_pairs: int = 0
    # Conflict resolution is read on the first reply of a probe, before the user has said
    # anything in this session: later replies follow the user's restatement, not memory.
    conflict_probes: int = 0
    conflict_correct: int = 0
    rated_turns: int = 0  # agent replies the user rated
    over_personalized_turns: int = 0  # of those, replies applying an inapplicable preference
    repetitions: int = 0  # adjacent agent replies with SequenceMatcher ratio > 0.85
    simulator_fallbacks: int = 0  # simulator turns replaced by the fallback
    rewards: list[float] = []
    updates_applied: int = 0
    status: str = "done"  # done | failed
    failure: str = ""

    @property
    def compliance(self) -> float:
        return self.satisfied_pairs / self.applicable_pairs if self.applicable_pairs else 1.0
