"""The scripted world's reranker: the counterpart of its scripted agent and user.

It knows from the catalog whether a card's condition holds for the request (the session's
opening, read with the same ``context_of`` as the scripted user and agent) and returns a
calibrated log-odds with one stated quality, its ROC AUC:

    x ~ N(+sigma^2 / 2, sigma^2) when the condition holds, N(-sigma^2 / 2, sigma^2) when not,
    sigma = sqrt(2) * PhiInverse(AUC),

so x is exactly the log-likelihood ratio of "holds" (calibrated at even odds) and a random
holding card outscores a random non-holding one with probability AUC. s0 = log sigmoid(x),
the log P(yes) every reranker gives.

The noise is keyed on (card note, opening), never on the user: every method and every user
meets the same error for the same card on the same request, so a user vector cannot learn
the reranker's mistakes, and method comparisons stay paired.
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist

import numpy as np

from vars_core.notes import normalize, parse_notes
from vars_core.policy import log_sigmoid
from vars_core.scripted.catalog import find_by_condition
from vars_core.scripted.context import ANY, context_of


def sigma_for_auc(auc: float) -> float:
    """The log-odds spread whose two classes are separated with this ROC AUC."""
    if not 0.5 <= auc < 1.0:
        raise ValueError(f"the scripted reranker's auc must be in [0.5, 1), got {auc}")
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def condition_trigger(note: str) -> str:
    """The context feature under which a note's condition holds: the catalog's trigger for
    a condition it knows; a condition it does not know is taken to hold always (as the
    scripted user reads an imported preference)."""
    parsed = parse_notes(note)
    if not parsed:
        return ANY
    known = find_by_condition(parsed[0][0])
    return known.trigger if known is not None else ANY


class ScriptedReranker:
    name = "scripted"
    reads_opening = True  # it judges the session's request (see rerankers.bind_reranker)

    def __init__(self, auc: float = 0.85) -> None:
        self.auc = auc
        self.sigma = sigma_for_auc(auc)

    def log_odds(self, request: str, note: str) -> float:
        """The reranker's log-odds that ``note`` applies to ``request``."""
        holds = condition_trigger(note) in context_of(request)
        mean = self.sigma**2 / 2.0
        return (mean if holds else -mean) + self.sigma * _standard_normal(note, request)

    def score(self, query: str, documents: list[str]) -> np.ndarray:
        """log P(yes) = log sigmoid(x) per note, for the request ``query``."""
        return log_sigmoid([self.log_odds(query, note) for note in documents])


def _standard_normal(note: str, request: str) -> float:
    """One N(0, 1) draw, fixed by the (note, request) pair."""
    key = f"{normalize(note)}\x00{request}".encode()
    seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    return float(np.random.default_rng(seed).standard_normal())
