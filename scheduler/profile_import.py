"""Import user profiles written in the MultiSessionCollab format.

That format is a JSON list of ``{persona, preferences: [str], categories}``. Each
preference is one natural-language string that usually carries its own rule for when it
applies ("Use bullet points. Enforce if the answer lists three or more items."). Each
string becomes one ``Preference``: the condition comes from the "Enforce if" rule, the
action is the rest, both cleaned so that the note form every memory method reads
("When {condition}, {action}.") holds them exactly. A string that still cannot be written
as a note is reported and skipped; a file of another shape is an error naming where.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from scheduler.profiles import profile_id_problem
from vars_core.notes import format_note, parse_notes
from vars_core.types import Preference, Profile

DEFAULT_CATEGORY = "general"
DEFAULT_CONDITION = "answering any request"  # a preference with no rule always applies

# "(Enforce if: ...)" anywhere, or "Enforce if ..." running to the end of the string.
_ENFORCE_PAREN = re.compile(
    r"\(\s*enforce\s+(?:only\s+if|only\s+when|if|whenever|when)\b\s*:?\s*([^()]*)\)", re.I
)
_ENFORCE_TAIL = re.compile(
    r"\benforce\s+(?:only\s+if|only\s+when|if|whenever|when)\b\s*:?(.*)$", re.I | re.S
)
_LEADING_IF = re.compile(r"^(?:only\s+if|only\s+when|if|whenever|when)\s+")
_LEADING_USER = re.compile(r"^(?:a|an|the)?\s*user\b")
_ABBREVIATIONS = (
    (re.compile(r"\be\.g\.", re.I), "for example"),
    (re.compile(r"\bi\.e\.", re.I), "that is"),
    (re.compile(r"\betc\.", re.I), "etc"),
    (re.compile(r"\bvs\.", re.I), "vs"),
)


class ProfileImportError(ValueError):
    """The input is not in the MultiSessionCollab shape; the message says where."""


class ImportResult(NamedTuple):
    profiles: list[Profile]
    warnings: list[str]  # skipped preferences and lenient fixes, one line each


# --------------------------------------------------------------------------- strings


def split_preference(text: str) -> tuple[str, str]:
    """(condition, action) of one preference string, cleaned for the note form."""
    text = " ".join(text.split())
    m = _ENFORCE_PAREN.search(text)
    if m:
        raw_condition = m.group(1)
        raw_action = (text[: m.start()] + " " + text[m.end() :]).strip()
    elif m := _ENFORCE_TAIL.search(text):
        raw_condition, raw_action = m.group(1), text[: m.start()]
    else:
        raw_condition, raw_action = "", text
    condition = clean_condition(raw_condition) if raw_condition.strip() else DEFAULT_CONDITION
    return condition, clean_action(raw_action)


def clean_condition(text: str) -> str:
    """Lowercase, no commas or periods, no leading "if"/"when"; "user" made "the user"."""
    text = re.sub(r"[,.]", "", text.lower())
    text = re.sub(r"[;:!?()\[\]]", " ", text)  # the note pattern stops a condition at these
    text = " ".join(text.split())
    while m := _LEADING_IF.match(text):
        text = text[m.end() :]
    return _LEADING_USER.sub("the user", text)


def clean_action(text: str) -> str:
    """No trailing period, no inner periods, first letter lowercased (acronyms kept)."""
    text = text.strip().rstrip(" .!;:,-\u2013\u2014(").strip()
    text = re.sub(r"^please\s+", "", text, flags=re.I)  # the note parser drops a "please"
    for pattern, replacement in _ABBREVIATIONS:
        text = pattern.sub(replacement, text)
    text = re.sub(r"(?<=\d)\.(?=\d)", " point ", text)
    sentences = re.split(r"\.\s+", text)  # sentence breaks inside become semicolons
    text = "; ".join(_lower_first(s) for s in sentences)
    return " ".join(text.replace(".", " ").split())


def _lower_first(text: str) -> str:
    """"Show ..." -> "show ...", but "SQL ..." and "LaTeX ..." keep their capitals."""
    word = text.split(" ", 1)[0]
    if not word or any(c.isupper() for c in word[1:]):
        return text
    return text[0].lower() + text[1:]


def note_problem(condition: str, action: str) -> str | None:
    """Why (condition, action) would not survive format_note/parse_notes, else None."""
    if parse_notes(format_note(condition, action)) == [(condition, action)]:
        return None
    if not 3 <= len(condition) <= 160:
        return f"condition {condition!r} must be 3 to 160 characters"
    if not 3 <= len(action) <= 240:
        return f"action {action!r} must be 3 to 240 characters"
    if re.search(r"[?!]", action):
        return f"action {action!r} holds '?' or '!'"
    return f"note {format_note(condition, action)!r} does not read back as written"


# --------------------------------------------------------------------------- shape


def _categories(item: dict[str, Any], n: int, where: str, warnings: list[str]) -> list[str]:
    """One category per preference; lists, {index or text: category} and one string."""
    raw = item.get("categories")
    prefs: list[str] = item["preferences"]
    if raw is None:
        return [DEFAULT_CATEGORY] * n
    if isinstance(raw, str):
        return [raw.strip() or DEFAULT_CATEGORY] * n
    if isinstance(raw, dict):
        out = [DEFAULT_CATEGORY] * n
        for key, value in raw.items():
            if not isinstance(value, str):
                raise ProfileImportError(f"{where}: categories[{key!r}] is {_kind(value)}, not a string")
            digits = str(key).isascii() and str(key).isdigit()  # "²" is a digit int() refuses
            index = int(key) if digits else prefs.index(key) if key in prefs else -1
            if not 0 <= index < n:
                warnings.append(f"{where}: categories key {key!r} names no preference; ignored")
                continue
            out[index] = value.strip() or DEFAULT_CATEGORY
        return out
    if not isinstance(raw, list):
        raise ProfileImportError(
            f"{where}: categories is {_kind(raw)}, not a list, object or string"
        )
    for j, value in enumerate(raw):
        if value is not None and not isinstance(value, str):
            raise ProfileImportError(f"{where}: categories[{j}] is {_kind(value)}, not a string")
    out = [(v or "").strip() or DEFAULT_CATEGORY for v in raw[:n]]
    if len(raw) != n:
        warnings.append(
            f"{where}: {len(raw)} categories for {n} preferences; "
            + ("padded with 'general'" if len(raw) < n else "extra ones dropped")
        )
    return out + [DEFAULT_CATEGORY] * (n - len(out))


def _profile_id(item: dict[str, Any], index: int, where: str) -> str:
    for key in ("profile_id", "id"):
        if key in item:
            value = item[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
                raise ProfileImportError(f"{where}: {key} is not a non-empty string or integer")
            problem = profile_id_problem(str(value).strip())
            if problem:
                raise ProfileImportError(f"{where}: {key}: {problem}")
            return str(value).strip()
    return f"msc-{index:03d}"


def _profile(item: Any, index: int, where: str, warnings: list[str]) -> Profile:
    if not isinstance(item, dict):
        raise ProfileImportError(f"{where} is {_kind(item)}, not an object")
    if "preferences" not in item:
        raise ProfileImportError(f'{where} lacks "preferences"')
    prefs = item["preferences"]
    if not isinstance(prefs, list):
        raise ProfileImportError(f"{where}: preferences is {_kind(prefs)}, not a list of strings")
    for j, text in enumerate(prefs):
        if not isinstance(text, str):
            raise ProfileImportError(
                f"{where}: preferences is not a list of strings (element {j} is {_kind(text)})"
            )
    persona = item.get("persona", "")
    if not isinstance(persona, str):
        raise ProfileImportError(f"{where}: persona is {_kind(persona)}, not a string")
    profile_id = _profile_id(item, index, where)
    where = f"{where} ({profile_id})"
    categories = _categories(item, len(prefs), where, warnings)
    kept: list[Preference] = []
    for j, (text, category) in enumerate(zip(prefs, categories, strict=True)):
        condition, action = split_preference(text)
        problem = note_problem(condition, action)
        if problem:
            warnings.append(f"{where} preference {j}: skipped: {problem}")
            continue
        kept.append(
            Preference(
                pref_id=f"{profile_id}-{j:02d}",
                category=category,
                condition=condition,
                action=action,
            )
        )
    if not kept:
        warnings.append(f"{where}: no usable preferences")
    return Profile(profile_id=profile_id, persona=persona.strip(), preferences=kept)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


# --------------------------------------------------------------------------- entry points


def import_msc(data: Any, source: str = "input") -> ImportResult:
    """Profiles from decoded MultiSessionCollab JSON; item i is ``msc-{i:03d}`` unless it
    carries a ``profile_id`` or ``id``."""
    if not isinstance(data, list):
        raise ProfileImportError(f"{source} is {_kind(data)}, not a list of profiles")
    if not data:
        raise ProfileImportError(f"{source} holds no profiles")
    warnings: list[str] = []
    profiles = [_profile(item, i, f"{source}: item {i}", warnings) for i, item in enumerate(data)]
    seen: dict[str, int] = {}
    for i, p in enumerate(profiles):
        if p.profile_id in seen:
            raise ProfileImportError(
                f"{source}: item {i} repeats profile id {p.profile_id!r} of item {seen[p.profile_id]}"
            )
        seen[p.profile_id] = i
    return ImportResult(profiles, warnings)


def import_msc_bytes(raw: bytes, source: str = "input") -> ImportResult:
    try:
        data = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProfileImportError(f"{source} is not JSON: {exc}") from None
    return import_msc(data, source)


def import_msc_file(path: str | Path) -> ImportResult:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileImportError(f"cannot read {path}: {exc.strerror}") from None
    return import_msc_bytes(raw, str(path))


def encode_profiles(profiles: list[Profile]) -> bytes:
    """The file form ``scheduler.profiles.load_profile_file`` reads, pretty-printed."""
    return msgspec.json.format(msgspec.json.encode(profiles), indent=2) + b"\n"
