"""Profiles for a campaign: generated from the catalog, or read from a file."""

from __future__ import annotations

from pathlib import Path

import msgspec

from vars_core.scripted.profiles import generate_profiles
from vars_core.types import Profile


class ProfileFileError(ValueError):
    pass


def load_profile_file(path: str | Path) -> list[Profile]:
    path = Path(path)
    try:
        profiles = msgspec.json.decode(path.read_bytes(), type=list[Profile])
    except OSError as exc:
        raise ProfileFileError(f"cannot read profile file {path}: {exc.strerror}") from None
    except msgspec.ValidationError as exc:
        raise ProfileFileError(f"profile file {path} is not a list of VARS profiles: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProfileFileError(f"profile file {path} is not JSON: {exc}") from None
    if not profiles:
        raise ProfileFileError(f"profile file {path} holds no profiles")
    ids = [p.profile_id for p in profiles]
    if len(set(ids)) != len(ids):
        raise ProfileFileError(f"profile file {path} repeats a profile_id")
    return profiles


def campaign_profiles(profiles: int | str, seed: int) -> list[Profile]:
    if isinstance(profiles, int):
        return generate_profiles(profiles, seed)
    return load_profile_file(profiles)
