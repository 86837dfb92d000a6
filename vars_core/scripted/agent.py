"""The scripted agent: a model-free stand-in for the LLM that answers the user.

It sees only the prompt a method built, never the profile. It reads the preference notes
in that prompt, maps each to catalog render options, and renders a templated reply. Its
imperfections are explicit parameters (``ScriptedAgentParams``), modelled on what LLM
agents are reported to do; see docs/scripted_world.md.

Directive order: note-form sentences in the user messages of the prompt, newest message
first (the user just restated them), then the notes of the system prompt in listed order.
Of two directives that set the same render option, the one listed first is followed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import msgspec
import numpy as np

from vars_core.notes import normalize, parse_notes
from vars_core.problems import ProblemBank, answers_match, choices_of
from vars_core.scripted.catalog import CatalogEntry, find_by_action, find_by_condition, word_count
from vars_core.scripted.context import DOMAINS, context_of
from vars_core.tokens import count_tokens
from vars_core.types import AgentReply, Message, Problem, Usage


class ScriptedAgentParams(msgspec.Struct, frozen=True):
    # Chance of honouring each directive: honour_base with one directive in the prompt,
    # falling by honour_slope per further directive, never below honour_min
    # (n=1: 0.97, n=5: 0.93, n=10: 0.88, n=20: 0.78). Multi-instruction benchmarks report
    # that per-instruction compliance drops as instructions pile up.
    honour_base: float = 0.97
    honour_slope: float = 0.01
    honour_min: float = 0.5
    # A directive restated in the message being answered is honoured with this chance
    # whatever n: models follow an immediate correction far more reliably than a standing
    # instruction.
    p_recent: float = 0.98
    # Chance of applying a directive whose condition does not hold for this request
    # (over-personalization: a stored preference leaking into the wrong context).
    p_misapply: float = 0.03
    # Chance of a correct final answer by difficulty 1..5 (math levels; other sets are 3).
    # The agent cannot solve anything: it looks the answer up and then errs on purpose.
    p_correct: tuple[float, ...] = (0.9, 0.8, 0.65, 0.5, 0.35)

    def p_honour(self, n_directives: int, recent: bool = False) -> float:
        p = max(self.honour_min, self.honour_base - self.honour_slope * max(0, n_directives - 1))
        return max(p, self.p_recent) if recent else p

    def p_correct_for(self, difficulty: int) -> float:
        return self.p_correct[min(len(self.p_correct), max(1, difficulty)) - 1]


class Directive(NamedTuple):
    condition: str
    action: str
    entry: CatalogEntry | None  # None: an action the catalog does not know
    source: str  # "latest" (the message being answered) | "user" (earlier) | "system"


def collect_directives(prompt: list[Message]) -> list[Directive]:
    """Notes in the prompt in the order the agent weighs them, duplicates dropped.

    Every note of a system message counts (known or not, it takes attention); in user
    messages only catalog actions count, since a pasted problem may hold a note-like clause.
    """
    found: list[Directive] = []
    users = [m for m in prompt if m.role == "user"]
    for age, m in enumerate(reversed(users)):
        for condition, action in parse_notes(m.content):
            known = find_by_action(action)
            if known is not None:
                found.append(Directive(condition, action, known, "user" if age else "latest"))
    for m in prompt:
        if m.role == "system":
            found += [
                Directive(c, a, find_by_action(a), "system") for c, a in parse_notes(m.content)
            ]
    seen: set[tuple[str, str]] = set()
    unique = []
    for d in found:
        key = (normalize(d.condition), normalize(d.action))
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def choose_options(
    directives: list[Directive],
    context: frozenset[str],
    rng: np.random.Generator,
    params: ScriptedAgentParams,
) -> dict[str, str]:
    """The render options the agent applies: two draws per directive, in directive order."""
    n = len(directives)
    options: dict[str, str] = {}
    claimed: set[str] = set()
    for d in directives:
        u_misapply, u_honour = rng.random(), rng.random()
        if d.entry is None:
            continue
        # The note's own condition decides; a condition the catalog does not know is read
        # as the catalog action's usual one.
        holds = (find_by_condition(d.condition) or d.entry).trigger in context
        if not holds and u_misapply >= params.p_misapply:
            continue
        if claimed & set(d.entry.render):
            continue  # a directive listed earlier already decided this option
        claimed |= set(d.entry.render)
        if u_honour < params.p_honour(n, recent=d.source == "latest"):
            options.update(d.entry.render)
    return options


def scripted_reply(
    prompt: list[Message],
    rng: np.random.Generator,
    params: ScriptedAgentParams,
    bank: ProblemBank | None,
) -> AgentReply:
    first_user = next((m.content for m in prompt if m.role == "user"), "")
    context = context_of(first_user)
    options = choose_options(collect_directives(prompt), context, rng, params)
    problem = bank.lookup(first_user) if bank is not None else None
    answer = decide_answer(problem, rng, params)
    content = render_reply(options, context, answer, rng)
    usage = Usage(
        prompt_tokens=sum(count_tokens(m.content) for m in prompt),
        completion_tokens=count_tokens(content),
    )
    return AgentReply(content=content, usage=usage)


# --------------------------------------------------------------------------- answers

UNKNOWN_ANSWER = "I am not sure"


def decide_answer(
    problem: Problem | None, rng: np.random.Generator, params: ScriptedAgentParams
) -> str:
    if problem is None:
        return UNKNOWN_ANSWER
    if rng.random() < params.p_correct_for(problem.difficulty):
        return problem.answer
    return wrong_answer(problem, rng)


def wrong_answer(problem: Problem, rng: np.random.Generator) -> str:
    """A plausible wrong answer: another listed option, or the answer with a number nudged."""
    others = [
        c
        for c in choices_of(problem.question)
        if not answers_match(problem.domain, c, problem.answer)
    ]
    if others:
        return others[int(rng.integers(len(others)))]
    runs = list(re.finditer(r"\d+", problem.answer))
    if runs:
        run = runs[-1]
        nudged = str(int(run.group()) + int(rng.integers(1, 4))).zfill(len(run.group()))
        guess = problem.answer[: run.start()] + nudged + problem.answer[run.end() :]
    else:
        guess = problem.answer + "+1"
    if answers_match(problem.domain, guess, problem.answer):
        guess = problem.answer + "+1"
    return guess


# --------------------------------------------------------------------------- rendering

CONCISE_MAX, DETAILED_MIN = 100, 250  # the catalog's length limits, with margins below
_DEFAULT_MIN_WORDS = 130  # an unconstrained reply is mid-length: neither concise nor detailed
_DETAILED_TARGET = DETAILED_MIN + 15

_OPENERS = ("Here is my answer.", "Let me work through this.", "Here is how I approached it.")
_REASONING = {
    "math": (
        "First, I wrote down the quantities the problem gives.",
        "Then, I combined them to isolate the unknown.",
    ),
    "logic": (
        "First, I listed every condition in the puzzle.",
        "Then, I tested each option against those conditions.",
    ),
    "medical": (
        "First, I picked out the key findings in the case.",
        "Then, I matched them to the most likely cause.",
    ),
    "general": (
        "First, I worked out what the question is really asking.",
        "Then, I compared the choices with what is known.",
    ),
    "code": ("First, I split the task into small pieces.", "Then, I wrote and checked each piece."),
}
_BACKGROUND = (
    "It helps to restate the goal in plain words before doing anything else.",
    "Each piece of information in the question is there for a reason.",
    "A common trap is to stop as soon as one option looks plausible.",
    "Working carefully matters more than working fast on questions like this.",
    "It is worth making sure the answer fits every part of the question.",
    "Small slips in reading the question cause most mistakes here.",
    "The same approach works for many similar questions.",
    "Looking at the problem from a second angle often confirms the result.",
    "Writing the reasoning down makes it easier to spot a weak link.",
    "Units and definitions deserve a second look before committing to an answer.",
    "When two options look close it pays to compare them directly.",
    "A quick sanity check on the size of the answer catches many errors.",
)
_STEPS = {
    "math": (
        "Write down what is given.",
        "Set up the relation between the quantities.",
        "Solve for the unknown and simplify.",
        "Substitute the value back to confirm it.",
        "State the result in the requested form.",
    ),
    "logic": (
        "List the conditions.",
        "Apply them to each option.",
        "Keep the option that breaks no condition.",
        "Confirm it against every condition again.",
        "State the surviving option.",
    ),
    "medical": (
        "Note the key findings.",
        "Build a short differential.",
        "Pick the best fit.",
        "Check it against the remaining findings.",
        "State the answer.",
    ),
    "general": (
        "Identify what is asked.",
        "Set aside choices that do not fit.",
        "Choose the remaining answer.",
        "Confirm it matches the wording.",
        "State the answer.",
    ),
    "code": (
        "Read the specification.",
        "Write the function.",
        "Test it on small inputs.",
        "Handle the edge cases.",
        "Return the result.",
    ),
}
_KEY_POINTS = {  # (full, concise)
    "math": (
        ("the given values", "the relation between them", "the simplified result"),
        ("givens", "relation", "result"),
    ),
    "logic": (
        ("each condition", "the options that break one", "the option that survives"),
        ("conditions", "eliminations", "survivor"),
    ),
    "medical": (
        ("the key findings", "the likely mechanism", "the best answer"),
        ("findings", "mechanism", "answer"),
    ),
    "general": (
        ("what the question asks", "the choices that do not fit", "the best remaining choice"),
        ("question", "eliminations", "answer"),
    ),
    "code": (("the inputs", "the core loop", "the returned value"), ("inputs", "loop", "output")),
}
_RESTATE = {  # (full, concise)
    "math": ("You asked for the value the problem defines.", "You asked for the value."),
    "logic": (
        "You asked which option fits the conditions of the puzzle.",
        "You asked which option fits.",
    ),
    "medical": (
        "You asked for the best answer to a clinical case.",
        "You asked for the diagnosis.",
    ),
    "general": (
        "You asked for the best choice in a general knowledge question.",
        "You asked for the best choice.",
    ),
    "code": ("You asked for code that solves the task.", "You asked for code."),
}
# One-line artefacts by render option: (full, concise).
_LINES = {
    "summary": (
        "Summary: the answer follows directly from the information given.",
        "Summary: answer below.",
    ),
    "assumptions": (
        "Assumptions: every stated condition holds and nothing else is assumed.",
        "Assumptions: conditions as stated.",
    ),
    "ruled_out": (
        "Ruled out: every other option breaks at least one condition.",
        "Ruled out: the rest break a condition.",
    ),
    "verify": (
        "Check: putting the result back into the problem gives a consistent value.",
        "Check: the result fits.",
    ),
    "doctor": ("Please consult a doctor before acting on any of this.", "Please consult a doctor."),
}
_CODE = {
    "default": "result = solve(data)\nprint(result)",
    "snake": "final_result = solve(input_data)\nprint(final_result)",
    "camel": "finalResult = solve(inputData)\nprint(finalResult)",
}
_CLOSINGS = {  # (full, concise)
    "default": ("Would you like another example?", "Want another example?"),
    "check": (
        "Check your understanding: can you explain why this answer works?",
        "Check your understanding: why does it work?",
    ),
    "statement": ("Let me know if anything is unclear.", "Hope that helps."),
}
_KEY_TERMS = {
    "math": "equation, unknown, simplification.",
    "logic": "condition, option, contradiction.",
    "medical": "finding, diagnosis, mechanism.",
    "general": "definition, evidence, context.",
    "code": "function, input, output.",
}


def domain_of(context: frozenset[str]) -> str:
    return next((d for d in DOMAINS if d in context), "general")


def render_reply(
    options: dict[str, str], context: frozenset[str], answer: str, rng: np.random.Generator
) -> str:
    """A reply in which every applied option's catalog verifier passes.

    Unset options take the agent's own defaults, chosen so that an unprompted reply meets
    few preferences: mid length, prose reasoning, a bold label but a plain answer, a
    closing offer phrased as a question.
    """
    domain = domain_of(context)
    length = options.get("length", "default")
    steps = options.get("steps", "default")
    plain = options.get("emphasis") == "plain"
    opener = _OPENERS[int(rng.integers(len(_OPENERS)))]
    background = [_BACKGROUND[i] for i in rng.permutation(len(_BACKGROUND))]
    confidence = ("medium", "high")[int(rng.integers(2))]

    short = int(length == "concise")  # index of the concise variant

    def line(option: str) -> list[str]:
        return [_LINES[option][short]] if options.get(option) == "on" else []

    head = line("summary") + (["## Explanation"] if options.get("headers") == "on" else [])
    if options.get("restate") == "on":
        head.append(_RESTATE[domain][short])

    if steps == "result_only":
        lead = [opener]
    elif short:
        lead = [_REASONING[domain][0]]
    else:
        lead = [opener, *_REASONING[domain]]

    body: list[str] = []
    if steps == "derivation":
        n_steps = 5 if length == "detailed" else 3
        body.append("\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(_STEPS[domain][:n_steps])))
    label = "Key points:" if plain else "**Key points:**"
    points = _KEY_POINTS[domain][short]
    style = options.get("list_style")
    if style == "bullets":
        body.append(label + "\n" + "\n".join(f"- {p}" for p in points))
    elif style == "numbered":
        body.append(label + "\n" + "\n".join(f"{i + 1}. {p}" for i, p in enumerate(points)))
    elif not short and steps != "result_only":
        body.append(f"{label} {points[0]}, {points[1]} and {points[2]}.")
    if "code" in context:
        body.append("```python\n" + _CODE[options.get("naming", "default")] + "\n```")
    body += line("assumptions") + line("ruled_out") + line("verify")
    if options.get("key_terms") == "on":
        body.append("Key terms: " + _KEY_TERMS[domain])
    if options.get("confidence") == "on":
        body.append(f"Confidence: {confidence}")
    body += line("doctor")

    shown = f"${answer}$" if options.get("latex") == "on" and "$" not in answer else answer
    final = f"Final answer: {shown}"
    if options.get("emphasis") == "bold":
        final = f"**{final}**"
    tail = (["## Answer"] if options.get("headers") == "on" else []) + [final]
    tail.append(_CLOSINGS[options.get("closing", "default")][short])

    def compose(n_background: int) -> str:
        extra = [background[i % len(background)] for i in range(n_background)]
        paragraph = " ".join([*lead, *extra])
        return "\n\n".join([*head, paragraph, *body, *tail])

    if short:
        return compose(0)
    floor = _DETAILED_TARGET if length == "detailed" else _DEFAULT_MIN_WORDS
    n = 0
    text = compose(n)
    while word_count(text) < floor:
        n += 1
        text = compose(n)
    return text
