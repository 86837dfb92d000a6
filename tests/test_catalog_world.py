"""The scripted world's full-size catalog: its shape, that the scripted agent can render and
the verifiers tell apart every option, that conflict probes exist for every group, that a
~40-preference profile sees a handful of preferences per request, and that code replies
carry real code that the task's tests accept or reject."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vars_core.code_tasks import grade_code, load_code_tasks
from vars_core.problems import ProblemBank, load_problems
from vars_core.scripted.agent import (
    ScriptedAgentParams,
    code_blocks,
    render_reply,
    scripted_reply,
    with_docstrings,
    wrong_code,
)
from vars_core.scripted.catalog import CatalogEntry, catalog, check, conflict_groups, entry
from vars_core.scripted.context import (
    ANY,
    CUE_PHRASES,
    CUES,
    DOMAIN_PHRASES,
    DOMAINS,
    context_of,
    domain_feature,
    request_header,
)
from vars_core.scripted.profiles import generate_profiles, trigger_of, triggered_conflicts
from vars_core.scripted.user import final_answer
from vars_core.types import Message

CATEGORIES = {
    "format",
    "verbosity",
    "code style",
    "math style",
    "interaction",
    "domain",
    "error correction",
    "output artefacts",
}
TEXT_SETS = ["math-500", "math_hard", "logiqa", "medqa", "mmlu"]
TEXT_PROBLEMS = load_problems(TEXT_SETS) + load_problems(TEXT_SETS, "train")
CODE_PROBLEMS = load_problems(["code"]) + load_problems(["code"], "train")
BANK = ProblemBank(TEXT_PROBLEMS + CODE_PROBLEMS)


def side_of(e: CatalogEntry) -> tuple[str, str]:
    return next(iter(e.render.items()))


def other_side(e: CatalogEntry) -> CatalogEntry:
    a, b = conflict_groups()[e.conflict_group]
    return b if a.pref_id == e.pref_id else a


def context_for(e: CatalogEntry, domain: str) -> frozenset[str]:
    return frozenset({ANY, domain, e.trigger})


def domains_for(e: CatalogEntry) -> list[str]:
    if e.trigger in DOMAINS:
        return [e.trigger]
    return [d for d in DOMAINS if d != "code"]


def answers_for(domain: str) -> list[str]:
    if domain == "code":
        return [CODE_PROBLEMS[0].answer, wrong_code(CODE_PROBLEMS[7]), "I am not sure"]
    pool = sorted({p.answer for p in TEXT_PROBLEMS if domain_feature(p.domain) == domain}, key=len)
    return [pool[0], pool[len(pool) // 2], pool[-1]]


# --------------------------------------------------------------------------- shape


def test_catalog_has_the_designed_size():
    entries = catalog()
    groups = conflict_groups()
    assert len(entries) >= 45
    assert len(groups) == 15
    assert {e.category for e in entries} == CATEGORIES
    standalone = [e for e in entries if not e.conflict_group]
    assert 18 <= len(standalone) <= 25
    assert len(entries) == 2 * len(groups) + len(standalone)
    for category in CATEGORIES:
        assert sum(e.category == category for e in entries) >= 3, category
    # every feature a request can carry is the trigger of something
    assert {e.trigger for e in entries} == {ANY, *DOMAINS, *CUES}
    # priority cues stay within the two the profile generator marks
    assert {e.priority_cue for e in entries if e.priority_cue} <= {"quick", "explain"}


def test_conflict_sides_have_distinct_conditions_and_one_render_key():
    for name, (a, b) in conflict_groups().items():
        assert a.condition != b.condition, name
        assert list(a.render) == list(b.render) and a.render != b.render, name


def test_cue_phrases_map_to_exactly_their_feature():
    for cue, phrase in CUE_PHRASES.items():
        assert context_of(phrase) == frozenset({ANY, cue}), cue
    for domain, phrase in DOMAIN_PHRASES.items():
        assert context_of(phrase) == frozenset({ANY, domain}), domain
    for k in (0, 1, 2, 3, len(CUES)):
        for cues in itertools.islice(itertools.combinations(CUES, k), 12):
            for domain in DOMAINS:
                header = request_header(domain, list(cues))
                assert context_of(header) == frozenset({ANY, domain, *cues}), header
                assert context_of(f"{header}\n\nI got stuck, quick question.") == context_of(header)


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("e", catalog(), ids=lambda e: e.pref_id)
def test_each_option_passes_its_verifier_and_fails_the_other_side(e):
    for domain in domains_for(e):
        ctx = context_for(e, domain)
        for answer, seed in itertools.product(answers_for(domain), range(2)):
            applied = render_reply(dict(e.render), ctx, answer, np.random.default_rng(seed))
            assert check(e.verifier, applied), (domain, applied)
            if e.conflict_group:
                other = other_side(e)
                assert not check(other.verifier, applied), (domain, applied)
                flipped = render_reply(dict(other.render), ctx, answer, np.random.default_rng(seed))
                assert check(other.verifier, flipped) and not check(e.verifier, flipped)
            else:
                plain = render_reply({}, ctx, answer, np.random.default_rng(seed))
                assert not check(e.verifier, plain), (domain, plain)


def test_default_reply_meets_no_new_preference_in_any_domain():
    for domain in DOMAINS:
        ctx = frozenset({ANY, domain, *CUES})
        for answer in answers_for(domain):
            text = render_reply({}, ctx, answer, np.random.default_rng(3))
            met = {e.pref_id for e in catalog() if e.trigger in ctx and check(e.verifier, text)}
            # no headers is the one preference an unprompted reply meets
            assert met == {"fmt_no_headers"}, (domain, met)


def _worst_case_contexts(max_cues: int):
    longest = {}
    for p in TEXT_PROBLEMS:
        d = domain_feature(p.domain)
        if d not in longest or len(p.answer.split()) > len(longest[d].split()):
            longest[d] = p.answer
    longest["code"] = max((p.answer for p in CODE_PROBLEMS), key=len)
    for domain, answer in longest.items():
        for k in range(max_cues + 1):
            for cues in itertools.combinations(CUES, k):
                yield frozenset({ANY, domain, *cues}), answer


def test_every_mix_of_options_composes_with_up_to_two_cues():
    """In every realistic request (one domain, up to two cues), every combination of the
    options whose conditions hold renders so that each applied option's verifier passes
    and each opposite side's fails, concise included, on each domain's longest answer."""
    entries = catalog()
    checked = 0
    for ctx, answer in _worst_case_contexts(2):
        values: dict[str, set[str]] = {}
        for e in entries:
            if e.trigger in ctx:
                key, value = side_of(e)
                values.setdefault(key, set()).add(value)
        values["length"] = {"concise", "detailed"}
        keys = sorted(values)
        for combo in itertools.product(*(sorted(values[k]) for k in keys)):
            options = dict(zip(keys, combo, strict=True))
            text = render_reply(options, ctx, answer, np.random.default_rng(checked))
            checked += 1
            for e in entries:
                key, value = side_of(e)
                if options.get(key) == value:
                    assert check(e.verifier, text), (e.pref_id, sorted(ctx), options, text)
                elif key in options and e.conflict_group and e.trigger in ctx:
                    assert not check(e.verifier, text), (e.pref_id, options, text)
            if "code" not in ctx:
                assert final_answer(text) == answer
    assert checked > 500


# --------------------------------------------------------------------------- conflicts


def test_every_group_has_a_probe_and_most_need_no_particular_domain():
    domain_free = 0
    for name, (a, b) in conflict_groups().items():
        probes = [
            (domain, cues)
            for domain in DOMAINS
            for k in range(3)
            for cues in itertools.combinations(CUES, k)
            if {a.trigger, b.trigger} <= {ANY, domain, *cues}
        ]
        assert probes, name
        hold_in = {domain for domain, _ in probes}
        domain_free += hold_in == set(DOMAINS)
        for domain, cues in probes[:3]:
            ctx = context_of(request_header(domain, list(cues)))
            assert a.trigger in ctx and b.trigger in ctx
    assert domain_free >= 12


def test_conflicts_need_a_cue_outside_the_code_domain():
    """With no cue a text-domain request triggers no conflict, so a probe is exactly an
    opening the user built with cues; code-only groups are the exception in code."""
    everything = generate_profiles(1, seed=0, prefs_per_profile=None)[0]
    for domain in DOMAINS:
        pairs = triggered_conflicts(everything, frozenset({ANY, domain}))
        groups = {w.conflict_group for w, _ in pairs}
        assert groups == ({"naming"} if domain == "code" else set()), (domain, groups)


# --------------------------------------------------------------------------- load


def _realistic_contexts():
    """One domain, then 0, 1 or 2 cues, each count weighted alike."""
    for domain in DOMAINS:
        for k in range(3):
            combos = list(itertools.combinations(CUES, k))
            for cues in combos:
                yield frozenset({ANY, domain, *cues}), 1.0 / len(combos)


def test_a_forty_preference_profile_sees_a_handful_per_request():
    profiles = generate_profiles(30, seed=11, prefs_per_profile=40)
    assert all(len(p.preferences) == 40 for p in profiles)
    total = weight = 0.0
    worst = 0
    for profile in profiles:
        for ctx, w in _realistic_contexts():
            n = sum(trigger_of(p) in ctx for p in profile.preferences)
            total += n * w
            weight += w
            worst = max(worst, n)
    mean = total / weight
    print(f"preferences holding per request, 40-preference profile: mean {mean:.2f}, max {worst}")
    assert 5.0 <= mean <= 10.0
    assert worst < 20


# --------------------------------------------------------------------------- code


def test_code_reply_of_the_right_answer_passes_and_a_wrong_one_fails():
    params_right = ScriptedAgentParams(p_correct=(1.0,) * 5)
    params_wrong = ScriptedAgentParams(p_correct=(0.0,) * 5)
    for problem in CODE_PROBLEMS[::9]:
        opening = Message("user", f"{request_header('code')}\n\n{problem.question}")
        right = scripted_reply([opening], np.random.default_rng(0), params_right, BANK)
        wrong = scripted_reply([opening], np.random.default_rng(0), params_wrong, BANK)
        assert "```python\n" in right.content
        assert grade_code(problem, right.content).passed, right.content
        result = grade_code(problem, wrong.content)
        assert not result.passed and result.reason == "failed", (result, wrong.content)


def test_wrong_code_fails_and_edited_solutions_pass_on_every_task():
    ctx = frozenset({ANY, "code"})
    options = {"docstring": "on", "main_guard": "on", "naming": "camel", "length": "concise"}
    for problem in CODE_PROBLEMS:
        stub = wrong_code(problem)
        assert stub.startswith("def ") and grade_code(problem, stub).reason == "failed"
        reply = render_reply(options, ctx, problem.answer, np.random.default_rng(0))
        assert grade_code(problem, reply).passed, reply
        for key in ("code_docstring", "code_main_guard", "code_camel", "verb_concise"):
            assert check(entry(key).verifier, reply), (key, reply)
        assert not check(entry("code_snake").verifier, reply)


def test_naming_shows_without_touching_the_solution():
    problem = CODE_PROBLEMS[3]
    for style, pid, other in (
        ("snake", "code_snake", "code_camel"),
        ("camel", "code_camel", "code_snake"),
    ):
        blocks = code_blocks({"naming": style}, problem.answer)
        assert blocks[0] == "```python\n" + problem.answer.strip("\n") + "\n```"
        reply = "\n\n".join(blocks)
        assert check(entry(pid).verifier, reply) and not check(entry(other).verifier, reply)
    assert with_docstrings("def f(x):\n    return x\n").count('"""') == 2
    assert with_docstrings("def f(:\n") == "def f(:\n"  # broken code is left alone


@pytest.mark.parametrize(
    "e", [e for e in catalog() if e.trigger == "code"], ids=lambda e: e.pref_id
)
def test_a_note_makes_the_agent_comply_on_code_tasks(e):
    problem = CODE_PROBLEMS[1]
    opening = Message("user", f"{request_header('code')}\n\n{problem.question}")
    note = Message("system", f"You are a helpful assistant.\nUser preferences:\n- {e.note}")
    params = ScriptedAgentParams()
    hits = sum(
        check(
            e.verifier,
            scripted_reply([note, opening], np.random.default_rng(s), params, BANK).content,
        )
        for s in range(100)
    )
    assert hits >= 90, hits


def test_shipped_tasks_are_all_present():
    assert len(CODE_PROBLEMS) == len(load_code_tasks("test")) + len(load_code_tasks("train"))
