"""Bad input, generated: campaign specs, profile files, gateway request bodies, and the raw
replies of the extractor, judge and simulated-user models. Each gets a result or a clear
error of its documented type naming what is wrong (or a counted fallback), never another
exception; and junk on every stage queue of a real worker pool goes to the dead-letter
list while a campaign beside it completes, with no worker lost.

The examples are derandomized: the same ones every run, so CI never meets a new one.
``VARS_FUZZ_SCALE=20`` runs twenty times as many, freshly random, for a deeper search by
hand; ``VARS_FUZZ_REPORT=out.json`` writes how many inputs each test tried and what
became of them (the figures of docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import string
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from queues.events import StageTask, encode_event
from scheduler.profile_import import ProfileImportError, import_msc_bytes
from scheduler.profiles import ProfileFileError, load_profile_file
from scheduler.spec import CampaignSpec, SpecError, parse_spec
from tests.test_llm_extractor import CannedLLM
from vars_core.json_repair import RepairError, parse_object
from vars_core.judge import LABELS, parse_judge_reply
from vars_core.llm_extractor import LLMExtractor, ReplyError, parse_reply
from vars_core.llm_judge import LLMJudge
from vars_core.llm_user import LLMUser, read_reply
from vars_core.llm_user import ReplyError as UserReplyError
from vars_core.methods import METHODS
from vars_core.problems import known_domains
from vars_core.runner import lane_user_id, session_id_for
from vars_core.scripted.profiles import generate_profiles
from vars_core.scripted.user import ScriptedUserParams, opening_message, simulate_turn
from vars_core.store.state import check_user_id
from vars_core.types import Message, Problem, Profile, SimulatorTurn

SCALE = max(1, int(os.environ.get("VARS_FUZZ_SCALE", "1")))

# test name -> outcome -> inputs (shrinking's replays included); see VARS_FUZZ_REPORT.
TALLY: defaultdict[str, Counter[str]] = defaultdict(Counter)


def tally(test: str, outcome: str) -> None:
    TALLY[test][outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def _write_tally():
    yield
    path = os.environ.get("VARS_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps(TALLY, indent=2, sort_keys=True) + "\n")


def fuzz(examples: int) -> settings:
    """The fixed profile: a bounded number of derandomized examples, no deadline (the
    machine is shared), no example database (nothing written into the checkout)."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- values

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def mostly(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's plausible values most of the time, any JSON value otherwise."""
    return st.one_of(value, value, value, json_values)


def deep(opener: str, closer: str = "") -> st.SearchStrategy[str]:
    """Nesting past any recursion limit (the decoders recurse), closed or cut off."""
    depth = st.sampled_from([3, 900, 2000, 6000]) | st.integers(1, 6000)
    return depth.map(lambda n: opener * n + closer * (n if closer else 0))


@st.composite
def mutated(
    draw, base: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]], changes: int = 4
) -> dict[str, Any]:
    """``base`` (valid) with up to ``changes`` fields dropped, given another value, or added."""
    data = dict(base)
    names = [*fields, "nope"]
    for field in draw(st.lists(st.sampled_from(names), max_size=changes, unique=True)):
        if field in data and draw(st.booleans()):
            del data[field]
        else:
            data[field] = draw(fields.get(field, json_values))
    return data


# --------------------------------------------------------------------------- campaign specs

SPEC_FIELDS = list(CampaignSpec.__struct_fields__)
BASE_SPEC: dict[str, Any] = {
    "name": "fuzz",
    "methods": ["vanilla", "rag"],
    "profiles": 2,
    "sessions": 2,
    "max_turns": 3,
    "datasets": ["mmlu"],
    "seed": 0,
}


def toml_value(value: Any) -> str:
    """A TOML literal (inline tables and arrays; None, which TOML lacks, as an empty table)."""
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in data.items())


field_values = st.one_of(
    json_values,
    st.sampled_from(list(METHODS)).map(lambda m: [m]),
    st.lists(st.sampled_from([*METHODS, "nope", ""]), max_size=4),
    st.lists(st.sampled_from([*known_domains(), "imagenet", ""]), max_size=3),
    st.integers(-3, 3),
    st.sampled_from(["keyword", "llm", "LLM", "", "../x", "a b", "a\u3000b", "x" * 65, "x" * 300]),
)
backend_tables = st.dictionaries(
    st.sampled_from(["agent", "simulator", "judge", "extractor", "embedder", "reranker", "painter"]),
    st.dictionaries(
        st.sampled_from(["kind", "base_url", "model", "api_key_env", "timeout_s", "max_tokens", "pooling", "path", "nope"]),
        field_values,
        max_size=3,
    )
    | json_values,
    max_size=3,
)


spec_dicts = mutated(BASE_SPEC, {**dict.fromkeys([*SPEC_FIELDS, "Name"], field_values), "backends": backend_tables})


def names_the_problem(message: str) -> bool:
    """A spec error says where: a field in backticks, an override, or the TOML position."""
    return bool(re.search(r"`[^`]+`", message)) or message.startswith("--set ") or "not valid TOML" in message


def assert_runnable(spec: CampaignSpec) -> None:
    """What the spec accepted can be launched: every lane's user and session ids are valid
    and its events fit on the wire."""
    if isinstance(spec.profiles, int):
        profile_ids = [p.profile_id for p in generate_profiles(min(spec.profiles, 2), spec.seed)]
    else:
        profile_ids = [p.profile_id for p in load_profile_file(spec.profiles)]
    campaign_id = f"{spec.name}-20250101-000000-abcd"
    for method in spec.methods:
        for profile_id in profile_ids:
            user_id = check_user_id(lane_user_id(campaign_id, method, profile_id))
            encode_event(StageTask(session_id_for(user_id, spec.sessions), spec.max_turns, "generate", "campaign"))


def check_spec(test: str, text: str, overrides: list[str] | None = None) -> None:
    try:
        spec = parse_spec(text, "fuzz.toml", None, overrides)
    except SpecError as exc:
        assert names_the_problem(str(exc)), str(exc)
        tally(test, "SpecError")
    else:
        assert_runnable(spec)
        tally(test, "accepted, runnable")


@fuzz(300)
@given(spec_dicts)
@example({**BASE_SPEC, "name": "x" * 65})  # too long for a lane's user id
@example({**BASE_SPEC, "name": "a\u3000b"})  # whitespace the old check let through
def test_fuzzed_spec_fields_give_a_spec_error_naming_the_field(data):
    check_spec("spec fields", toml_document(data))


VALID_SPEC = toml_document({**BASE_SPEC, "backends": {"agent": {"kind": "openai", "base_url": "http://h:1/v1"}}})


@fuzz(150)
@given(st.integers(0, len(VALID_SPEC)), st.text(max_size=30))
def test_truncated_or_spliced_spec_files_give_a_spec_error(cut, tail):
    check_spec("spec truncated", VALID_SPEC[:cut] + tail)


@fuzz(150)
@given(
    st.text(max_size=200)
    | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
    | deep("[").map(lambda s: f"name = {s}")
    | deep("{a = ").map(lambda s: f"methods = {s}")
)
@example("methods = " + "[" * 3000 + "]" * 3000)  # RecursionError in tomllib
def test_arbitrary_text_as_a_spec_gives_a_spec_error(text):
    check_spec("spec text", text)


overrides = st.lists(
    st.builds(
        lambda key, sep, value: f"{key}{sep}{value}",
        st.sampled_from([*SPEC_FIELDS, "backends.agent.base_url", "backends.agent", "backends.nope.x", "name.x", "", ".", "a..b"])
        | st.text(max_size=12),
        st.sampled_from(["=", "", " = ", "=="]),
        st.text(max_size=20)
        | st.sampled_from(["15", "0", "-1", "true", '"x"', "[1, 2]", "{a = 1}", "1979-05-27", "[" * 3000]),
    )
    | st.sampled_from(["sessions=3", "max_turns = 2", "parallelism=1", "backends.agent.model=m", 'name="x"', "seed=-5", "reward=llm"]),
    max_size=3,
)


@fuzz(200)
@given(overrides)
def test_fuzzed_overrides_give_a_spec_error_naming_them(items):
    check_spec("spec --set", VALID_SPEC, items)


# --------------------------------------------------------------------------- profile files

PROBLEM = Problem("p-add", "math-500", "What is $2+2$?", "4")
GOOD_PROFILE = msgspec.to_builtins(generate_profiles(1, 0)[0])
TEXTS = st.text(max_size=30) | st.sampled_from(["answering any request", "writing python code", "x" * 300])
preference_like = st.fixed_dictionaries(
    {
        "pref_id": mostly(st.sampled_from(["a", "b", "", " "]) | st.text(max_size=8)),
        "category": mostly(st.text(max_size=8)),
        "condition": mostly(TEXTS),
        "action": mostly(TEXTS),
    },
    optional={
        "conflict_group": mostly(st.sampled_from(["bullets", "length"]) | st.text(max_size=6) | st.none()),
        "priority_context": mostly(
            st.lists(st.sampled_from(["tie_break", "cue:quick question", ""]) | st.text(max_size=12), max_size=3)
        ),
        "verifier": mostly(
            st.fixed_dictionaries(
                {"kind": mostly(st.sampled_from(["regex", "not_regex", "max_words", "min_words", "vibes"]))},
                optional={
                    "pattern": mostly(st.sampled_from(["(", "[a-", "^- ", "(?i)bullet", "a{2,1}", "\\"]) | st.text(max_size=12)),
                    "limit": mostly(st.integers(-5, 500)),
                },
            )
            | st.none()
        ),
    },
)
profile_like = st.fixed_dictionaries(
    {
        "profile_id": mostly(st.sampled_from(["p1", "p 2", "p{3}", "a:b", "t/u", "", "x" * 65]) | st.text(max_size=70)),
        "persona": mostly(st.text(max_size=20)),
        "preferences": mostly(st.lists(preference_like, max_size=3)),
    }
)
good_profile_mutated = mutated(
    GOOD_PROFILE,
    {
        "profile_id": profile_like.map(lambda p: p["profile_id"]),
        "persona": mostly(st.text(max_size=20)),
        "preferences": st.lists(preference_like, max_size=3).map(lambda extra: GOOD_PROFILE["preferences"][:3] + extra),
    },
    changes=2,
)
vars_profile_files = st.one_of(
    st.one_of(
        json_values,
        st.lists(profile_like, max_size=3),
        st.lists(good_profile_mutated, min_size=1, max_size=2),
        st.lists(good_profile_mutated, min_size=1, max_size=2),
        st.lists(st.just(GOOD_PROFILE) | profile_like, min_size=1, max_size=3),
    ).map(lambda data: json.dumps(data).encode()),
    deep("[").map(str.encode),
)
BAD_REGEX = json.dumps(
    [{"profile_id": "p", "persona": "", "preferences": [
        {"pref_id": "a", "category": "c", "condition": "writing code", "action": "use x",
         "verifier": {"kind": "regex", "pattern": "("}}]}]
).encode()
SPACED_ID = json.dumps([{**GOOD_PROFILE, "profile_id": "p 2"}]).encode()


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-profiles")


def write_profile_file(directory: Path, content: bytes) -> Path:
    path = directory / f"p{abs(hash(content))}.json"
    path.write_bytes(content)
    return path


def assert_profile_runs(profile: Profile) -> None:
    """What loads can run: its id makes valid lane ids, and the scripted user opens a
    session with it and rates a reply by its verifiers."""
    check_user_id(lane_user_id("c-20250101-000000-abcd", "rag_vector", profile.profile_id))
    rng = np.random.default_rng(0)
    opening, _ = opening_message(profile, PROBLEM, rng, ScriptedUserParams())
    history = [Message("user", opening, 1), Message("assistant", "- a reply\n\nwith `code` and $x$.", 1)]
    simulate_turn(profile, PROBLEM, opening, history, 2, 4, rng, ScriptedUserParams())


@fuzz(300)
@given(vars_profile_files, st.integers(0, 400))
@example(BAD_REGEX, 400)  # re.error in the simulate stage, after launch
@example(SPACED_ID, 400)  # a lane user id with a space: ValueError at launch
def test_fuzzed_vars_profile_files_load_or_give_a_profile_file_error(profile_dir, raw, cut):
    for content in (raw, raw[:cut]):
        path = write_profile_file(profile_dir, content)
        try:
            profiles = load_profile_file(path)
        except ProfileFileError as exc:
            assert str(path) in str(exc)
            tally("profile file", "ProfileFileError")
            continue
        for profile in profiles:
            assert_profile_runs(profile)
        tally("profile file", "loaded, runnable")


@fuzz(150)
@given(vars_profile_files)
@example(b"[]")
def test_a_spec_naming_a_bad_profile_file_is_a_spec_error_naming_profiles(profile_dir, raw):
    path = write_profile_file(profile_dir, raw)
    try:
        spec = parse_spec(toml_document({**BASE_SPEC, "profiles": str(path)}), "fuzz.toml")
    except SpecError as exc:
        assert "`profiles`" in str(exc), str(exc)
        tally("spec with a profile file", "SpecError naming `profiles`")
    else:
        assert_runnable(spec)
        tally("spec with a profile file", "accepted, runnable")


MSC_ITEM = {"persona": "a tutor", "preferences": ["Use bullet points. Enforce if the answer lists items."], "categories": ["format"]}
msc_items = mutated(
    MSC_ITEM,
    {
        "persona": mostly(st.text(max_size=20)),
        "preferences": mostly(
            st.lists(
                st.text(max_size=60) | st.sampled_from(["Use bullet points. Enforce if the answer lists items.", "(Enforce if: )"]),
                max_size=4,
            )
        ),
        "categories": st.lists(st.text(max_size=8) | st.none(), max_size=4)
        | st.lists(st.text(max_size=8) | st.none(), max_size=4)
        | st.dictionaries(
            st.text(max_size=4) | st.integers(0, 5).map(str) | st.sampled_from(["²", "١", "10"]),
            st.text(max_size=6) | json_values,
            max_size=3,
        )
        | json_values,
        "profile_id": mostly(st.sampled_from(["p1", "p 1", "a{b}", "x" * 65]) | st.text(max_size=70)),
        "id": mostly(st.text(max_size=10) | st.integers()),
    },
)
msc_files = st.one_of(
    st.one_of(
        json_values,
        st.lists(msc_items | json_values, max_size=3),
        st.lists(msc_items, min_size=1, max_size=3),
        st.lists(msc_items, min_size=1, max_size=3),
    ).map(lambda data: json.dumps(data).encode()),
    deep("[").map(str.encode),
)


@fuzz(300)
@given(msc_files, st.integers(0, 300))
@example(json.dumps([{"preferences": ["Use bullets."], "categories": {"²": "x"}}]).encode(), 300)  # int("²")
@example(json.dumps([{"preferences": ["Use bullets."], "id": "user 1"}]).encode(), 300)  # id with a space
def test_fuzzed_multisessioncollab_files_import_or_give_a_profile_import_error(raw, cut):
    for content in (raw, raw[:cut]):
        try:
            result = import_msc_bytes(content, "msc.json")
        except ProfileImportError as exc:
            assert str(exc).startswith("msc.json"), str(exc)
            tally("MultiSessionCollab import", "ProfileImportError")
            continue
        for profile in result.profiles:
            assert_profile_runs(profile)
        tally("MultiSessionCollab import", "imported, runnable")


# --------------------------------------------------------------------------- model replies

JUDGE_KEYS = ["label", "confidence", "Label", "reason"]
EXTRACTOR_KEYS = ["preferences", "condition", "action", "confidence", "prefs"]
USER_KEYS = ["preferences_satisfied", "enforce", "draft_answer", "terminate", "response", "p1", "user"]
VALID_JUDGE = st.fixed_dictionaries(
    {"label": mostly(st.sampled_from(sorted(LABELS))), "confidence": mostly(st.floats(0, 1) | st.floats(-1, 2))}
)
VALID_EXTRACTION = st.fixed_dictionaries(
    {
        "preferences": mostly(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "condition": mostly(TEXTS),
                        "action": mostly(TEXTS | st.sampled_from(["use type hints", "answer in bullet points"])),
                        "confidence": mostly(st.floats(0, 1)),
                    }
                ),
                max_size=3,
            )
        )
    }
)
VALID_USER_TURN = st.fixed_dictionaries(
    {
        "preferences_satisfied": mostly(st.dictionaries(st.sampled_from(["p1", "p2", "fmt_bullets", "zz"]), mostly(st.booleans()), max_size=3)),
        "enforce": mostly(st.booleans()),
        "draft_answer": mostly(st.text(max_size=10)),
        "terminate": mostly(st.booleans()),
        "response": mostly(st.text(max_size=40) | st.just("Thanks! TERMINATE")),
    }
)
DEEP_ARRAY = "[" * 3000
DEEP_OBJECT = '{"a": ' * 3000


def near_schema(keys: list[str]) -> st.SearchStrategy[str]:
    """Objects with the schema's keys (and others) holding values of any type, as JSON."""
    value = json_values | st.sampled_from([*sorted(LABELS), 0.9, True, "true", [{"condition": "x", "action": "y"}]])
    obj = st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), value, max_size=5)
    nested = st.dictionaries(st.sampled_from(keys), obj | st.lists(obj, max_size=3), max_size=2)
    return (obj | nested).map(lambda o: json.dumps(o, ensure_ascii=False))


def mangled(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """What small models do to JSON: cut it off, fence it, wrap it in prose, requote it."""
    return st.builds(
        lambda text, cut, how, prose: {
            "cut": text[:cut],
            "fence": f"```json\n{text}\n```",
            "open_fence": f"```\n{text[:cut]}",
            "prose": f"{prose} {text} {prose}",
            "single": text.replace('"', "'"),
            "bare": text.replace('"', ""),
            "python": text.replace("true", "True").replace("null", "None"),
        }[how],
        base,
        st.integers(0, 200),
        st.sampled_from(["cut", "fence", "open_fence", "prose", "single", "bare", "python"]),
        st.text(max_size=20),
    )


def model_replies(keys: list[str], valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[str]:
    """Replies of every kind, from right to junk: the schema's shape (strict and as small
    models break it), the schema's keys with values of any type, and anything."""
    return st.one_of(
        valid.map(json.dumps),
        valid.map(json.dumps),
        valid.map(json.dumps),
        mangled(valid.map(json.dumps)),
        mangled(valid.map(json.dumps)),
        mangled(valid.map(json.dumps)),
        st.text(max_size=300),
        st.text(alphabet=string.printable + "{}[]\"':,", max_size=300),
        json_values.map(json.dumps),
        near_schema(keys),
        mangled(near_schema(keys)),
        deep("["),
        deep('{"a": '),
        deep("{", "}"),
        deep("[", "]").map(lambda s: '{"label": ' + s + ', "confidence": 0.9}'),
    )


@fuzz(400)
@given(model_replies(JUDGE_KEYS, VALID_JUDGE))
@example('{"label": [], "confidence": 0.9}')  # an unhashable label: TypeError
@example(DEEP_ARRAY)  # RecursionError in json.loads
def test_judge_replies_parse_or_are_neutral_and_unparsed(text):
    result = parse_judge_reply(text)
    assert result.label in LABELS and 0.0 <= result.confidence <= 1.0
    if not result.parsed:
        assert (result.label, result.apply) == ("neutral", False)
    tally("judge reply", "parsed" if result.parsed else "neutral, unparsed")


@fuzz(400)
@given(model_replies(EXTRACTOR_KEYS, VALID_EXTRACTION))
@example(DEEP_OBJECT)
def test_extractor_replies_parse_or_raise_reply_error(text):
    try:
        parse_reply(text)
    except ReplyError:
        tally("extractor reply", "ReplyError")
    else:
        tally("extractor reply", "parsed")


@fuzz(400)
@given(model_replies(USER_KEYS, VALID_USER_TURN))
@example(DEEP_ARRAY)
def test_simulator_replies_parse_or_raise_reply_error(text):
    try:
        parse_object(text)
    except RepairError:
        pass
    try:
        read_reply(text, ["p1", "p2"])
    except UserReplyError:
        tally("simulator reply", "ReplyError")
    else:
        tally("simulator reply", "read")


# The components around the parsers: whatever the model says, a result or a counted fallback.

CHAT = [Message("user", "Use bullet points when listing things. What are the primes below 10?", 1)]


@fuzz(150)
@given(model_replies(JUDGE_KEYS, VALID_JUDGE))
def test_the_llm_judge_returns_a_result_and_counts_junk(text):
    judge = LLMJudge(CannedLLM(text))
    result = judge.judge("What is 2+2?", "4", text[:50])
    assert result.label in LABELS
    assert judge.stats["unparsed"] == (0 if result.parsed else 1)
    tally("LLM judge", "judged" if result.parsed else "neutral, counted unparsed")


@fuzz(150)
@given(model_replies(EXTRACTOR_KEYS, VALID_EXTRACTION), model_replies(EXTRACTOR_KEYS, VALID_EXTRACTION))
@example("", DEEP_OBJECT)
def test_the_llm_extractor_returns_preferences_or_counts_a_failure(first, second):
    extractor = LLMExtractor(CannedLLM(first, second))
    prefs = extractor.extract(CHAT)
    stats = extractor.stats
    assert all(0.0 <= p.confidence <= 1.0 for p in prefs)
    assert stats["failures"] + stats["repaired"] <= 1
    if stats["failures"]:
        assert prefs == []
    tally("LLM extractor", "no preferences, counted failure" if stats["failures"] else "extracted")


PROFILE = generate_profiles(1, seed=3)[0]
OPENING, _ = opening_message(PROFILE, PROBLEM, np.random.default_rng(0), ScriptedUserParams())
HISTORY = [Message("user", OPENING, 1), Message("assistant", "2 + 2 = 4.\n\nFinal answer: 4", 1)]


@fuzz(150)
@given(
    model_replies(USER_KEYS + [p.pref_id for p in PROFILE.preferences], VALID_USER_TURN),
    model_replies(USER_KEYS, VALID_USER_TURN),
)
@example("", DEEP_ARRAY)
def test_the_llm_user_takes_a_turn_or_a_counted_scripted_fallback(first, second):
    user = LLMUser(CannedLLM(first, second))
    turn = user(PROFILE, PROBLEM, OPENING, HISTORY, 2, 4, np.random.default_rng(1))
    assert isinstance(turn, SimulatorTurn)
    stats = user.stats
    assert stats["internal_errors"] == 0, "a reply broke the reader instead of being refused"
    assert stats["parsed"] + stats["repaired"] + stats["retried"] + stats["unparsed"] == 1
    tally("LLM simulated user", "scripted fallback, counted" if stats["unparsed"] else "model turn")


# --------------------------------------------------------------------------- gateway bodies


@pytest.fixture(scope="module")
def gateway_client(tmp_path_factory):
    """The real gateway app in-process on its own embedded Redis, with no workers behind
    it: a valid chat body is published and answered 504 after a short wait."""
    from starlette.testclient import TestClient

    from gateway.app import build_app
    from gateway.auth import KeyStore
    from gateway.settings import GatewaySettings
    from scheduler.embedded_redis import EmbeddedRedis
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend

    server = EmbeddedRedis(home=tmp_path_factory.mktemp("fuzz-gateway-home"))
    url = server.start()
    try:
        key, _ = KeyStore(RedisBackend(connect(url))).create(["alice", "bob"], rate_per_s=1e6, burst=1_000_000)
        settings = GatewaySettings(chunk_timeout_s=0.05, turn_wait_s=0.05, key_cache_s=60.0)
        with TestClient(build_app(url, settings), raise_server_exceptions=False) as client:
            yield client, key
    finally:
        server.stop()


message_like = st.fixed_dictionaries(
    {
        "role": mostly(st.sampled_from(["user", "user", "assistant", "system", "developer", "tool", "wizard", ""])),
        "content": mostly(
            st.text(max_size=40)
            | st.none()
            | st.lists(
                st.fixed_dictionaries(
                    {"type": mostly(st.sampled_from(["text", "image_url"])), "text": mostly(st.text(max_size=10))}
                ),
                max_size=2,
            )
        ),
    },
    optional={"name": json_values},
)
CHAT_BODY = {"model": "vars-vanilla", "user": "alice", "messages": [{"role": "user", "content": "What is 2+2?"}]}
CHAT_FIELDS = {
        "model": mostly(st.sampled_from(["vars", "vars-rag_vector", "vars-vanilla", "vars-nope", "gpt-4o", ""])),
        "messages": mostly(st.lists(message_like, max_size=3)),
        "user": mostly(st.sampled_from(["alice", "bob", "carol", "", "x" * 129, "alice "])),
        "stream": mostly(st.booleans()),
        "stream_options": mostly(st.fixed_dictionaries({"include_usage": mostly(st.booleans())})),
        "max_tokens": mostly(st.integers(-2, 2**40)),
        "max_completion_tokens": mostly(st.integers(-2, 100)),
        "temperature": mostly(st.floats(-1, 3, allow_nan=False)),
        "n": mostly(st.integers(0, 3)),
        "tools": json_values,
}
chat_bodies = mutated(CHAT_BODY, CHAT_FIELDS) | mutated(CHAT_BODY, CHAT_FIELDS, changes=1)


def body_bytes(strategy: st.SearchStrategy[Any], field: str) -> st.SearchStrategy[bytes]:
    """Bodies: the endpoint's shape, any JSON, bytes, truncated JSON, nesting past the
    decoder's recursion limit (in a known and in an ignored field), and just over 1 MiB."""
    return st.one_of(
        strategy.map(lambda body: json.dumps(body).encode()),
        strategy.map(lambda body: json.dumps(body).encode()),
        strategy.map(lambda body: json.dumps(body).encode()),
        strategy.map(lambda body: json.dumps(body).encode()),
        json_values.map(lambda body: json.dumps(body).encode()),
        st.binary(max_size=200),
        st.builds(lambda body, cut: json.dumps(body).encode()[:cut], strategy, st.integers(0, 120)),
        deep("[").map(lambda s: f'{{"{field}": {s}'.encode()),
        deep('{"a": ').map(lambda s: f'{{"{field}": "x", "extra": {s}'.encode()),
        deep("[", "]").map(lambda s: f'{{"extra": {s}, "{field}": "x"}}'.encode()),
        st.integers((1 << 20) - 16, (1 << 20) + 64).map(lambda n: b'{"model": "' + b"x" * n + b'"}'),
    )


def check_error(test: str, response, body: bytes) -> None:
    """Never a 500; every refusal in the OpenAI error shape; a 400 for a JSON object names
    the field in ``param``."""
    tally(test, str(response.status_code))
    assert response.status_code != 500, response.text
    assert response.status_code < 600
    if response.status_code < 400:
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    if response.status_code == 400:
        try:
            is_object = isinstance(json.loads(body), dict)
        except (ValueError, RecursionError):
            is_object = False
        if is_object:
            assert error["param"], error


header_values = st.text(alphabet=string.ascii_letters + string.digits + "._:-/ {}%", max_size=20)
DEEP_IGNORED = b'{"model": "vars", "tools": ' + b"[" * 3000 + b"]" * 3000 + b"}"


@fuzz(250)
@given(
    body_bytes(chat_bodies, "messages"),
    st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]),
    st.none() | header_values,
)
@example(DEEP_IGNORED, "application/json", None)  # RecursionError in the decoder: was a 500
def test_fuzzed_chat_bodies_get_a_4xx_naming_the_field_never_a_500(gateway_client, body, content_type, session):
    from gateway.protocol import ChatRequest

    client, key = gateway_client
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type}
    if session is not None:
        headers["X-Session-Id"] = session
    response = client.post("/v1/chat/completions", content=body, headers=headers)
    check_error("gateway chat body", response, body)
    if response.status_code == 504:  # only a valid request gets as far as the pipeline
        msgspec.json.decode(body, type=ChatRequest)


feedback_bodies = mutated(
    {"completion_id": "chatcmpl-abc", "reward": 1.0},
    {
        "completion_id": mostly(st.sampled_from(["chatcmpl-abc", ""]) | st.text(max_size=140)),
        "reward": mostly(st.floats(-2, 2, allow_nan=False)),
        "label": mostly(st.sampled_from([*sorted(LABELS), "great"])),
        "confidence": mostly(st.floats(-1, 2, allow_nan=False)),
    },
)


@fuzz(150)
@given(body_bytes(feedback_bodies, "completion_id"))
@example(b'{"completion_id": "x", "extra": ' + b'{"a": ' * 3000)
def test_fuzzed_feedback_bodies_get_a_4xx_naming_the_field_never_a_500(gateway_client, body):
    client, key = gateway_client
    response = client.post("/v1/feedback", content=body, headers={"Authorization": f"Bearer {key}"})
    check_error("gateway feedback body", response, body)
    assert response.status_code in (400, 404, 413), response.text


path_parts = st.text(max_size=30) | st.sampled_from(["alice", "bob", "ALICE", "alice}", "default/alice", "..", "%2F"])


@fuzz(150)
@given(
    st.sampled_from(["GET memory", "DELETE memory", "DELETE card", "POST sessions/reset", "GET models", "PUT memory"]),
    path_parts,
    path_parts,
    st.none() | header_values,
    st.sampled_from(["", "?include_superseded=true", "?include_superseded=%00", "?x=1"]),
    st.none() | header_values.map(lambda s: f"Bearer {s}") | st.just("Basic x"),
)
def test_fuzzed_memory_paths_and_headers_never_get_a_500(gateway_client, route, user, card, session, query, auth):
    from urllib.parse import quote

    client, key = gateway_client
    method, what = route.split(" ")
    path = {
        "memory": f"/v1/users/{quote(user, safe='')}/memory",
        "card": f"/v1/users/{quote(user, safe='')}/memory/{quote(card, safe='')}",
        "sessions/reset": f"/v1/users/{quote(user, safe='')}/sessions/reset",
        "models": "/v1/models",
    }[what]
    headers = {"Authorization": auth if auth is not None else f"Bearer {key}"}
    if session is not None:
        headers["X-Session-Id"] = session
    response = client.request(method, path + query, headers=headers)
    check_error("gateway memory paths and headers", response, b"")
    if auth is not None:  # no valid key: nothing but a refusal
        assert response.status_code in (401, 404, 405), response.text
    elif what != "models" and user not in ("alice", "bob"):  # not this key's user
        assert response.status_code in (400, 403, 404, 405), response.text


# --------------------------------------------------------------------------- junk on the queues


class Planted:
    """Unpickling it would create a directory: proof that a pickle was never loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**40, 3.5])
    if kind == 2:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.choice(["stage.task", "judge", "live", "campaign", "s1"])
    if kind == 4:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["type", "session_id", "turn", "stage", "lane", "attempt", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def send_junk(app, url: str, queue: str, stage: str, rng: random.Random, planted: Path) -> list[str]:
    """Every kind of bad message onto one stage queue; returns what was sent, one word each."""
    from kombu import Connection

    from queues.topology import EXCHANGE
    from workers.app import broker_url

    other = "judge" if stage != "judge" else "update"
    task = f"vars.{stage}"
    sent = []

    def call(*args, **kwargs):
        app.send_task(task, args=list(args), kwargs=kwargs, queue=queue, serializer="msgspec")

    payload = random_json(rng)
    call(payload if isinstance(payload, dict) else {"junk": payload})
    sent.append("random dict")
    call(rng.choice([42, "text", None, [1, 2], 3.5]))
    sent.append("wrong type")
    call()
    sent.append("no argument")
    call({"a": 1}, {"b": 2})
    sent.append("two arguments")
    call({"a": 1}, extra=True)
    sent.append("keyword argument")
    call(msgspec.to_builtins(StageTask("no-such-session", 1, stage, "campaign")))  # type: ignore[arg-type]
    sent.append("unknown session")
    call(msgspec.to_builtins(StageTask("no-such-session", 1, other, "campaign")))  # type: ignore[arg-type]
    sent.append("wrong stage")
    app.send_task("vars.nosuch", args=[{}], queue=queue, serializer="msgspec")
    sent.append("unknown task")
    app.send_task(task, args=[Planted(planted)], queue=queue, serializer="pickle")
    sent.append("pickle")
    with Connection(broker_url(url)) as conn:
        producer = conn.Producer()
        common = {"exchange": EXCHANGE, "routing_key": queue, "content_encoding": "utf-8"}
        producer.publish(b"{not json", content_type="application/x-msgspec", headers={"task": task, "id": "j1"}, **common)
        sent.append("not JSON")
        producer.publish(b'{"hello": 1}', content_type="application/json", **common)
        sent.append("no task header")
        producer.publish(b"hello", content_type="text/plain", headers={"task": task, "id": "j2"}, **common)
        sent.append("text/plain")
        producer.publish(pickle.dumps({"x": 1}), content_type="application/x-python-serialize",
                         content_encoding="binary", headers={"task": task, "id": "j3"},
                         exchange=EXCHANGE, routing_key=queue)
        sent.append("raw pickle")
    return sent


@pytest.mark.integration
@pytest.mark.slow
def test_junk_on_every_stage_queue_is_dead_lettered_and_a_campaign_beside_it_completes(tmp_path_factory):
    from queues.topology import all_queues
    from scheduler.campaigns import follow, launch
    from tests.pipeline_harness import Pipeline
    from vars_core.engine import Engine
    from workers.tasks import deadletter_key

    home = tmp_path_factory.mktemp("junk-home")
    planted = home / "unpickled"
    pipeline = Pipeline(home, concurrency=1).start()
    try:
        app, store = pipeline.app(), pipeline.store()
        rng = random.Random(9)
        queues = all_queues()
        sent: list[tuple[str, str]] = []
        half = len(queues) // 2
        for queue in queues[:half]:  # before the campaign's first events, and after them
            sent += [(queue.name, kind) for kind in send_junk(app, pipeline.url, queue.name, queue.name.split(".")[1], rng, planted)]
        spec = CampaignSpec(name="junk", methods=["vanilla", "rag_vector"], profiles=1, sessions=2, max_turns=3, datasets=["mmlu"], seed=1)
        plan = launch(app, Engine(), store, spec)
        for queue in queues[half:]:
            sent += [(queue.name, kind) for kind in send_junk(app, pipeline.url, queue.name, queue.name.split(".")[1], rng, planted)]

        records = follow(store, plan.campaign_id, home / "results", poll_s=0.2, timeout_s=300)
        assert sorted(r.status for r in records) == ["done"] * 4
        dead = deadletter_key(store)
        pipeline.wait_for(lambda: store.backend.llen(dead) >= len(sent) and pipeline.queues_empty(), timeout_s=120, what="the junk to be dead-lettered")
        time.sleep(1.0)  # nothing more arrives: exactly one entry per junk message
        entries = [msgspec.json.decode(e) for e in store.backend.lrange(dead)]
        assert len(entries) == len(sent) == 13 * len(queues)
        assert all(e["reason"] for e in entries)
        assert pipeline.alive(), pipeline.logs()
        assert not planted.exists(), "a pickle was unpickled"
        for kind, needle in (("pickle", "untrusted content"), ("not JSON", "cannot be decoded"), ("unknown task", "unknown task"),
                             ("no task header", "not a task message"), ("two arguments", "malformed task call"),
                             ("unknown session", "unknown session"), ("wrong stage", "on the")):
            count = sum(needle in e["reason"] for e in entries)
            assert count >= len(queues), (kind, needle, count)
        tally("junk on the queues", f"{len(sent)} sent, {len(entries)} dead-lettered")
        tally("junk on the queues", f"campaign: {len(records)} of 4 sessions done")
    finally:
        pipeline.stop()
