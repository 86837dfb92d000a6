"""A worker that dies of an error it cannot recover from starts again, in place.

Celery's consumer rides out a lost broker connection, but kombu's Redis transport has
paths that end the worker instead. One is met whenever Redis goes away while a worker
holds tasks (acks_late): closing the broken channel tries to requeue their messages on
a transport already torn down, and the AttributeError that follows is an "Unrecoverable
error" to Celery, which stops the worker (tests/test_faults.py, a Redis restart). Under
docker-compose a restart policy brings the worker back; under `vars up` or `--local`
nothing does, and its stage would stop for good. So ``vars worker`` runs the Celery
worker through ``run_restarting``: when it ends without having been asked to (no
SIGTERM, SIGINT or SIGQUIT, and a failure exit code), the process replaces itself with a
fresh one running the same command: the same pid (pidfiles and supervisors stay
right), models loaded again, connections made afresh (retried until Redis answers).
What the dead worker held stays unacked until kombu's visibility timeout; the sweeper
republishes the stalled lanes' next events before then.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from celery import signals

RESTARTS_ENV = "VARS_WORKER_RESTARTS"  # restarts in a row, carried across the exec
BACKOFF_CAP_S = 60.0
STABLE_AFTER_S = 60.0  # a run at least this long starts the backoff over


def restart_delay(restarts: int) -> float:
    """Seconds before the ``restarts``-th restart in a row: 1, 2, 4, ... up to a minute."""
    return min(BACKOFF_CAP_S, 2.0 ** max(0, restarts - 1))


def run_restarting(start: Callable[[], None], argv: list[str], name: str = "worker") -> None:
    """Run the Celery worker (``start`` returns when it has stopped). If it stopped on its
    own with a failure, exec ``python argv`` in this process; else return."""
    asked: list[str] = []
    workers: list[Any] = []

    def on_shutting_down(sig: str = "", **_: Any) -> None:
        asked.append(sig)

    def on_init(sender: Any = None, **_: Any) -> None:
        workers.append(sender)

    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    signals.worker_init.connect(on_init, weak=False)
    began = time.monotonic()
    try:
        start()
    finally:
        signals.worker_shutting_down.disconnect(on_shutting_down)
        signals.worker_init.disconnect(on_init)
    exitcode = getattr(workers[-1], "exitcode", None) if workers else None
    if asked or not exitcode:
        return  # stopped by a signal or a remote shutdown, or never started
    ran = time.monotonic() - began
    restarts = 1 if ran >= STABLE_AFTER_S else int(os.environ.get(RESTARTS_ENV) or 0) + 1
    delay = restart_delay(restarts)
    print(
        f"{name}: the worker stopped on an error it could not recover from (exit code {exitcode}, "
        f"after {ran:.0f} s); starting it again in {delay:g} s",
        file=sys.stderr, flush=True,
    )
    time.sleep(delay)
    os.environ[RESTARTS_ENV] = str(restarts)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *argv])


__all__ = ["RESTARTS_ENV", "restart_delay", "run_restarting"]
