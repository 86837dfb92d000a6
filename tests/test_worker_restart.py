"""`vars worker` starts its Celery worker again, in place, when it stopped on an error it
could not recover from, and never when it was asked to stop (workers/restart.py). The
fault that needs it runs in tests/test_faults.py (a Redis restart while workers hold
tasks)."""

from __future__ import annotations

import os
import sys
import time

import pytest
from celery import signals

from workers import restart


class FakeWorker:
    def __init__(self, exitcode):
        self.exitcode = exitcode


@pytest.fixture
def calls(monkeypatch):
    seen: list = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: seen.append(("exec", exe, argv)))
    monkeypatch.setattr(time, "sleep", lambda s: seen.append(("sleep", s)))
    monkeypatch.delenv(restart.RESTARTS_ENV, raising=False)
    return seen


ARGV = ["-m", "scheduler.cli", "worker", "--stage", "judge"]


def _run(exitcode, signal_name=None):
    def start():
        worker = FakeWorker(None)
        signals.worker_init.send(sender=worker)
        if signal_name:
            signals.worker_shutting_down.send(sender="judge@h", sig=signal_name, how="Warm", exitcode=0)
        worker.exitcode = exitcode

    restart.run_restarting(start, ARGV, "judge@h")


def test_a_worker_that_crashed_execs_itself_again(calls, monkeypatch):
    _run(exitcode=1)
    assert calls == [("sleep", 1.0), ("exec", sys.executable, [sys.executable, *ARGV])]
    assert os.environ[restart.RESTARTS_ENV] == "1"
    # A second crash soon after waits longer, up to a minute.
    calls.clear()
    _run(exitcode=1)
    assert calls[0] == ("sleep", 2.0) and os.environ[restart.RESTARTS_ENV] == "2"
    assert [restart.restart_delay(n) for n in (1, 2, 3, 7, 8, 20)] == [1, 2, 4, 60, 60, 60]


@pytest.mark.parametrize(("exitcode", "signal_name"), [(0, None), (1, "SIGTERM"), (1, "SIGINT"), (None, None)])
def test_a_worker_asked_to_stop_stays_stopped(calls, exitcode, signal_name):
    _run(exitcode, signal_name)
    assert calls == []
    # Its receivers are gone: a later worker's signals do not reach this run's.
    assert not [r for r in signals.worker_init.receivers if "on_init" in repr(r)]
