"""The scripted agent: a model-free stand-in for the LLM that answers the user.

It sees only the prompt a method built, never the profile. It reads the preference notes
in that prompt, maps each to catalog render options, and renders a templated reply. Its
imperfections are explicit parameters (``ScriptedAgentParams``), modelled on what LLM
agents are reported to do; see docs/scripted_world.md.

Directive order: note-form sentences in the user messages of the prompt, newest message
first (the user just restated them), then the notes of the system prompt in listed order.
Of two directives that set the same render option, the one listed first is followed.

Rendering (``render_reply``) is a pure function of the options, the request's features,
the answer and the rng; each option's default and applied form are tabulated in
docs/scripted_world.md. In the code domain the answer is code (the task's reference
solution, or a failing stub when the agent errs) and goes in a fenced Python block.
"""

from __future__ import annotations

import ast
import re
from typing import NamedTuple

import msgspec
import numpy as np

from vars_core.code_tasks import CODE_DOMAIN, task_for
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
    """The answer the reply carries: the reference with p_correct, else a wrong one. For a
    code task the reference is the task's reference solution (so the reply's code passes
    the task's tests) and the wrong answer a stub that defines the entry point but fails."""
    if problem is None:
        return UNKNOWN_ANSWER
    if rng.random() < params.p_correct_for(problem.difficulty):
        return problem.answer
    return wrong_answer(problem, rng)


def wrong_answer(problem: Problem, rng: np.random.Generator) -> str:
    """A plausible wrong answer: another listed option, or the answer with a number nudged;
    for a code task, a stub of the entry point that returns None."""
    if problem.domain == CODE_DOMAIN:
        return wrong_code(problem)
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


def wrong_code(problem: Problem) -> str:
    """The reference solution's entry-point signature over a body that returns None: code
    that defines the function the tests call but fails them."""
    try:
        entry_point: str | None = task_for(problem).entry_point
    except KeyError:
        entry_point = None
    try:
        tree = ast.parse(problem.answer)
    except SyntaxError:
        tree = ast.Module(body=[], type_ignores=[])
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    node = next((f for f in functions if f.name == entry_point), None)
    if node is None and functions:
        node = functions[-1]
    if node is not None and node.body[0].lineno > node.lineno:
        lines = problem.answer.splitlines()
        header = lines[node.lineno - 1 : node.body[0].lineno - 1]
        indent = " " * node.body[0].col_offset
        return "\n".join([*header, f"{indent}return None"]) + "\n"
    name = entry_point or (node.name if node is not None else "solve")
    return f"def {name}(*args, **kwargs):\n    return None\n"


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
# One-line artefacts by render option, each set to "on" by its catalog entry: (full, concise).
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
    "conditions": (
        "Conditions: every statement in the puzzle is treated as a constraint on the answer.",
        "Conditions: binding.",
    ),
    "formula": (
        "Formula: the relation that links the given quantities to the unknown.",
        "Formula: the relation.",
    ),
    "mechanism": (
        "Mechanism: the findings share one underlying process, which points to the answer.",
        "Mechanism: one process.",
    ),
    "background": (
        "Background: questions like this test an established fact rather than an opinion.",
        "Background: established fact.",
    ),
    "why": (
        "Why: it is the only choice consistent with what is known.",
        "Why: it alone fits.",
    ),
    "complexity": (
        "Time complexity: roughly linear in the size of the input.",
        "Time complexity: linear.",
    ),
    "edge_cases": (
        "Edge cases: empty input, a single item and repeated values are all handled.",
        "Edge cases: handled.",
    ),
    "common_mistake": (
        "Common mistake: stopping at the first plausible option without checking the rest.",
        "Common mistake: stopping early.",
    ),
    "checklist": (
        "Checklist: the question, the method, the check and the answer.",
        "Checklist: method, answer.",
    ),
    "takeaway": (
        "Takeaway: the answer follows once every piece of the question is used.",
        "Takeaway: use everything.",
    ),
}
# Lines of the two-valued options of the conflict groups: option -> value -> (full, concise).
_CHOICES = {
    "tone": {
        "formal": ("Good day. Please find my answer below.", "Good day."),
        "casual": ("Hey there! Happy to help with this one.", "Hey there!"),
    },
    "examples": {
        "worked": (
            "Worked example: the same method on a smaller case gives a result that is easy "
            "to check by hand.",
            "Worked example: small case.",
        ),
    },
    "analogy": {
        "analogy": (
            "Analogy: it is like following a recipe, where every ingredient has to be used "
            "before the dish is done.",
            "Analogy: recipe.",
        ),
        "technical": (
            "In technical terms: the answer is the unique value consistent with every stated "
            "constraint.",
            "In technical terms: constrained.",
        ),
    },
    "rigor": {
        "proof": (
            "Proof: each step follows from the previous one by a valid rule, so the result holds.",
            "Proof: valid steps.",
        ),
        "intuition": (
            "Intuition: the pieces of the problem only fit together one way, and that way is "
            "the answer.",
            "Intuition: one fit.",
        ),
    },
    "correction": {
        "blunt": (
            "What went wrong: the usual failure is skipping a condition, which leads straight "
            "to a wrong result.",
            "What went wrong: skipped condition.",
        ),
        "gentle": (
            "No worries: getting stuck here is normal, and you are closer than it feels.",
            "No worries: close.",
        ),
    },
    "decision": {
        "recommend": (
            "Recommendation: go with the final answer, since it is the only one that holds up.",
            "Recommendation: this answer.",
        ),
        "options": (
            "Options to weigh: the final answer is the strongest, but compare it with the "
            "runner-up before you decide.",
            "Options to weigh: two.",
        ),
    },
}
_BUILD_UP = ("Building up to the answer, which comes at the end.", "Building up to the answer.")
_UP_FRONT = "Bottom line first."  # before the final-answer line, moved to the top
_CODE = {
    "default": "result = solve(data)\nprint(result)",
    "snake": "final_result = solve(input_data)\nprint(final_result)",
    "camel": "finalResult = solve(inputData)\nprint(finalResult)",
}
_STUB = "def solve(data):\n    return data\n"  # the function shown when no task code is known
_DOCSTRING = '"""Return the result the task asks for."""'
_MAIN_GUARD = 'if __name__ == "__main__":\n    import doctest\n\n    doctest.testmod()'
_CLOSINGS = {  # (full, concise)
    "default": ("Would you like another example?", "Want another example?"),
    "check": (
        "Check your understanding: can you explain why this answer works?",
        "Check your understanding: why does it work?",
    ),
    "statement": ("Let me know if anything is unclear.", "Hope that helps."),
}
# The default closing with "leave out examples" applied: still an offer phrased as a question.
_CLOSING_NO_EXAMPLES = ("Would you like me to go over any part again?", "Anything to go over?")
_KEY_TERMS = {
    "math": "equation, unknown, simplification.",
    "logic": "condition, option, contradiction.",
    "medical": "finding, diagnosis, mechanism.",
    "general": "definition, evidence, context.",
    "code": "function, input, output.",
}
_DEF = re.compile(r"(?m)^(?:async )?def (\w+)\(")


def domain_of(context: frozenset[str]) -> str:
    return next((d for d in DOMAINS if d in context), "general")


def with_docstrings(code: str) -> str:
    """``code`` with a one-line docstring added to every function that lacks one."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    lines = code.split("\n")
    inserts: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if ast.get_docstring(node) is not None or node.body[0].lineno <= node.lineno:
            continue  # already documented, or a one-line body on the def line
        first = node.body[0]
        start = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))])
        inserts.append((start - 1, " " * first.col_offset + _DOCSTRING))
    for index, line in sorted(inserts, reverse=True):
        lines.insert(index, line)
    return "\n".join(lines)


def code_blocks(options: dict[str, str], answer: str) -> list[str]:
    """The fenced code of a reply in the code domain.

    A task's solution (an answer that defines a function) comes first, as written, in its
    own block, so ``grade_code`` runs exactly it; the usage lines that carry the naming
    style follow in a second block that defines nothing. The docstring and main-guard
    options edit the solution (or a ``solve`` stub when no task code is known).
    """
    found = _DEF.findall(answer)
    name = found[-1] if found else "solve"
    usage = _CODE[options.get("naming", "default")]
    if name != "solve":
        usage = usage.replace("solve(", f"{name}(")
    solution = answer.strip("\n") if found else ""
    if not solution and (options.get("docstring") == "on" or options.get("main_guard") == "on"):
        solution = _STUB.strip("\n")
    if not solution:
        return ["```python\n" + usage + "\n```"]
    if options.get("docstring") == "on":
        solution = with_docstrings(solution)
    if options.get("main_guard") == "on":
        solution += "\n\n\n" + _MAIN_GUARD
    return ["```python\n" + solution + "\n```", "```python\n" + usage + "\n```"]


def render_reply(
    options: dict[str, str], context: frozenset[str], answer: str, rng: np.random.Generator
) -> str:
    """A reply in which every applied option's catalog verifier passes.

    Unset options take the agent's own defaults, chosen so that an unprompted reply meets
    few preferences: mid length, prose reasoning, a bold label but a plain answer, a
    closing offer phrased as a question (that mentions an example), neutral tone, the
    answer at the end with no announcement, no artefact lines. A code answer (a task's
    solution, which defines a function) goes in a fenced Python block.
    """
    domain = domain_of(context)
    length = options.get("length", "default")
    steps = options.get("steps", "default")
    plain = options.get("emphasis") == "plain"
    opener = _OPENERS[int(rng.integers(len(_OPENERS)))]
    background = [_BACKGROUND[i] for i in rng.permutation(len(_BACKGROUND))]
    confidence = ("medium", "high")[int(rng.integers(2))]

    short = int(length == "concise")  # index of the concise variant
    functions = _DEF.findall(answer)  # a code task's solution: name the function it defines
    stated = f"the `{functions[-1]}` function in the code block" if functions else answer
    if options.get("latex") == "on" and "$" not in stated:
        stated = f"${stated}$"

    def line(option: str) -> list[str]:
        return [_LINES[option][short]] if options.get(option) == "on" else []

    def choice(option: str) -> list[str]:
        picked = _CHOICES[option].get(options.get(option, ""))
        return [picked[short]] if picked else []

    head = line("summary") + choice("tone")
    head += ["## Explanation"] if options.get("headers") == "on" else []
    if options.get("restate") == "on":
        head.append(_RESTATE[domain][short])
    final = f"Final answer: {stated}"
    if options.get("emphasis") == "bold":
        final = f"**{final}**"
    up_front = options.get("answer_position") == "first"
    if up_front:
        head.append(f"{_UP_FRONT} {final}")
    elif options.get("answer_position") == "last":
        head.append(_BUILD_UP[short])

    if steps == "result_only":
        lead = [opener]
    elif short:
        lead = [_REASONING[domain][0]]
    else:
        lead = [opener, *_REASONING[domain]]

    points = _KEY_POINTS[domain][short]
    body: list[str] = line("conditions") + line("formula")
    if steps == "derivation":
        n_steps = 5 if length == "detailed" else 3
        texts = [f"{p.capitalize()}." for p in points] if short else _STEPS[domain][:n_steps]
        body.append("\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(texts)))
    if options.get("pace") == "parts":
        body.append("\n".join(f"Part {i + 1}: {p}." for i, p in enumerate(points)))
    elif options.get("pace") == "whole":
        body.append(f"Whole solution: {points[0]}, {points[1]} and {points[2]}, in one pass.")
    label = "Key points:" if plain else "**Key points:**"
    style = options.get("list_style")
    if style == "bullets":
        body.append(label + "\n" + "\n".join(f"- {p}" for p in points))
    elif style == "numbered":
        body.append(label + "\n" + "\n".join(f"{i + 1}. {p}" for i, p in enumerate(points)))
    elif not short and steps != "result_only":
        body.append(f"{label} {points[0]}, {points[1]} and {points[2]}.")
    listed = len(body) - 1 if style in ("bullets", "numbered") else None
    if "code" in context:
        body += code_blocks(options, answer)
    body += line("complexity") + line("edge_cases")
    body += choice("rigor") + choice("analogy") + choice("examples")
    body += line("assumptions") + line("ruled_out") + line("verify")
    if options.get("key_terms") == "on":
        body.append("Key terms: " + _KEY_TERMS[domain])
    if options.get("confidence") == "on":
        body.append(f"Confidence: {confidence}")
    body += line("doctor") + line("mechanism") + line("background") + line("why")
    body += choice("correction") + line("common_mistake") + choice("decision")
    body += line("checklist") + line("takeaway")

    tail = [] if up_front else (["## Answer"] if options.get("headers") == "on" else []) + [final]
    closing = options.get("closing", "default")
    if closing == "default" and options.get("examples") == "none":
        tail.append(_CLOSING_NO_EXAMPLES[short])
    else:
        tail.append(_CLOSINGS[closing][short])

    def compose(n_background: int) -> str:
        extra = [background[i % len(background)] for i in range(n_background)]
        paragraph = " ".join([*lead, *extra])
        return "\n\n".join([*head, *([paragraph] if paragraph else []), *body, *tail])

    if short:
        text = compose(0)
        # Many artefacts and a long answer: the prose sentence goes, then the list's label.
        if word_count(text) > CONCISE_MAX and (head or body):
            lead = []
            text = compose(0)
        if word_count(text) > CONCISE_MAX and listed is not None:
            body[listed] = body[listed].split("\n", 1)[1]
            text = compose(0)
        return text
    floor = _DETAILED_TARGET if length == "detailed" else _DEFAULT_MIN_WORDS
    n = 0
    text = compose(n)
    while word_count(text) < floor:
        n += 1
        text = compose(n)
    return text
