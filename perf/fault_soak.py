"""Soak the fault tests: run tests/test_faults.py again and again and tabulate what was
done to the pipeline and what it lost.

Each round is one pytest run of the file (a fresh Redis and workers, a reference
campaign, then every fault's campaign), with ``VARS_FAULT_LOG`` set so each passing
fault test appends what it did (tests/test_faults.py). A fault test fails when anything
was lost, done twice or not recovered, so "lost or duplicated" counts failed runs.

    python -m perf.fault_soak --runs 5                # every fault, 5 rounds (~2.5 min each on 2 cores)
    python -m perf.fault_soak --runs 20 -k kill9      # one fault, 20 rounds
    python -m perf.fault_soak --runs 5 --write        # and put the table in docs/reliability.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from perf import markdown

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- reliability.faults.soak: start -->", "<!-- reliability.faults.soak: end -->"

# test id -> the fault name its log lines carry
TESTS = {
    "test_kill9_each_stage_worker_mid_campaign": "kill9",
    "test_redis_crash_and_restart_from_aof": "redis_restart",
    "test_workers_consume_again_after_losing_redis": "redis_disconnect",
}
ORDER = ["kill9", "redis_restart", "redis_disconnect", "agent_timeout", "agent_http_500", "agent_junk", "agent_down"]
WHAT = {
    "kill9": "kill -9 of each stage's worker in turn, restarted",
    "redis_restart": "Redis SIGKILL, then a clean restart, 2 s away each, from the AOF",
    "redis_disconnect": "CLIENT KILL of every worker connection, 3 times",
    "agent_timeout": "agent server hangs past the 1 s timeout for 4 s",
    "agent_http_500": "agent server answers 500 until a session has failed",
    "agent_junk": "agent server answers 200 with junk for 4 s",
    "agent_down": "agent server gone (connection refused) for 15 s",
}


def fault_of(test_id: str) -> str:
    name = test_id.split("::")[-1]
    match = re.match(r"test_agent_server_faults\[(\w+)\]", name)
    return f"agent_{match.group(1)}" if match else TESTS.get(name, name)


def injected(entry: dict) -> int:
    for key in ("kills", "restarts"):
        if key in entry:
            return len(entry[key])
    return 1


def in_flight(entry: dict) -> int:
    """Messages a worker held (taken, not acked) when the fault hit."""
    if "lost_in_flight" in entry:
        return entry["lost_in_flight"]
    return sum(item.get("held", 0) for key in ("kills", "restarts") for item in entry.get(key, []))


def table(entries: list[dict], tried: Counter, failed: Counter) -> str:
    rows = defaultdict(list)
    for entry in entries:
        rows[entry["fault"]].append(entry)
    lines = [
        "| fault | what was done, per run | runs passed / tried | faults injected | sessions "
        "| messages held at the fault | events republished by the sweeper "
        "| redelivered after the visibility timeout | sessions failed, then retried | lost or duplicated |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for fault in [f for f in ORDER if f in tried or f in rows] + sorted(set(rows) - set(ORDER)):
        done = rows.get(fault, [])
        lines.append(
            f"| {fault} | {WHAT.get(fault, '')} | {len(done)} / {tried[fault]} "
            f"| {sum(injected(e) for e in done)} | {sum(e['sessions'] for e in done)} "
            f"| {sum(in_flight(e) for e in done)} | {sum(e.get('republished', 0) for e in done)} "
            f"| {sum(e.get('redelivered', 0) for e in done)} | {sum(e.get('failed_then_retried', 0) for e in done)} "
            f"| {'none' if not failed[fault] else f'{failed[fault]} failed run(s)'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.fault_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of the fault tests (default 3)")
    parser.add_argument("-k", default="", help="pytest -k expression: only these faults")
    parser.add_argument("--log", default="", help="JSON lines file for the tests' fault log (default: a temporary file)")
    parser.add_argument("--write", action="store_true", help=f"put the table in {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    log = Path(args.log) if args.log else Path(tempfile.mkstemp(prefix="fault-soak-", suffix=".jsonl")[1])
    log.write_text("")
    tried: Counter = Counter()
    failed: Counter = Counter()
    started = time.monotonic()
    for run in range(1, args.runs + 1):
        cmd = [sys.executable, "-m", "pytest", "tests/test_faults.py", "-q", "-rA", "-p", "no:cacheprovider"]
        if args.k:
            cmd += ["-k", args.k]
        proc = subprocess.run(
            cmd, cwd=ROOT, env={**os.environ, "VARS_FAULT_LOG": str(log)}, capture_output=True, text=True
        )
        outcomes = re.findall(r"^(PASSED|FAILED|ERROR) (tests/test_faults.py::\S+)", proc.stdout, re.M)
        for outcome, test_id in outcomes:
            tried[fault_of(test_id)] += 1
            failed[fault_of(test_id)] += outcome != "PASSED"
        bad = [test_id for outcome, test_id in outcomes if outcome != "PASSED"]
        print(
            f"run {run}/{args.runs}: {len(outcomes) - len(bad)} passed, {len(bad)} failed "
            f"({time.monotonic() - started:.0f} s)" + "".join(f"\n  failed: {t}" for t in bad),
            flush=True,
        )
        if not outcomes:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            return 1
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    text = table(entries, tried, failed)
    print(text)
    print(f"fault log: {log}")
    if args.write:
        stamp = time.strftime("%Y-%m-%d")
        section = (
            f"{START}\nSoak, {args.runs} round(s) of `python -m perf.fault_soak --runs {args.runs}"
            f"{' -k ' + repr(args.k) if args.k else ''}` ({stamp}, {os.cpu_count()} cores):\n\n{text}{END}\n"
        )
        markdown.write_section(DOC, section, START, END)
    return 1 if sum(failed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
