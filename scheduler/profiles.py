"""Profiles for a campaign: generated from the catalog, or read from a file."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from vars_core.scripted.profiles import generate_profiles
from vars_core.types import Profile

# A profile id becomes part of its lanes' user and session ids
# (``{campaign}:{method}:{profile}:s{n}``): no whitespace, braces, ':' or '/'.
PROFILE_ID = re.compile(r"^[^\s{}:/]{1,64}$")


class ProfileFileError(ValueError):
    pass


def profile_id_problem(profile_id: str) -> str | None:
    """Why ``profile_id`` cannot name a campaign lane, else None."""
    if PROFILE_ID.match(profile_id):
        return None
    return f"profile_id {profile_id!r} must be 1-64 characters without whitespace, braces, ':' or '/'"


def load_profile_file(path: str | Path) -> list[Profile]:
    """The profiles of a VARS profile file, checked so that a campaign can run them: ids
    that make valid lane ids, pref ids unique per profile, verifier patterns that compile."""
    path = Path(path)
    try:
        profiles = msgspec.json.decode(path.read_bytes(), type=list[Profile])
    except OSError as exc:
        raise ProfileFileError(f"cannot read profile file {path}: {exc.strerror}") from None
    except msgspec.ValidationError as exc:
        raise ProfileFileError(f"profile file {path} is not a list of VARS profiles: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProfileFileError(f"profile file {path} is not JSON: {exc}") from None
    if not profiles:
        raise ProfileFileError(f"profile file {path} holds no profiles")
    ids = [p.profile_id for p in profiles]
    if len(set(ids)) != len(ids):
        raise ProfileFileError(f"profile file {path} repeats a profile_id")
    for i, profile in enumerate(profiles):
        problem = _profile_problem(profile)
        if problem:
            raise ProfileFileError(f"profile file {path}: profile {i}: {problem}")
    return profiles


def _profile_problem(profile: Profile) -> str | None:
    problem = profile_id_problem(profile.profile_id)
    if problem:
        return problem
    seen: set[str] = set()
    for j, pref in enumerate(profile.preferences):
        where = f"preferences[{j}]"
        if not pref.pref_id.strip():
            return f"{where}.pref_id is empty"
        if pref.pref_id in seen:
            return f"{where}.pref_id {pref.pref_id!r} is repeated"
        seen.add(pref.pref_id)
        verifier = pref.verifier
        if verifier is not None and verifier.kind in ("regex", "not_regex"):
            try:
                re.compile(verifier.pattern)
            except (re.error, RecursionError, OverflowError) as exc:
                return f"{where}.verifier.pattern {verifier.pattern!r} is not a regular expression: {exc}"
    return None


def campaign_profiles(profiles: int | str, seed: int) -> list[Profile]:
    if isinstance(profiles, int):
        return generate_profiles(profiles, seed)
    return load_profile_file(profiles)
