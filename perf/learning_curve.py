"""Does the user vector learn, in the engine alone? A synthetic user and its learning curve.

The user holds both sides of several conflicting preferences ("use bullet points" vs "use a
numbered list" when listing things) and secretly prefers one side of each. Every round a
query triggers one pair; the policy retrieves a list, and the reward is +1 when the
preferred side comes first of the two in that list, else -1 (also when neither is listed).
Cards, queries and item vectors are real: MiniLM embeddings, the global random projection,
the FAISS index, the policy and REINFORCE of `vars_core`; nothing is mocked.

Accuracy is the share of (pair, query) cases where the greedy list (learning off) puts the
preferred side before the other. `rag` ranks by s0 alone and never updates; `rag_vector`
serves the greedy list under the vector and learns from it off-policy (or, in the sweep's
sampled rows, samples every list and takes the exact gradient). `python3 -m perf.learning_curve` writes the curve and a
step-size sweep to docs/results.md.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perf import markdown
from vars_core.config import PolicyConfig, ReinforceConfig
from vars_core.embedder import Embedder, default_embedder
from vars_core.notes import format_note
from vars_core.projection import Projection, random_projection
from vars_core.reinforce import reinforce_update, reset_session
from vars_core.retrieval import UserIndex, retrieve
from vars_core.types import CardEmbedding, JudgeResult, UserVector

USER = "synthetic-user"
METHODS = ("rag", "rag_vector")


@dataclass(frozen=True)
class ConflictPair:
    condition: str
    actions: tuple[str, str]
    queries: tuple[str, ...]


PAIRS: tuple[ConflictPair, ...] = (
    ConflictPair(
        "listing things for me",
        ("use bullet points", "use a numbered list"),
        (
            "Can you list what I should bring to a job interview?",
            "List the things I need for a new puppy.",
            "What do I need to buy for a first apartment? List them.",
        ),
    ),
    ConflictPair(
        "I ask you to explain a concept",
        ("keep the explanation short", "give a long, detailed explanation"),
        (
            "Explain the concept of photosynthesis to me.",
            "Can you explain the concept of a hash table?",
            "Explain what inflation is.",
        ),
    ),
    ConflictPair(
        "writing Python code",
        ("name variables in snake_case", "name variables in camelCase"),
        (
            "Write a Python function that merges two sorted lists.",
            "Write Python code to count word frequencies in a file.",
            "Write a Python script that renames all .txt files in a folder.",
        ),
    ),
    ConflictPair(
        "solving a math problem",
        ("show every step of the derivation", "give only the final answer"),
        (
            "Solve this math problem: 3x + 7 = 22.",
            "Solve for the integral of x squared from 0 to 3.",
            "Math problem: a train travels 180 km in 2.5 hours; what is its speed?",
        ),
    ),
    ConflictPair(
        "reviewing my code",
        ("point out every issue at once", "go through one issue at a time"),
        (
            "Can you review my code and tell me what is wrong with it?",
            "Please review the code in my pull request.",
            "Review my JavaScript code for bugs.",
        ),
    ),
    ConflictPair(
        "writing an email",
        ("use a formal, professional tone", "use a casual, friendly tone"),
        (
            "Draft an email to my landlord about a broken heater.",
            "Help me write an email asking a colleague to review my report.",
            "Write an email inviting the team to a Friday lunch.",
        ),
    ),
)

DISTRACTORS: tuple[tuple[str, str], ...] = (
    ("I ask about SQL", "include the query plan"),
    ("showing shell commands", "put them in a code block"),
    ("discussing history", "include the dates of events"),
    ("answering medical questions", "remind me to see a doctor"),
    ("translating text", "keep the original next to the translation"),
    ("summarizing a paper", "start with the main finding"),
    ("I make a mistake", "correct me gently"),
    ("recommending books", "include the author and year"),
)

# The best row of the step-size sweep on both seed sets (5x DESIGN's starting point); twice
# that already loses accuracy. Shown beside the defaults in the report.
TUNED = ReinforceConfig(eta_long=0.005, eta_short=0.01)
# Every list sampled (the exact gradient sees the order inside a list), a cap of three
# spreads of s0: with the cosine's narrow spread a cap of one barely moves a card.
SAMPLED = PolicyConfig(epsilon=1.0, kappa=3.0)


@dataclass
class World:
    """One user's cards, their FAISS index, and the queries that trigger each pair."""

    pairs: tuple[ConflictPair, ...]
    embeddings: dict[str, CardEmbedding]
    index: UserIndex
    pair_cards: list[tuple[str, str]]  # card ids of side 0 and side 1, per pair
    queries: list[tuple[int, np.ndarray]]  # (pair index, query embedding)
    projection_version: str

    @property
    def dim(self) -> int:
        return len(next(iter(self.embeddings.values())).item)


def build_world(
    embedder: Embedder | None = None,
    projection: Projection | None = None,
    pairs: Sequence[ConflictPair] = PAIRS,
    distractors: Sequence[tuple[str, str]] = DISTRACTORS,
) -> World:
    """Embed every note and query once; item vectors are the projected note embeddings."""
    embedder = embedder or default_embedder()
    projection = projection or random_projection(embedder.dim, 256, 0)
    notes: dict[str, tuple[str, str]] = {}
    pair_cards = []
    for i, pair in enumerate(pairs):
        ids = (f"p{i}a", f"p{i}b")
        for cid, action in zip(ids, pair.actions, strict=True):
            notes[cid] = (pair.condition, action)
        pair_cards.append(ids)
    for i, (condition, action) in enumerate(distractors):
        notes[f"d{i}"] = (condition, action)

    ids = list(notes)
    note_emb = embedder.embed([format_note(*notes[c]) for c in ids])
    cond_emb = embedder.embed([notes[c][0] for c in ids])
    items = projection.project(note_emb)
    embeddings = {
        cid: CardEmbedding(
            note=note_emb[i].tolist(),
            condition=cond_emb[i].tolist(),
            item=items[i].tolist(),
            projection_version=projection.version,
        )
        for i, cid in enumerate(ids)
    }
    index = UserIndex({cid: note_emb[i] for i, cid in enumerate(ids)})
    owners = [i for i, pair in enumerate(pairs) for _ in pair.queries]
    query_emb = embedder.embed([q for pair in pairs for q in pair.queries])
    queries = list(zip(owners, query_emb, strict=True))
    return World(tuple(pairs), embeddings, index, pair_cards, queries, projection.version)


def first_of(listed: Sequence[str], wanted: str, other: str) -> bool:
    """Does ``wanted`` come before ``other`` in the list? (Absent comes after everything.)"""
    for cid in listed:
        if cid in (wanted, other):
            return cid == wanted
    return False


def _sides(world: World, pair: int, preferred: np.ndarray) -> tuple[str, str]:
    side = int(preferred[pair])
    return world.pair_cards[pair][side], world.pair_cards[pair][1 - side]


def accuracy(
    world: World, vector: UserVector | None, preferred: np.ndarray, policy: PolicyConfig
) -> float:
    """Share of (pair, query) cases whose greedy list puts the preferred side first."""
    hits = 0
    rng = np.random.default_rng(0)  # the greedy list draws nothing
    for pair, query in world.queries:
        trace = retrieve(
            USER,
            query,
            world.index,
            world.embeddings,
            vector,
            policy,
            rng,
            learning=False,
            projection_version=world.projection_version,
        )
        wanted, other = _sides(world, pair, preferred)
        hits += first_of([trace.candidate_ids[i] for i in trace.chosen], wanted, other)
    return hits / len(world.queries)


def run_lane(
    world: World,
    method: str,
    seed: int,
    updates: int = 200,
    every: int = 20,
    reinforce: ReinforceConfig | None = None,
    policy: PolicyConfig | None = None,
    session_turns: int = 5,
    confidence: float = 1.0,
) -> list[float]:
    """Greedy accuracy after 0, every, 2*every, ..., ``updates`` applied updates.

    Rounds come in sessions of ``session_turns`` queries about one pair (a session is one
    task), each opened by ``reset_session``. Accuracy is taken as at the start of a new
    session (z_short = 0): what the user keeps from one session to the next. ``rag`` ranks
    without the vector and never updates; it plays the same query stream, round for round.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: one of {METHODS}")
    reinforce = reinforce or ReinforceConfig()
    policy = policy or PolicyConfig()
    learning = method == "rag_vector"
    rng = np.random.default_rng(seed)  # hidden sides, then the policy's samples
    preferred = rng.integers(0, 2, size=len(world.pairs))
    stream = np.random.default_rng(seed + 10_000)  # the queries: the same for both methods
    by_pair = [[q for p, q in world.queries if p == i] for i in range(len(world.pairs))]
    zeros = [0.0] * world.dim
    vector = UserVector(zeros, list(zeros), projection_version=world.projection_version)

    def measure() -> float:
        return accuracy(world, reset_session(vector) if learning else None, preferred, policy)

    curve = [measure()]
    done = rounds = pair = 0
    while done < updates:
        if rounds > 4 * updates:  # an update is skipped only when A is ~0
            raise RuntimeError(f"only {done} of {updates} updates applied in {rounds} rounds")
        if rounds % session_turns == 0:
            vector = reset_session(vector)
            pair = int(stream.integers(len(world.pairs)))
        query = by_pair[pair][int(stream.integers(len(by_pair[pair])))]
        rounds += 1
        trace = retrieve(
            USER,
            query,
            world.index,
            world.embeddings,
            vector if learning else None,
            policy,
            rng,
            learning=learning,
            projection_version=world.projection_version,
        )
        wanted, other = _sides(world, pair, preferred)
        good = first_of([trace.candidate_ids[i] for i in trace.chosen], wanted, other)
        judge = JudgeResult(
            label="pos_praise" if good else "neg_constraint_restate",
            confidence=confidence,
            reward=1.0 if good else -1.0,
            apply=learning,
            g=confidence if learning else 0.0,
        )
        vector, result = reinforce_update(vector, trace, judge, reinforce, policy)
        if result.applied or not learning:
            done += 1
            if done % every == 0:
                curve.append(measure())
    return curve


def learning_curve(
    world: World,
    seeds: Sequence[int] = range(5),
    updates: int = 200,
    every: int = 20,
    reinforce: ReinforceConfig | None = None,
    policy: PolicyConfig | None = None,
) -> dict[str, list[float]]:
    """Mean accuracy over seeds at each checkpoint, per method."""
    out = {}
    for method in METHODS:
        lanes = [run_lane(world, method, s, updates, every, reinforce, policy) for s in seeds]
        out[method] = [statistics.fmean(col) for col in zip(*lanes, strict=True)]
    return out


# (serving, eta_L, eta_S): greedy lists with the off-policy update (the default) at
# DESIGN's start (0.001, 0.002) scaled and each half alone, and sampled lists (epsilon 1)
# with the exact gradient at the same steps.
SWEEP: tuple[tuple[str, float, float], ...] = (
    ("greedy", 0.0005, 0.001),
    ("greedy", 0.001, 0.002),
    ("greedy", 0.002, 0.004),
    ("greedy", 0.005, 0.01),
    ("greedy", 0.01, 0.02),
    ("greedy", 0.001, 0.0),
    ("greedy", 0.0, 0.002),
    ("sampled", 0.001, 0.002),
    ("sampled", 0.005, 0.01),
)


@dataclass(frozen=True)
class SweepRow:
    serving: str
    eta_long: float
    eta_short: float
    accuracy: float  # mean over the curve's seeds, after ``updates``
    holdout: float  # the same over other seeds, to show what tuning on the first set is worth


def step_sweep(
    world: World,
    grid: Sequence[tuple[str, float, float]] = SWEEP,
    seeds: Sequence[int] = range(5),
    holdout: Sequence[int] = range(5, 10),
    updates: int = 200,
) -> list[SweepRow]:
    def final(cfg: ReinforceConfig, policy: PolicyConfig, ss: Sequence[int]) -> float:
        return statistics.fmean(
            run_lane(world, "rag_vector", s, updates, updates, cfg, policy)[-1] for s in ss
        )

    rows = []
    for serving, eta_long, eta_short in grid:
        cfg = ReinforceConfig(eta_long=eta_long, eta_short=eta_short)
        policy = PolicyConfig(epsilon=1.0 if serving == "sampled" else 0.0, kappa=SAMPLED.kappa)
        rows.append(SweepRow(serving, eta_long, eta_short, final(cfg, policy, seeds), final(cfg, policy, holdout)))
    return rows


def rag_accuracy(world: World, seeds: Sequence[int]) -> float:
    return statistics.fmean(run_lane(world, "rag", s, 1, 1)[0] for s in seeds)


# --------------------------------------------------------------------------- report

START, END = "<!-- learning-curve:start -->", "<!-- learning-curve:end -->"


def render(
    world: World,
    curves: dict[str, list[float]],
    every: int,
    sweep: Sequence[SweepRow],
    rag: tuple[float, float],
) -> str:
    """The report section: the curves (column label -> means per checkpoint) and the sweep."""
    labels = list(curves)
    n_cards = len(world.embeddings)
    lines = [
        START,
        "## Learning in the engine alone (synthetic user)",
        "",
        f"{len(world.pairs)} conflict pairs plus {n_cards - 2 * len(world.pairs)} distractor "
        f"cards ({n_cards} cards), MiniLM note and query embeddings, random projection "
        f"384 -> {world.dim} (seed 0), FAISS top-K, no reranker (s0 = log((1 + cos) / 2)), "
        "the bounded learned term (kappa 3), k = 5, greedy lists with the off-policy update or sampled lists with the exact gradient, "
        "tau = 1, beta_L = 2, beta_S = 5. Sessions of 5 turns on one "
        "pair, `reset_session` at each start. Reward +1 when the hidden preferred side comes "
        "first of its pair in the served list, else -1; gate weight g = 1. Accuracy: share "
        "of (pair, query) cases where the greedy list puts the preferred side first, with "
        "z_short = 0; mean over seeds 0-4. `rag` ranks by s0 only and does not learn. "
        "Regenerate with `python3 -m perf.learning_curve`.",
        "",
        "| updates | " + " | ".join(labels) + " |",
        "|---:|" + "---:|" * len(labels),
    ]
    columns = [curves[label] for label in labels]
    for i, row in enumerate(zip(*columns, strict=True)):
        lines.append(f"| {i * every} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
    lines += [
        "",
        "### Step-size sweep",
        "",
        "rag_vector accuracy after 200 updates, same world; mean over seeds 0-4 and over "
        f"held-out seeds 5-9 (rag: {rag[0]:.3f} and {rag[1]:.3f}; the hidden sides are drawn "
        "per seed). eta_S matters little here: z_short is reset every session and accuracy is "
        "read with z_short = 0, so it acts only through the lists served within a session. "
        "Sampled rows draw every list (epsilon 1) and take the exact gradient.",
        "",
        "| serving | eta_L | eta_S | seeds 0-4 | seeds 5-9 |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.serving} | {r.eta_long:g} | {r.eta_short:g} | {r.accuracy:.3f} | {r.holdout:.3f} |"
        for r in sweep
    ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this report's section of ``path`` (between its markers), or append it."""
    markdown.write_section(path, section, START, END)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the learning curve to a Markdown file.")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args(argv)
    world = build_world()
    greedy = learning_curve(
        world, updates=args.updates, every=args.every, reinforce=TUNED, policy=PolicyConfig(kappa=SAMPLED.kappa)
    )
    sampled = learning_curve(world, updates=args.updates, every=args.every, reinforce=TUNED, policy=SAMPLED)
    curves = {
        "rag": greedy["rag"],
        f"rag_vector, greedy (eta {TUNED.eta_long:g} / {TUNED.eta_short:g})": greedy["rag_vector"],
        f"rag_vector, sampled (eta {TUNED.eta_long:g} / {TUNED.eta_short:g})": sampled["rag_vector"],
    }
    sweep = step_sweep(world, updates=args.updates)
    rag = (rag_accuracy(world, range(5)), rag_accuracy(world, range(5, 10)))
    section = render(world, curves, args.every, sweep, rag)
    write_section(args.out, section)
    print(section, end="")


if __name__ == "__main__":
    main()
