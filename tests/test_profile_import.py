"""`vars profiles import` / `generate`: MultiSessionCollab strings to VARS profiles."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from scheduler.profile_import import (
    DEFAULT_CONDITION,
    ProfileImportError,
    encode_profiles,
    import_msc,
    import_msc_bytes,
    import_msc_file,
    split_preference,
)
from scheduler.profiles import load_profile_file
from scheduler.profiles_cli import add_profiles_parser
from vars_core.notes import format_note, parse_notes
from vars_core.scripted.profiles import generate_profiles

SAMPLE = Path(__file__).parent / "data" / "msc_profiles_sample.json"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vars")
    add_profiles_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# --------------------------------------------------------------------------- the sample


def test_sample_imports_to_expected_conditions_and_actions():
    result = import_msc_file(SAMPLE)
    assert result.warnings == []
    assert [p.profile_id for p in result.profiles] == ["msc-000", "msc-001", "msc-002"]
    assert [len(p.preferences) for p in result.profiles] == [6, 7, 5]
    nurse, engineer, teacher = result.profiles
    assert nurse.persona.startswith("A second-year nursing student")
    by_id = {q.pref_id: q for p in result.profiles for q in p.preferences}
    expected = {
        "msc-000-00": ("format", "the answer lists three or more items", "use bullet points for lists"),
        "msc-000-01": ("verbosity", "the user asks a quick factual question", "i prefer concise answers"),
        "msc-000-02": (
            "domain",
            "the answer mentions a medication dose",
            "spell out drug dosages with their units, for example 5 mg rather than 5",
        ),
        "msc-000-05": ("format", DEFAULT_CONDITION, "avoid emojis in the reply"),
        "msc-001-02": (
            "interaction",
            "the user asks to refactor existing code",
            "explain the change step by step; then show the final code",
        ),
        "msc-001-03": ("code style", "the answer contains a sql query", "SQL keywords should be uppercase"),
        "msc-001-05": (
            "error correction",
            "the user reports an error message a stack trace or a failing test",
            "point out the bug first, then the fix",
        ),
        "msc-002-01": ("verbosity", "explaining a new concept", "use plain language instead of jargon"),
        "msc-002-04": ("math style", "the answer contains equations", "write the math in LaTeX"),
    }
    for pref_id, (category, condition, action) in expected.items():
        q = by_id[pref_id]
        assert (q.category, q.condition, q.action) == (category, condition, action), pref_id
    for q in by_id.values():
        assert q.conflict_group is None and q.priority_context == [] and q.verifier is None
        assert parse_notes(format_note(q.condition, q.action)) == [(q.condition, q.action)]


def test_output_loads_back_with_load_profile_file(tmp_path):
    result = import_msc_file(SAMPLE)
    out = tmp_path / "profiles.json"
    out.write_bytes(encode_profiles(result.profiles))
    assert load_profile_file(out) == result.profiles
    assert out.read_text().startswith("[\n  {")  # pretty-printed


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize(
    "text, condition, action",
    [
        ("Use tables. Enforce if the user compares options.", "the user compares options", "use tables"),
        ("Be brief (enforce when: User is in a hurry.)", "the user is in a hurry", "be brief"),
        ("Be brief. ENFORCE IF: if the user, at work, says so", "the user at work says so", "be brief"),
        ("Please cite sources.", DEFAULT_CONDITION, "cite sources"),
        ("(Enforce if: always) Answer in French", "always", "answer in French"),
        ("Prefer Python 3.11 idioms, i.e. match statements", DEFAULT_CONDITION,
         "prefer Python 3 point 11 idioms, that is match statements"),
    ],
)
def test_split_preference(text, condition, action):
    assert split_preference(text) == (condition, action)


def test_unwritable_preferences_are_reported_and_skipped():
    data = [
        {
            "persona": "p",
            "preferences": [
                "Use bullet points. Enforce if the answer has a list.",
                "Ask me 'ready?' before answering.",
                "Enforce if the user asks.",
                "Keep it short. Enforce if: ok",
            ],
            "categories": ["format", "interaction", "format", "verbosity"],
        }
    ]
    result = import_msc(data)
    assert [q.pref_id for q in result.profiles[0].preferences] == ["msc-000-00"]
    assert len(result.warnings) == 3
    assert all("item 0 (msc-000)" in w and "skipped" in w for w in result.warnings)
    assert [w.split("preference ")[1][0] for w in result.warnings] == ["1", "2", "3"]


def test_given_id_and_lenient_categories():
    data = [
        {"id": "alice", "persona": "a", "preferences": ["Use tables.", "Be brief."], "categories": "format"},
        {"profile_id": 7, "persona": "b", "preferences": ["Use tables.", "Be brief."],
         "categories": {"1": "verbosity"}},
        {"persona": "c", "preferences": ["Use tables.", "Be brief."], "categories": ["format"]},
        {"persona": "d", "preferences": ["Use tables.", "Be brief."]},
    ]
    result = import_msc(data)
    cats = {p.profile_id: [q.category for q in p.preferences] for p in result.profiles}
    assert cats == {
        "alice": ["format", "format"],
        "7": ["general", "verbosity"],
        "msc-002": ["format", "general"],
        "msc-003": ["general", "general"],
    }
    assert result.profiles[0].preferences[0].pref_id == "alice-00"
    (warning,) = result.warnings
    assert "item 2" in warning and "padded with 'general'" in warning


# --------------------------------------------------------------------------- bad shapes


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "is not JSON"),
        (b'{"persona": "x"}', "not a list of profiles"),
        (b"[]", "holds no profiles"),
        (b'[{"persona": "x", "preferences": []}, 3]', "item 1 is int, not an object"),
        (b'[{"persona": "x", "preferences": []}, {"persona": "y"}]', 'item 1 lacks "preferences"'),
        (b'[{"persona": "x", "preferences": "Use tables."}]', "item 0: preferences is a string, not a list"),
        (b'[{"persona": "x", "preferences": ["a b c", 5]}]',
         "item 0: preferences is not a list of strings (element 1 is int)"),
        (b'[{"persona": 1, "preferences": []}]', "item 0: persona is int"),
        (b'[{"persona": "x", "preferences": ["a b c"], "categories": [1]}]', "item 0 (msc-000): categories[0] is int"),
        (b'[{"id": "a", "preferences": []}, {"id": "a", "preferences": []}]',
         "item 1 repeats profile id 'a' of item 0"),
    ],
)
def test_bad_shapes_name_what_and_where(raw, message):
    with pytest.raises(ProfileImportError, match=re.escape(message)):
        import_msc_bytes(raw, "f.json")


# --------------------------------------------------------------------------- generate


def test_generate_is_deterministic_and_loads_back(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert _run(["profiles", "generate", "--n", "3", "--seed", "5", "--out", str(a)]) == 0
    assert _run(["profiles", "generate", "--n", "3", "--seed", "5", "--out", str(b)]) == 0
    assert _run(["profiles", "generate", "--n", "3", "--seed", "6", "--out", str(c)]) == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert load_profile_file(a) == generate_profiles(3, 5)
    assert _run(["profiles", "generate", "--n", "2", "--per-profile", "4", "--out", str(c)]) == 0
    assert [len(p.preferences) for p in load_profile_file(c)] == [4, 4]


# --------------------------------------------------------------------------- CLI


def test_cli_import_to_file_and_stdout(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert _run(["profiles", "import", str(SAMPLE), "--out", str(out)]) == 0
    assert "imported 3 profiles, 18 preferences" in capsys.readouterr().out
    assert load_profile_file(out) == import_msc_file(SAMPLE).profiles

    assert _run(["profiles", "import", str(SAMPLE)]) == 0
    captured = capsys.readouterr()
    assert [p["profile_id"] for p in json.loads(captured.out)] == ["msc-000", "msc-001", "msc-002"]
    assert "imported 3 profiles" in captured.err


def test_cli_import_warns_on_stderr(tmp_path, capsys):
    src = tmp_path / "msc.json"
    src.write_text(json.dumps([{"persona": "p", "preferences": ["Use tables.", "Really?"]}]))
    assert _run(["profiles", "import", str(src), "--out", str(tmp_path / "o.json")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {src}: item 0 (msc-000) preference 1: skipped" in err


def test_cli_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"persona": "x"}]')
    assert _run(["profiles", "import", str(bad)]) == 2
    assert 'item 0 lacks "preferences"' in capsys.readouterr().err
    assert _run(["profiles", "import", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert _run(["profiles", "import", str(SAMPLE), "--out", str(tmp_path / "no" / "o.json")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert _run(["profiles", "generate", "--n", "0", "--out", str(tmp_path / "g.json")]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
    assert _run(["profiles", "generate", "--n", "1", "--per-profile", "-1", "--out", str(tmp_path / "g.json")]) == 2
