"""The code domain: shipped tasks, code extraction from replies, and the limited test run."""

from __future__ import annotations

import os
import time

import pytest

from vars_core.code_tasks import (
    CodeResult,
    extract_code,
    grade_code,
    load_code_tasks,
    run_tests,
    task_for,
)
from vars_core.problems import ProblemBank, known_domains, load_problems

TASKS = [t for split in ("test", "train") for t in load_code_tasks(split)]
SQUARE_TESTS = "assert square(3) == 9\nassert square(-2) == 4\n"


def test_shipped_tasks_are_many_and_varied():
    tasks = load_code_tasks("test")
    assert len(tasks) >= 24
    assert len({t.problem_id for t in TASKS}) == len(TASKS)
    assert {t.difficulty for t in tasks} == {1, 2, 3}
    for t in TASKS:
        assert (
            f"def {t.entry_point}(" in t.prompt and f"def {t.entry_point}(" in t.reference_solution
        )
        assert t.entry_point in t.tests and "assert" in t.tests


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.problem_id)
def test_reference_passes_and_a_stub_fails(task):
    assert run_tests(task.reference_solution, task.tests) == CodeResult(
        True, "passed", "all tests passed"
    )
    stub = f"def {task.entry_point}(*args, **kwargs):\n    return None\n"
    result = run_tests(stub, task.tests)
    assert not result.passed and result.reason == "failed", result


def test_wrong_solution_fails_naming_the_assert():
    result = run_tests("def square(x):\n    return x * 2\n", SQUARE_TESTS)
    assert result.reason == "failed" and not result.passed
    assert "square(3) == 9" in result.detail and "AssertionError" in result.detail


def test_exceptions_and_exits_fail():
    assert run_tests("def square(x):\n    return 1 / 0\n", SQUARE_TESTS).reason == "failed"
    assert "NameError" in run_tests("def cube(x):\n    return x\n", SQUARE_TESTS).detail
    for escape in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "exit()"):
        result = run_tests(escape, SQUARE_TESTS)
        assert result.reason == "failed", (escape, result)


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_tests(
        "def square(x):\n    while True:\n        pass\n", SQUARE_TESTS, timeout_s=1.0
    )
    assert result.reason == "timeout" and not result.passed
    assert time.monotonic() - start < 2.5


def test_child_processes_are_killed_with_the_group(tmp_path):
    marker = tmp_path / "late"
    late = f"import time; time.sleep(2); open({str(marker)!r}, 'w')"
    code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {late!r}])\nwhile True:\n    pass\n"
    assert run_tests(code, "", timeout_s=0.5).reason == "timeout"
    time.sleep(2.5)
    assert not marker.exists()


@pytest.mark.parametrize(
    "bomb",
    ["x = bytearray(10**10)", "xs = []\nwhile True:\n    xs.append('a' * 10**6)"],
)
def test_memory_bomb_is_stopped(bomb):
    result = run_tests(bomb, SQUARE_TESTS, timeout_s=5.0, memory_mb=128)
    assert not result.passed and result.reason in ("memory", "failed"), result
    assert os.getpid()  # the caller is alive and well


def test_syntax_error():
    result = run_tests("def square(x)\n    return x * x\n", SQUARE_TESTS)
    assert result.reason == "syntax" and "line 1" in result.detail


def test_no_code():
    assert run_tests("   ", SQUARE_TESTS).reason == "no code"


def test_network_and_stdin_are_closed():
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9))\n"
    result = run_tests(code, "")
    assert result.reason == "failed" and "network" in result.detail
    assert run_tests("import sys\nassert sys.stdin.read() == ''\n", "").passed


def test_runaway_output_is_capped():
    result = run_tests("while True:\n    print('x' * 10000)\n", "", timeout_s=10)
    assert result.reason == "failed" and "output" in result.detail


def test_main_block_does_not_run():
    code = "def square(x):\n    return x * x\n\nif __name__ == '__main__':\n    input()\n"
    assert run_tests(code, SQUARE_TESTS).passed


# --------------------------------------------------------------------------- extraction


def test_extract_last_python_block():
    reply = "First try:\n```python\ndef f():\n    return 1\n```\nBetter:\n```py\ndef f():\n    return 2\n```\nDone."
    assert extract_code(reply) == "def f():\n    return 2"


def test_extract_prefers_the_block_defining_the_entry_point():
    reply = "```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(3))\n```"
    assert extract_code(reply, "f") == "def f(x):\n    return x"
    assert extract_code(reply) == "print(f(3))"


def test_extract_untagged_block_and_bare_def():
    assert extract_code("Here:\n```\ndef g():\n    pass\n```") == "def g():\n    pass"
    bare = (
        "Sure! Here it is:\n\nimport math\n\ndef g(x):\n    return math.sqrt(x)\n\nThis uses sqrt."
    )
    assert extract_code(bare) == "import math\n\ndef g(x):\n    return math.sqrt(x)"
    assert extract_code("No code here, sorry.") is None
    assert extract_code("```text\njust words\n```") is None


def test_extract_labelled_bare_def_after_a_placeholder_block():
    reply = (
        "Sketch:\n\n```python\nresult = solve(data)\n```\n\n"
        "Final answer: def f(x):\n    return x + 1\n\n\nWould you like another example?"
    )
    assert extract_code(reply, "f") == "def f(x):\n    return x + 1"
    assert extract_code(reply) == "result = solve(data)"


def test_extract_unclosed_fence():
    assert extract_code("```python\ndef h():\n    return 3\n") == "def h():\n    return 3"


# --------------------------------------------------------------------------- the domain


def test_code_is_a_known_domain_that_loads():
    assert "code" in known_domains()
    problems = load_problems(["code"])
    assert len(problems) == len(load_code_tasks("test"))
    assert all(p.domain == "code" and p.problem_id.startswith("code/test/") for p in problems)
    assert all(1 <= p.difficulty <= 3 for p in problems)
    train = load_problems(["code"], "train")
    assert train and train[0].problem_id.startswith("code/train/")
    assert load_problems(known_domains())  # every domain, code included, loads together


def test_grade_code_with_prose_around_a_fenced_block():
    problem = load_problems(["code"])[0]
    task = task_for(problem)
    reply = (
        f"Here is a solution.\n\n```python\n{task.reference_solution}```\n\n"
        f"Example:\n```python\nprint({task.entry_point}('a b'))\n```\nHope this helps!"
    )
    assert grade_code(problem, reply).passed
    wrong = f"Try this:\n```python\ndef {task.entry_point}(s):\n    return s\n```"
    assert grade_code(problem, wrong).reason == "failed"
    assert grade_code(problem, "I cannot help with that.").reason == "no code"


def test_scripted_bank_looks_up_code_tasks():
    problems = load_problems(["code"])
    bank = ProblemBank(load_problems(known_domains()))
    for p in problems:
        found = bank.lookup(f"I'm working on a coding task.\n\n{p.question}")
        assert found is not None and found.problem_id == p.problem_id
        assert task_for(found).reference_solution == found.answer
