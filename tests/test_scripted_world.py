"""The scripted world: catalog, context, profiles, simulated user and scripted agent."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vars_core.notes import format_note, parse_notes
from vars_core.problems import DATA_DIR, ProblemBank, answers_match, load_problems
from vars_core.scripted.agent import (
    ScriptedAgentParams,
    collect_directives,
    render_reply,
    scripted_reply,
)
from vars_core.scripted.catalog import (
    catalog,
    check,
    conflict_groups,
    entry,
    find_by_action,
    find_by_condition,
)
from vars_core.scripted.context import ANY, CUES, DOMAINS, context_of, request_header
from vars_core.scripted.profiles import (
    DEFAULT_PREFS_PER_PROFILE,
    TIE_BREAK,
    applicable_preferences,
    generate_profiles,
    triggered_conflicts,
)
from vars_core.scripted.user import (
    CORRECTION,
    PRAISE,
    ScriptedUserParams,
    enforcement,
    final_answer,
    opening_message,
    simulate_turn,
)
from vars_core.types import Message, Preference, Problem, Profile, Verifier

DOMAIN_SETS = ["math-500", "math_hard", "logiqa", "medqa", "mmlu"]
PROBLEMS = load_problems(DOMAIN_SETS)
BANK = ProblemBank(PROBLEMS)
BY_ID = {p.problem_id: p for p in PROBLEMS}
MATH_EASY = BY_ID["math-500/test/2"]  # level 1
MATH_HARD = BY_ID["math_hard/test/0"]  # level 5
SET_OF = {"math": "math-500", "logic": "logiqa", "medical": "medqa", "general": "mmlu"}
# Answers of every shape the renderer must carry: short, LaTeX, the longest option texts.
ANSWERS = sorted({p.answer for p in PROBLEMS}, key=len)
SAMPLE_ANSWERS = [ANSWERS[0], MATH_EASY.answer, ANSWERS[len(ANSWERS) // 2], ANSWERS[-1]]


def ctx_for(trigger: str, *extra: str) -> frozenset[str]:
    domain = trigger if trigger in DOMAINS else "math"
    return frozenset({ANY, domain, trigger, *extra})


def opposite(e):
    a, b = conflict_groups()[e.conflict_group]
    return b if a.pref_id == e.pref_id else a


def opening_for(problem: Problem, cues: tuple[str, ...] = ()) -> str:
    domain = {
        "math-500": "math",
        "math_hard": "math",
        "logiqa": "logic",
        "medqa": "medical",
        "mmlu": "general",
    }
    return f"{request_header(domain[problem.domain], cues)}\n\n{problem.question}"


def system(*notes: str) -> Message:
    lines = "\n".join(f"- {n}" for n in notes)
    return Message("system", f"You are a helpful assistant.\nUser preferences:\n{lines}")


def profile_of(*prefs: Preference) -> Profile:
    return Profile(profile_id="t", persona="test", preferences=list(prefs))


# --------------------------------------------------------------------------- catalog


def test_catalog_size_categories_and_groups():
    entries = catalog()
    assert len(entries) >= 16
    assert len({e.category for e in entries}) >= 5
    groups = conflict_groups()
    assert len(groups) >= 5
    for a, b in groups.values():
        assert list(a.render) == list(b.render) and a.render != b.render
        # both sides can apply to one query
        assert not (a.trigger != b.trigger and a.trigger in DOMAINS and b.trigger in DOMAINS)
    assert len({e.pref_id for e in entries}) == len(entries)


@pytest.mark.parametrize("e", catalog(), ids=lambda e: e.pref_id)
def test_catalog_note_round_trips(e):
    assert e.condition == e.condition.lower()
    assert "," not in e.condition and "." not in e.condition and "." not in e.action
    assert parse_notes(format_note(e.condition, e.action)) == [(e.condition, e.action)]
    assert find_by_action(e.action.upper() + "!") is e
    found = find_by_condition(f"  {e.condition.title()} ")
    assert found is not None and found.trigger == e.trigger
    assert entry(e.pref_id) is e


def test_catalog_lookups_miss_cleanly():
    assert find_by_action("write everything in French") is None
    assert find_by_condition("talking about the weather") is None
    with pytest.raises(KeyError, match="nope"):
        entry("nope")


def test_check_kinds():
    assert check(Verifier("regex", pattern=r"^a"), "abc")
    assert not check(Verifier("not_regex", pattern=r"^a"), "abc")
    assert check(Verifier("max_words", limit=3), "one two three")
    assert not check(Verifier("max_words", limit=2), "one two three")
    assert check(Verifier("min_words", limit=3), "one two three")
    assert not check(Verifier("min_words", limit=4), "one two three")


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("e", catalog(), ids=lambda e: e.pref_id)
def test_verifier_passes_with_its_option_and_fails_with_the_opposite(e):
    ctx = ctx_for(e.trigger)
    for answer, seed in itertools.product(SAMPLE_ANSWERS, range(3)):
        applied = render_reply(dict(e.render), ctx, answer, np.random.default_rng(seed))
        assert check(e.verifier, applied), (answer, applied)
        if e.conflict_group:
            other = render_reply(dict(opposite(e).render), ctx, answer, np.random.default_rng(seed))
            assert not check(e.verifier, other), (answer, other)
        else:
            plain = render_reply({}, ctx, answer, np.random.default_rng(seed))
            assert not check(e.verifier, plain), (answer, plain)


def test_options_compose_on_every_problem():
    """With any mix of options, a verifier passes when its side is applied and fails when
    the opposite side is: options never break each other."""
    rng = np.random.default_rng(0)
    entries = catalog()
    for problem in PROBLEMS + load_problems(DOMAIN_SETS, "train"):
        domain = context_of(opening_for(problem)) & set(DOMAINS)
        for _ in range(3):
            cues = [c for c in CUES if rng.random() < 0.5]
            ctx = frozenset({ANY, *domain, *cues})
            options: dict[str, str] = {}
            for i in rng.permutation(len(entries)):
                e = entries[int(i)]
                if e.trigger in ctx and rng.random() < 0.7:
                    options.setdefault(*next(iter(e.render.items())))
            text = render_reply(options, ctx, problem.answer, rng)
            for e in entries:
                key, value = next(iter(e.render.items()))
                if options.get(key) == value:
                    assert check(e.verifier, text), (e.pref_id, options, text)
                elif key in options and e.conflict_group:
                    assert not check(e.verifier, text), (e.pref_id, options, text)
            assert final_answer(text) == problem.answer


def test_default_reply_meets_few_preferences():
    for domain in ("math", "logic", "medical", "general"):
        ctx = frozenset({ANY, domain, *CUES})
        text = render_reply({}, ctx, "42", np.random.default_rng(1))
        met = [e.pref_id for e in catalog() if e.trigger in ctx and check(e.verifier, text)]
        assert met == ["fmt_no_headers"], (domain, met)


# --------------------------------------------------------------------------- context


def test_context_features():
    assert context_of("") == frozenset({ANY})
    text = "Quick question: I'm working on a math problem. I'm preparing for an exam.\n\nExplain your reasoning about x."
    assert context_of(text) == frozenset({ANY, "math", "quick", "exam"})  # only the first paragraph
    assert context_of(request_header("medical", ["notes", "explain"])) == frozenset(
        {ANY, "medical", "notes", "explain"}
    )
    for domain in DOMAINS:
        assert context_of(request_header(domain)) == frozenset({ANY, domain})


# --------------------------------------------------------------------------- profiles


def test_profiles_are_deterministic_and_mark_one_winner():
    a, b = generate_profiles(40, seed=3, prefs_per_profile=None), generate_profiles(40, seed=3, prefs_per_profile=None)
    assert a == b
    assert generate_profiles(5, seed=3, prefs_per_profile=None) == a[:5]
    assert generate_profiles(40, seed=4, prefs_per_profile=None) != a
    assert all(len(p.preferences) == DEFAULT_PREFS_PER_PROFILE for p in generate_profiles(3, seed=3))
    kinds = set()
    for profile in a:
        assert len(profile.preferences) == len(catalog())
        for group in conflict_groups():
            sides = [p for p in profile.preferences if p.conflict_group == group]
            marks = sorted(tuple(p.priority_context) for p in sides)
            assert marks in (
                [(), (TIE_BREAK,)],
                [("cue:quick",), (TIE_BREAK,)],
                [("cue:explain",), (TIE_BREAK,)],
            )
            kinds.add(marks[0][0] if marks[0] else "")
    assert kinds == {"", "cue:quick", "cue:explain"}


def test_profile_subsets():
    profiles = generate_profiles(20, seed=1, prefs_per_profile=6)
    ids = {e.pref_id for e in catalog()}
    for profile in profiles:
        assert len(profile.preferences) == 6
        assert {p.pref_id for p in profile.preferences} <= ids
        for p in profile.preferences:
            held_both = sum(q.conflict_group == p.conflict_group for q in profile.preferences) == 2
            assert bool(p.priority_context) <= held_both  # marks only where both sides are held
    assert len({tuple(p.pref_id for p in pr.preferences) for pr in profiles}) > 10


def test_conflict_resolution_tie_break_and_cue():
    concise = entry("verb_concise").preference(["cue:quick"])
    detailed = entry("verb_detailed").preference([TIE_BREAK])
    bullets = entry("fmt_bullets").preference()
    profile = profile_of(concise, detailed, bullets)
    exam = ctx_for("exam")
    assert triggered_conflicts(profile, exam) == [(detailed, concise)]
    assert applicable_preferences(profile, exam) == [detailed, bullets]
    quick_exam = ctx_for("exam", "quick")
    assert triggered_conflicts(profile, quick_exam) == [(concise, detailed)]
    assert applicable_preferences(profile, quick_exam) == [concise, bullets]
    plain = ctx_for("math")
    assert triggered_conflicts(profile, plain) == []
    assert applicable_preferences(profile, plain) == [concise, bullets]


# --------------------------------------------------------------------------- agent


def honoured_rate(
    pref_id: str, prompt: list[Message], params: ScriptedAgentParams | None = None, seeds: int = 400
) -> float:
    e, params = entry(pref_id), params or ScriptedAgentParams()
    hits = sum(
        check(e.verifier, scripted_reply(prompt, np.random.default_rng(s), params, BANK).content)
        for s in range(seeds)
    )
    return hits / seeds


def test_agent_is_deterministic():
    prompt = [
        system(entry("fmt_bullets").note, entry("math_steps").note),
        Message("user", opening_for(MATH_HARD)),
    ]
    params = ScriptedAgentParams()
    one = scripted_reply(prompt, np.random.default_rng(11), params, BANK)
    two = scripted_reply(prompt, np.random.default_rng(11), params, BANK)
    assert one == two
    others = {
        scripted_reply(prompt, np.random.default_rng(s), params, BANK).content for s in range(20)
    }
    assert len(others) > 1
    assert one.usage.prompt_tokens > 0 and one.usage.completion_tokens > 10


@pytest.mark.parametrize(
    "e", [e for e in catalog() if e.trigger != "code"], ids=lambda e: e.pref_id
)
def test_a_note_makes_the_agent_comply(e):
    problem = BY_ID[f"{SET_OF.get(e.trigger, 'math-500')}/test/3"]
    cues = (e.trigger,) if e.trigger in CUES else ()
    opening = Message("user", opening_for(problem, cues))
    with_note = honoured_rate(e.pref_id, [system(e.note), opening], seeds=200)
    without = honoured_rate(e.pref_id, [system(), opening], seeds=200)
    assert with_note >= 0.9
    if e.pref_id != "fmt_no_headers":  # the one preference the default reply meets
        assert without == 0.0
        assert with_note - without > 0.85


def test_first_listed_of_contradicting_directives_wins():
    bullets, numbered = entry("fmt_bullets"), entry("fmt_numbered")
    opening = Message("user", opening_for(MATH_EASY, ("explain",)))  # both conditions hold
    assert honoured_rate("fmt_numbered", [system(bullets.note, numbered.note), opening]) == 0.0
    assert honoured_rate("fmt_bullets", [system(bullets.note, numbered.note), opening]) > 0.85
    assert honoured_rate("fmt_bullets", [system(numbered.note, bullets.note), opening]) == 0.0
    assert honoured_rate("fmt_numbered", [system(numbered.note, bullets.note), opening]) > 0.85


def test_a_fresh_restatement_outranks_the_system_prompt():
    bullets, numbered = entry("fmt_bullets"), entry("fmt_numbered")
    prompt = [
        system(bullets.note),
        Message("user", opening_for(MATH_EASY, ("explain",))),
        Message("assistant", "Here is my answer.\n\nFinal answer: 1"),
        Message("user", enforcement(numbered.preference())),
    ]
    assert [d.source for d in collect_directives(prompt)] == ["latest", "system"]
    assert honoured_rate("fmt_bullets", prompt) == 0.0
    assert honoured_rate("fmt_numbered", prompt) > 0.9


def test_compliance_falls_as_directives_grow():
    params = ScriptedAgentParams()
    target = entry("fmt_bullets").note
    opening = Message("user", opening_for(MATH_EASY))
    rates = {}
    for n in (1, 5, 20):
        fillers = [
            f"When answering any question, mention fact number {k} somewhere." for k in range(n - 1)
        ]
        prompt = [system(target, *fillers), opening]
        assert len(collect_directives(prompt)) == n
        rates[n] = honoured_rate("fmt_bullets", prompt, params, seeds=3000)
        assert abs(rates[n] - params.p_honour(n)) < 0.03
    assert rates[1] > rates[5] > rates[20]
    assert rates[5] >= 0.88
    assert rates[1] - rates[20] > 0.12


def test_inapplicable_directive_is_sometimes_misapplied():
    note = entry("dom_doctor").note  # a medical condition, asked on a math problem
    prompt = [system(note), Message("user", opening_for(MATH_EASY))]
    never = ScriptedAgentParams(p_misapply=0.0)
    often = ScriptedAgentParams(p_misapply=0.5)
    assert honoured_rate("dom_doctor", prompt, never) == 0.0
    assert 0.35 < honoured_rate("dom_doctor", prompt, often) < 0.6
    default = honoured_rate("dom_doctor", prompt, seeds=3000)
    assert 0.01 < default < 0.06


def test_correctness_follows_the_difficulty_table():
    params = ScriptedAgentParams()
    for problem in (MATH_EASY, MATH_HARD, BY_ID["medqa/test/0"]):
        prompt = [system(), Message("user", opening_for(problem))]
        answers = [
            final_answer(scripted_reply(prompt, np.random.default_rng(s), params, BANK).content)
            for s in range(1500)
        ]
        right = [answers_match(problem.domain, a, problem.answer) for a in answers]
        assert abs(np.mean(right) - params.p_correct_for(problem.difficulty)) < 0.04
        wrong = {a for a, ok in zip(answers, right, strict=True) if not ok}
        assert wrong and all(a.strip() for a in wrong)
    unknown = scripted_reply(
        [Message("user", "What is 2+2?")], np.random.default_rng(0), params, BANK
    )
    assert final_answer(unknown.content) == "I am not sure"


# --------------------------------------------------------------------------- user


@pytest.mark.parametrize("e", catalog(), ids=lambda e: e.pref_id)
def test_enforcement_sentence_is_the_note_form(e):
    sentence = enforcement(e.preference())
    assert sentence == f"As I mentioned before: when {e.condition}, {e.action}."
    assert parse_notes(sentence) == [(e.condition, e.action)]


def test_opening_holds_the_problem_and_probes_conflicts():
    profile = generate_profiles(1, seed=5)[0]
    probe_all = ScriptedUserParams(conflict_probe_rate=1.0)
    never = ScriptedUserParams(conflict_probe_rate=0.0, cue_rate=0.0)
    for problem in (MATH_EASY, BY_ID["logiqa/test/0"], BY_ID["medqa/test/1"], BY_ID["mmlu/test/2"]):
        for seed in range(10):
            text, probe = opening_message(profile, problem, np.random.default_rng(seed), probe_all)
            assert problem.question in text and BANK.lookup(text) == problem
            assert probe and triggered_conflicts(profile, context_of(text))
            plain, probe = opening_message(profile, problem, np.random.default_rng(seed), never)
            assert not probe and context_of(plain) & set(CUES) == set()
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    assert opening_message(profile, MATH_EASY, rng_a, ScriptedUserParams()) == opening_message(
        profile, MATH_EASY, rng_b, ScriptedUserParams()
    )
    probes = [
        opening_message(profile, MATH_EASY, np.random.default_rng(s), ScriptedUserParams())[1]
        for s in range(400)
    ]
    assert 0.2 < np.mean(probes) < 0.4


def test_user_turns():
    concise = entry("verb_concise").preference()
    bullets = entry("fmt_bullets").preference()
    bold = entry("fmt_bold_answer").preference()
    profile = profile_of(concise, bullets, bold)
    opening = opening_for(MATH_EASY)
    history = [Message("user", opening, 1)]
    params = ScriptedUserParams(max_enforce_per_turn=2)
    first = simulate_turn(
        profile, MATH_EASY, opening, history, 1, 5, np.random.default_rng(0), params
    )
    assert first.message == opening and not first.terminate

    ctx = context_of(opening)
    bare = render_reply({}, ctx, MATH_EASY.answer, np.random.default_rng(0))
    turn = simulate_turn(
        profile,
        MATH_EASY,
        opening,
        [*history, Message("assistant", bare)],
        2,
        5,
        np.random.default_rng(0),
        params,
    )
    assert turn.satisfied == {"verb_concise": False, "fmt_bullets": False, "fmt_bold_answer": False}
    assert len(turn.enforced) == 2 and not turn.terminate
    for pid in turn.enforced:
        assert enforcement(entry(pid).preference()) in turn.message
    assert len(parse_notes(turn.message)) == 2
    again = simulate_turn(
        profile,
        MATH_EASY,
        opening,
        [*history, Message("assistant", bare)],
        2,
        5,
        np.random.default_rng(0),
        params,
    )
    assert again == turn

    good = {"length": "concise", "list_style": "bullets", "emphasis": "bold"}
    right = render_reply(good, ctx, MATH_EASY.answer, np.random.default_rng(0))
    done = simulate_turn(
        profile,
        MATH_EASY,
        opening,
        [*history, Message("assistant", right)],
        3,
        5,
        np.random.default_rng(0),
        params,
    )
    assert done.message == PRAISE and done.terminate and not done.timeout and not done.enforced
    assert all(done.satisfied.values()) and done.draft_answer == MATH_EASY.answer

    wrong = render_reply(good, ctx, "999", np.random.default_rng(0))
    corrected = simulate_turn(
        profile,
        MATH_EASY,
        opening,
        [*history, Message("assistant", wrong)],
        3,
        5,
        np.random.default_rng(0),
        params,
    )
    assert (
        corrected.message == CORRECTION
        and not corrected.terminate
        and corrected.draft_answer == "999"
    )

    late = simulate_turn(
        profile,
        MATH_EASY,
        opening,
        [*history, Message("assistant", bare)],
        6,
        5,
        np.random.default_rng(0),
        params,
    )
    assert (
        late.terminate
        and late.timeout
        and late.message == ""
        and late.satisfied["fmt_bullets"] is False
    )

    one = ScriptedUserParams(max_enforce_per_turn=1)
    single = simulate_turn(
        profile,
        MATH_EASY,
        opening,
        [*history, Message("assistant", bare)],
        2,
        5,
        np.random.default_rng(0),
        one,
    )
    assert len(single.enforced) == 1 and len(parse_notes(single.message)) == 1


def test_user_scores_conflicts():
    winner = entry("fmt_numbered").preference([TIE_BREAK])
    loser = entry("fmt_bullets").preference()
    profile = profile_of(loser, winner)
    opening = opening_for(MATH_EASY, ("explain",))
    ctx = context_of(opening)
    history = [Message("user", opening, 1)]
    for style, correct in (("numbered", True), ("bullets", False)):
        reply = render_reply({"list_style": style}, ctx, MATH_EASY.answer, np.random.default_rng(0))
        turn = simulate_turn(
            profile,
            MATH_EASY,
            opening,
            [*history, Message("assistant", reply)],
            2,
            5,
            np.random.default_rng(0),
            ScriptedUserParams(),
        )
        assert turn.conflict_probe and turn.conflict_correct == [correct]
        assert set(turn.satisfied) == {"fmt_numbered"}  # the loser is not judged


# --------------------------------------------------------------------------- the loop


def test_hand_driven_loop_from_violation_to_praise():
    pref = entry("math_steps").preference()
    profile = profile_of(pref)
    user_params, agent_params = (
        ScriptedUserParams(conflict_probe_rate=0.0, cue_rate=0.0),
        ScriptedAgentParams(),
    )
    opening, probe = opening_message(profile, MATH_EASY, np.random.default_rng(0), user_params)
    assert not probe
    history = [Message("user", opening, 1)]

    reply = scripted_reply([system(), *history], np.random.default_rng(0), agent_params, BANK)
    history.append(Message("assistant", reply.content, 1))
    turn = simulate_turn(
        profile, MATH_EASY, opening, history, 2, 5, np.random.default_rng(0), user_params
    )
    assert turn.satisfied == {"math_steps": False} and turn.enforced == ["math_steps"]
    assert (
        "As I mentioned before: when solving a math problem, show every derivation step."
        in turn.message
    )

    notes = parse_notes(turn.message)
    assert notes == [(pref.condition, pref.action)]
    note = format_note(*notes[0])

    # Next session: the note is in the system prompt; find seeds where the answer is right.
    praised = 0
    for seed in range(40):
        fresh = [Message("user", opening, 1)]
        reply = scripted_reply(
            [system(note), *fresh], np.random.default_rng(seed), agent_params, BANK
        )
        fresh.append(Message("assistant", reply.content, 1))
        end = simulate_turn(
            profile, MATH_EASY, opening, fresh, 2, 5, np.random.default_rng(seed), user_params
        )
        if end.satisfied["math_steps"] and answers_match(
            MATH_EASY.domain, end.draft_answer, MATH_EASY.answer
        ):
            assert end.message == PRAISE and end.terminate and not end.timeout
            praised += 1
        else:
            assert not end.terminate
    assert praised >= 25


def test_generated_profile_sessions_converge_with_remembered_notes():
    """Notes the user restated, put back in the system prompt, end most sessions in praise.

    A 12-preference profile: with 40 about eight preferences hold at once and the agent's
    per-directive honour rate makes a fully compliant reply a coin flip per turn."""
    profile = generate_profiles(1, seed=2, prefs_per_profile=12)[0]
    user_params, agent_params = ScriptedUserParams(), ScriptedAgentParams()
    finished = 0
    for seed in range(30):
        problem = PROBLEMS[seed * 3 % len(PROBLEMS)]
        rng = np.random.default_rng(seed)
        opening, _ = opening_message(profile, problem, rng, user_params)
        history, notes = [Message("user", opening, 1)], []
        for turn in range(2, 12):
            reply = scripted_reply([system(*notes), *history], rng, agent_params, BANK)
            history.append(Message("assistant", reply.content, turn - 1))
            sim = simulate_turn(profile, problem, opening, history, turn, 10, rng, user_params)
            if sim.terminate:
                finished += sim.message == PRAISE
                break
            notes += [format_note(c, a) for c, a in parse_notes(sim.message)]
            history.append(Message("user", sim.message, turn))
    assert finished >= 20


def test_shipped_data_has_its_licence():
    assert (DATA_DIR / "LICENSE").read_text().startswith("MIT License")
    assert (DATA_DIR / "README.md").is_file()


def test_doc_lists_every_catalog_preference():
    doc = (DATA_DIR.parents[2] / "docs" / "scripted_world.md").read_text()
    for e in catalog():
        assert f"| {e.pref_id} |" in doc and e.action in doc
