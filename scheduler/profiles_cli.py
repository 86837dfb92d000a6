"""`vars profiles generate` and `vars profiles import`: write a profile file that a
campaign spec's ``profiles = "FILE"`` (``scheduler.profiles.load_profile_file``) reads.

Heavy imports stay inside the handlers so that registering the parser costs nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_profiles_parser(sub: argparse._SubParsersAction) -> None:
    profiles = sub.add_parser("profiles", help="make or import user profile files")
    profiles_sub = profiles.add_subparsers(dest="profiles_command", required=True)

    gen = profiles_sub.add_parser("generate", help="generate N scripted-world profiles")
    gen.add_argument("--n", type=int, required=True, help="number of profiles")
    gen.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    gen.add_argument(
        "--per-profile", type=int, default=None, metavar="K",
        help="catalog preferences per profile (default: 12; 0 = the whole catalog)",
    )
    gen.add_argument("--out", required=True, metavar="FILE", help="profile file to write (JSON)")
    gen.set_defaults(func=cmd_profiles_generate)

    imp = profiles_sub.add_parser(
        "import", help="convert a MultiSessionCollab profile file ({persona, preferences, categories})"
    )
    imp.add_argument("file", help="MultiSessionCollab JSON: a list of profiles")
    imp.add_argument("--out", default=None, metavar="FILE", help="profile file to write (default: stdout)")
    imp.set_defaults(func=cmd_profiles_import)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _write(data: bytes, out: str | None) -> None:
    if out is None:
        sys.stdout.write(data.decode())
        sys.stdout.flush()
    else:
        Path(out).write_bytes(data)


def cmd_profiles_generate(args: argparse.Namespace) -> int:
    from scheduler.profile_import import encode_profiles
    from vars_core.scripted.profiles import DEFAULT_PREFS_PER_PROFILE, generate_profiles

    if args.n < 1:
        return _error(f"--n must be at least 1, got {args.n}")
    per_profile = DEFAULT_PREFS_PER_PROFILE if args.per_profile is None else args.per_profile
    if per_profile < 0:
        return _error(f"--per-profile must be 0 (whole catalog) or more, got {per_profile}")
    profiles = generate_profiles(args.n, args.seed, per_profile or None)
    try:
        _write(encode_profiles(profiles), args.out)
    except OSError as exc:
        return _error(f"cannot write {args.out}: {exc.strerror}")
    print(f"wrote {len(profiles)} profiles to {args.out}")
    return 0


def cmd_profiles_import(args: argparse.Namespace) -> int:
    from scheduler.profile_import import ProfileImportError, encode_profiles, import_msc_file

    try:
        result = import_msc_file(args.file)
    except ProfileImportError as exc:
        return _error(str(exc))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        _write(encode_profiles(result.profiles), args.out)
    except OSError as exc:
        return _error(f"cannot write {args.out}: {exc.strerror}")
    kept = sum(len(p.preferences) for p in result.profiles)
    summary = f"imported {len(result.profiles)} profiles, {kept} preferences"
    # stdout may be the profile file itself, so the summary goes beside it only with --out.
    print(f"{summary} to {args.out}" if args.out else summary, file=sys.stdout if args.out else sys.stderr)
    return 0
