"""Benchmark problems: the shipped MultiSessionCollab samples, their reference answers,
answer comparison, and a call-order-independent choice of a session's problem.

The data under ``vars_core/data/problems/`` is MIT-licensed (see the LICENSE beside it).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path

import msgspec
import numpy as np

from vars_core.code_tasks import CodeTask, code_problems
from vars_core.types import Problem

DATA_DIR = Path(__file__).parent / "data" / "problems"
MATH_DOMAINS = frozenset({"math-500", "math_hard"})
SPLITS = ("test", "train")
DEFAULT_DIFFICULTY = 3  # the non-math sets carry no level: call them middling


def known_domains() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if (p / "test.json").is_file())


def load_problems(domains: list[str], split: str = "test") -> list[Problem]:
    """Every problem of ``split`` in each domain, in file order, ids like "math-500/test/7"."""
    known = known_domains()
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: known splits are {', '.join(SPLITS)}")
    unknown = [d for d in domains if d not in known]
    if unknown:
        raise ValueError(
            f"unknown problem domain {', '.join(map(repr, unknown))}: known domains are {', '.join(known)}"
        )
    problems: list[Problem] = []
    for domain in domains:
        problems += problems_from_records(domain, split, _records(domain, split))
    return problems


@cache
def _records(domain: str, split: str) -> tuple[dict, ...]:
    return tuple(json.loads((DATA_DIR / domain / f"{split}.json").read_text(encoding="utf-8")))


def problems_from_records(
    domain: str, split: str, records: list[dict] | tuple[dict, ...]
) -> list[Problem]:
    """MultiSessionCollab records ``{problem, solution[, level]}`` -> Problems; the code
    domain's records are tasks with tests (see ``vars_core.code_tasks``)."""
    if domain == "code":
        return code_problems(split, [msgspec.convert(rec, CodeTask) for rec in records])
    return [
        Problem(
            problem_id=f"{domain}/{split}/{i}",
            domain=domain,
            question=rec["problem"],
            answer=reference_answer(domain, rec["solution"]),
            difficulty=_difficulty(domain, rec.get("level")),
        )
        for i, rec in enumerate(records)
    ]


def _difficulty(domain: str, level: object) -> int:
    if domain not in MATH_DOMAINS or level is None:
        return DEFAULT_DIFFICULTY
    # math-500 stores 3, math_hard stores "Level 3"
    digits = re.findall(r"\d", str(level))
    return min(5, max(1, int(digits[0]))) if digits else DEFAULT_DIFFICULTY


# --------------------------------------------------------------------------- answers


def reference_answer(domain: str, solution: str) -> str:
    """Math: the content of the last \\boxed{...}; the other sets store the answer itself."""
    if domain not in MATH_DOMAINS:
        return solution.strip()
    boxed = last_boxed(solution)
    if boxed is None:
        raise ValueError(f"{domain} solution has no \\boxed{{...}} answer: {solution[-80:]!r}")
    return boxed


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included."""
    start, command = max((text.rfind(c), c) for c in ("\\boxed", "\\fbox"))
    if start < 0:
        return None
    i = start + len(command)
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":  # "\boxed 5": a bare token
        match = re.match(r"[^\s$.]+", text[i:])
        return match.group(0) if match else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None  # unbalanced


_LATEX_NOISE = (r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", "$", r"\displaystyle")


def normalize_answer(text: str) -> str:
    """A canonical form for comparing math answers: "$\\dfrac 12$" == "\\frac{1}{2}"."""
    s = text.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac 59
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\{?\\circ\}?", "", s)
    s = s.replace(r"\%", "").replace("%", "")
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 10,000 -> 10000
    s = s.rstrip(".")
    if re.fullmatch(r"-?\d+\.\d+", s):  # 12.0 -> 12, 3.50 -> 3.5
        s = s.rstrip("0").rstrip(".")
    return s


def _normalize_text(text: str) -> str:
    # Case and spacing only: symbols carry meaning in options ("dG > 0" vs "dG = 0").
    return " ".join(text.lower().split()).strip(" .")


def answers_match(domain: str, given: str, reference: str) -> bool:
    """Whether ``given`` states the reference answer (math normalized, other sets by text)."""
    if domain in MATH_DOMAINS:
        return bool(given.strip()) and normalize_answer(given) == normalize_answer(reference)
    return bool(_normalize_text(given)) and _normalize_text(given) == _normalize_text(reference)


def choices_of(question: str) -> list[str]:
    """The answer options printed in a multiple-choice question, as their answers read.

    medqa prints "Options:" then "A. text", mmlu "Choices:" then "0. text" (answers are the
    text), logiqa inlines "(A)text (B)text" (answers keep the "(A)" label).
    """
    if "Answer Choices:" in question:
        block = question.rsplit("Answer Choices:", 1)[1].split("\nA:")[0]
        return [c.strip() for c in re.split(r"(?=\([A-E]\))", block) if c.strip()]
    for header in ("Options:", "Choices:"):
        if header in question:
            block = question.rsplit(header, 1)[1]
            return [m.group(1).strip() for m in re.finditer(r"(?m)^\s*[A-Z0-9]\. (.+)$", block)]
    return []


# --------------------------------------------------------------------------- choosing


def pick_problem(problems: list[Problem], seed: int, lane: str, session_index: int) -> Problem:
    """The problem of a lane's session ``session_index``: a seeded permutation per lane, so
    the choice never depends on call order and a lane meets every problem once before any
    repeats. Pass the same lane for every method of one profile to give them the same work.
    """
    if not problems:
        raise ValueError("no problems to pick from")
    key = hashlib.sha256(f"{seed}|{lane}".encode()).digest()
    order = np.random.default_rng(int.from_bytes(key[:16], "little")).permutation(len(problems))
    return problems[int(order[session_index % len(problems)])]


class ProblemBank:
    """What the scripted agent "knows": the reference answer of every problem it can meet.

    The agent finds the problem in the user's message and then answers correctly only with
    a seeded probability per difficulty (``ScriptedAgentParams``): knowing the answer is a
    device to make correctness a controlled parameter, not a claim about solving anything.
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        self._by_question: dict[str, Problem] = {}
        for p in self.problems:
            self._by_question.setdefault(p.question.strip(), p)

    def __len__(self) -> int:
        return len(self.problems)

    def lookup(self, text: str) -> Problem | None:
        """The problem whose question appears verbatim in ``text`` (longest match wins)."""
        # Scripted openings are "<header>\n\n<question>": try the exact tail first.
        for i in range(len(text)):
            if text.startswith("\n\n", i):
                hit = self._by_question.get(text[i + 2 :].strip())
                if hit is not None:
                    return hit
        hits = [p for q, p in self._by_question.items() if q and q in text]
        return max(hits, key=lambda p: len(p.question)) if hits else None
