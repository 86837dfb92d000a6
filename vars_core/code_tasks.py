"""The code domain: small Python tasks with unit tests, and grading a reply against them.

A reply's code runs in a fresh ``python -I`` subprocess in a temporary directory, with stdin
closed, a scrubbed environment, a wall-clock timeout (the whole process group is killed), a
CPU-time limit, an address-space limit and a cap on written file size. The untrusted code is
never imported or executed in the calling process. This contains accidents (infinite loops,
memory bombs, stray ``exit()`` calls, chatty output); it is not a security boundary against
code written to escape it.
"""

from __future__ import annotations

import math
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Literal

import msgspec

from vars_core.types import Problem

CODE_DOMAIN = "code"
CODE_DIR = Path(__file__).parent / "data" / "problems" / CODE_DOMAIN

Reason = Literal["passed", "failed", "timeout", "memory", "syntax", "no code"]


class CodeTask(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One shipped task: ``tests`` is a snippet of asserts that call ``entry_point``."""

    problem_id: str
    prompt: str
    entry_point: str
    tests: str
    reference_solution: str
    difficulty: int = 1


class CodeResult(msgspec.Struct, frozen=True):
    passed: bool
    reason: Reason
    detail: str = ""


# --------------------------------------------------------------------------- tasks


@cache
def load_code_tasks(split: str = "test") -> tuple[CodeTask, ...]:
    path = CODE_DIR / f"{split}.json"
    try:
        return tuple(msgspec.json.decode(path.read_bytes(), type=list[CodeTask]))
    except msgspec.ValidationError as err:
        raise ValueError(f"{path}: {err}") from err


def code_problems(split: str, tasks: list[CodeTask] | tuple[CodeTask, ...]) -> list[Problem]:
    """Tasks -> Problems: the prompt is the question, the reference solution the answer."""
    return [
        Problem(
            problem_id=f"{CODE_DOMAIN}/{split}/{t.problem_id}",
            domain=CODE_DOMAIN,
            question=t.prompt,
            answer=t.reference_solution,
            difficulty=t.difficulty,
        )
        for t in tasks
    ]


def task_for(problem: Problem) -> CodeTask:
    """The shipped task behind a code Problem (by id, else by its prompt)."""
    parts = problem.problem_id.split("/")
    splits = [parts[1]] if len(parts) == 3 and parts[0] == CODE_DOMAIN else []
    for split in [*splits, "test", "train"]:
        if not (CODE_DIR / f"{split}.json").is_file():
            continue
        for task in load_code_tasks(split):
            if f"{CODE_DOMAIN}/{split}/{task.problem_id}" == problem.problem_id:
                return task
            if task.prompt.strip() == problem.question.strip():
                return task
    raise KeyError(f"no shipped code task for problem {problem.problem_id!r}")


# --------------------------------------------------------------------------- replies

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "python3", "py", "py3"}
_CODE_START = re.compile(r"^(?:def |async def |class |@|import \w|from [\w.]+ import )")
_LABELLED_START = re.compile(
    r"^((?:[^`\n]{0,40}?:[ \t]+)?)(?:def |async def |class |@|import \w|from [\w.]+ import )"
)


def extract_code(reply: str, entry_point: str | None = None) -> str | None:
    """The reply's code: the last ```python block, else the last untagged block that defines
    a function, else a bare ``def`` written in the prose. Given ``entry_point``, code that
    defines it wins over code that does not, since replies often add a usage example."""
    blocks = [(m.group(1).lower(), m.group(2).strip("\n")) for m in _FENCE.finditer(reply)]
    python = [code for tag, code in blocks if tag in _PYTHON_TAGS]
    untagged = [code for tag, code in blocks if not tag and re.search(r"(?m)^\s*def ", code)]
    bare = _bare_code(_FENCE.sub("", reply))
    groups = (python, untagged, [bare] if bare else [])
    if entry_point:
        for group in groups:
            defining = [c for c in group if _defines(c, entry_point)]
            if defining:
                return defining[-1]
    return next((group[-1] for group in groups if group), None)


def _defines(code: str, name: str) -> bool:
    return re.search(rf"(?m)^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code) is not None


def _bare_code(prose: str) -> str | None:
    """Unfenced code: from a top-level def/class/import (a short label such as "Answer: "
    may precede it), through indented, blank and further top-level code lines, up to the
    first line of prose; the first such run that defines a function."""
    lines = prose.splitlines()
    for start, line in enumerate(lines):
        label = _LABELLED_START.match(line)
        if label is None:
            continue
        code = [line[label.end(1) :]]
        for following in lines[start + 1 :]:
            if following.strip() and following[0] not in " \t" and not _is_code(following):
                break
            code.append(following)
        text = "\n".join(code).strip("\n")
        if re.search(r"(?m)^(?:async )?def ", text):
            return text
    return None


def _is_code(line: str) -> bool:
    if _CODE_START.match(line):
        return True
    # a top-level assignment or call such as `CACHE = {}` or `main()`, not a sentence
    return bool(re.match(r"^[A-Za-z_][\w.]*\s*(=|\()", line)) and not line.rstrip().endswith(".")


# --------------------------------------------------------------------------- running

# Exit codes of the harness below; anything else is a crash.
_EXIT_FAILED, _EXIT_SYNTAX, _EXIT_MEMORY, _EXIT_OUTPUT = 1, 2, 3, 4
_OUTPUT_LIMIT = 8 * 1024 * 1024  # bytes any file the child writes may reach (RLIMIT_FSIZE)
_DETAIL_CHARS = 2000

# Runs inside the child. The candidate and the tests share one namespace, as if the tests
# were appended to the candidate; `__name__` is not "__main__" so a demo block stays idle.
_HARNESS = r"""
import errno, linecache, os, socket, sys

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while grading")

socket.socket = socket.create_connection = socket.getaddrinfo = _no_network

nonce = sys.argv[1]
sys.argv = ["candidate.py"]
out = sys.stdout

def report(message):
    sys.stderr.write("\n" + message[-2000:] + "\n")
    sys.stderr.flush()

try:
    with open("candidate.py", encoding="utf-8") as f:
        code = compile(f.read(), "candidate.py", "exec")
except SyntaxError as err:
    report(f"line {err.lineno}: {err.msg}")
    sys.exit(2)
except MemoryError:
    sys.exit(3)
with open("tests.py", encoding="utf-8") as f:
    tests = compile(f.read(), "tests.py", "exec")

def failing_line(tb):
    where = ""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in ("tests.py", "candidate.py"):
            name = tb.tb_frame.f_code.co_filename
            where = f"{name}:{tb.tb_lineno}: {linecache.getline(name, tb.tb_lineno).strip()}"
        tb = tb.tb_next
    return where

namespace = {"__name__": "candidate", "__builtins__": __builtins__}
try:
    exec(code, namespace)
    exec(tests, namespace)
except MemoryError:
    sys.exit(3)
except BaseException as err:
    if isinstance(err, OSError) and err.errno == errno.EFBIG:
        os._exit(4)  # past the output cap: even the report would not fit
    if isinstance(err, SystemExit):
        message = f"exit({err.code!r}) called"
    else:
        message = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    where = failing_line(err.__traceback__)
    report(f"{where} -> {message}" if where else message)
    sys.exit(1)
out.write("\n" + nonce + "\n")
out.flush()
"""


def _limits(memory_mb: int, cpu_s: int) -> None:
    """preexec_fn: resource limits of the child, set after fork and before exec. It imports
    nothing: an import lock held by another thread at fork time would never be released."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_OUTPUT_LIMIT, _OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Last: once the address space is capped, even the fork's own allocations may fail.
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_tests(code: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 256) -> CodeResult:
    """Run ``code`` and then the ``tests`` snippet in a fresh, limited subprocess."""
    if not code or not code.strip():
        return CodeResult(False, "no code", "the reply holds no code")
    nonce = secrets.token_hex(16)  # a stray os._exit(0) must not read as a pass
    cpu_s = max(1, math.ceil(timeout_s)) + 1  # CPU time backs the wall clock up
    with tempfile.TemporaryDirectory(prefix="vars-code-") as tmp:
        work = Path(tmp)
        (work / "candidate.py").write_text(code, encoding="utf-8")
        (work / "tests.py").write_text(tests, encoding="utf-8")
        (work / "_harness.py").write_text(_HARNESS, encoding="utf-8")
        stdout_path, stderr_path = work / "stdout.txt", work / "stderr.txt"
        # Output goes to files, not pipes: a print loop must not fill the caller's memory.
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "_harness.py", nonce],
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_child_env(),  # no API keys or proxies of the caller reach the code
                start_new_session=True,  # its own process group, to kill children too
                preexec_fn=lambda: _limits(memory_mb, cpu_s),
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc.pid)  # also reaps whatever the code left running
            proc.wait()
        stdout, stderr = _tail(stdout_path), _tail(stderr_path)
    return _classify(proc.returncode, timed_out, timeout_s, memory_mb, nonce, stdout, stderr)


def _child_env() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "HOME": "/nonexistent"}
    env["OMP_NUM_THREADS"] = "1"  # numpy imports stay inside the address-space limit
    return env


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, limit: int = 16_384) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - limit))
        return f.read().decode("utf-8", errors="replace")


def _classify(
    code: int,
    timed_out: bool,
    timeout_s: float,
    memory_mb: int,
    nonce: str,
    stdout: str,
    stderr: str,
) -> CodeResult:
    message = stderr.strip()[-_DETAIL_CHARS:]
    if timed_out or code == -signal.SIGXCPU:
        return CodeResult(False, "timeout", f"no result within {timeout_s:g} s")
    if code == 0 and stdout.rstrip().endswith(nonce):
        return CodeResult(True, "passed", "all tests passed")
    if code == _EXIT_SYNTAX:
        return CodeResult(False, "syntax", message.splitlines()[-1] if message else "SyntaxError")
    if code in (_EXIT_MEMORY, -signal.SIGKILL):  # SIGKILL unasked: the kernel's OOM killer
        return CodeResult(False, "memory", f"exceeded the {memory_mb} MB memory limit")
    if code == -signal.SIGSEGV:  # a C stack overflow, e.g. recursion past a raised limit
        return CodeResult(False, "memory", "crashed with a segmentation fault")
    if code in (_EXIT_OUTPUT, -signal.SIGXFSZ):
        return CodeResult(False, "failed", "wrote more output than allowed")
    if code == _EXIT_FAILED:
        return CodeResult(False, "failed", message.splitlines()[-1] if message else "a test failed")
    if code == 0:
        return CodeResult(False, "failed", "the code exited before the tests ran")
    return CodeResult(False, "failed", f"the process ended with status {code}: {message}")


def grade_code(problem: Problem, reply: str, timeout_s: float = 5.0) -> CodeResult:
    """Task success of a code session: the reply's code against the task's tests."""
    task = task_for(problem)
    code = extract_code(reply, task.entry_point)
    if code is None:
        return CodeResult(False, "no code", "the reply holds no Python code")
    return run_tests(code, task.tests, timeout_s=timeout_s)
