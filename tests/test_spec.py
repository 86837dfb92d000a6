"""Campaign specs: every mistake is named by its field."""

from __future__ import annotations

import pytest

from scheduler.spec import SpecError, load_spec, parse_spec

GOOD = """
name = "pilot"
methods = ["vanilla", "rag_vector"]
profiles = 3
sessions = 2
max_turns = 6
datasets = ["math-500"]
seed = 5
"""


def test_a_good_spec_parses():
    spec = parse_spec(GOOD)
    assert spec.methods == ["vanilla", "rag_vector"] and spec.profiles == 3 and spec.seed == 5


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("sessions = 2", 'sessions = "two"'), "`sessions`"),
        (("sessions = 2", "sessions = 0"), "`sessions`"),
        (("max_turns = 6", "max_turns = -1"), "`max_turns`"),
        (('methods = ["vanilla", "rag_vector"]', 'methods = ["vanilla", "rag_vektor"]'), "`methods`"),
        (('methods = ["vanilla", "rag_vector"]', "methods = []"), "`methods`"),
        (('datasets = ["math-500"]', 'datasets = ["gsm8k"]'), "`datasets`"),
        (("profiles = 3", "profiles = 0"), "`profiles`"),
        (("profiles = 3", 'profiles = "missing.json"'), "`profiles`"),
        (('name = "pilot"', 'name = "has space"'), "`name`"),
        (("seed = 5", "sead = 5"), "`sead`"),
        (("sessions = 2\n", ""), "`sessions`"),
    ],
)
def test_bad_fields_are_named(change, field):
    old, new = change
    with pytest.raises(SpecError) as info:
        parse_spec(GOOD.replace(old, new))
    assert field in str(info.value)


def test_not_toml_and_unreadable_files(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        parse_spec("name = ")
    with pytest.raises(SpecError, match="cannot read campaign spec"):
        load_spec(tmp_path / "nope.toml")


def test_profile_path_is_relative_to_the_spec(tmp_path):
    from scheduler.profile_import import encode_profiles
    from vars_core.scripted.profiles import generate_profiles

    # The file is read at validation (a bad one is an error naming `profiles`): a real one.
    (tmp_path / "profiles.json").write_bytes(encode_profiles(generate_profiles(1, 0)))
    (tmp_path / "spec.toml").write_text(GOOD.replace("profiles = 3", 'profiles = "profiles.json"'))
    assert load_spec(tmp_path / "spec.toml").profiles == str(tmp_path / "profiles.json")
