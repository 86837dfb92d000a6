"""Worker processes on this machine: one per stage, in the foreground (``--local``) or
detached (``vars up`` / ``vars down``, pids under VARS_HOME)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from scheduler.embedded_redis import EmbeddedRedis, process_alive, resolve_redis_url, vars_home
from vars_core.types import STAGES

PIDFILE = "workers.pid"


def worker_command(stage: str, concurrency: int = 2) -> list[str]:
    return [sys.executable, "-m", "scheduler.cli", "worker", "--stage", stage, "--concurrency", str(concurrency)]


def spawn_workers(
    redis_url: str,
    log_dir: Path,
    concurrency: int = 2,
    detach: bool = False,
    stage_env: Callable[[str], dict[str, str]] | None = None,
) -> list[subprocess.Popen]:
    """One worker per stage; ``stage_env(stage)`` adds variables to one worker's
    environment (e.g. its own VARS_METRICS_PORT)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    procs = []
    for stage in STAGES:
        log = (log_dir / f"worker-{stage}.log").open("ab")
        procs.append(
            subprocess.Popen(
                worker_command(stage, concurrency),
                env={**env, **(stage_env(stage) if stage_env else {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,  # a detached worker outlives the shell that started it
            )
        )
    return procs


def stop_processes(pids: list[int], timeout_s: float = 20.0) -> None:
    """SIGTERM (Celery's warm shutdown: finish the task in hand), then SIGKILL stragglers."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:  # reap our own child if it exited, so it does not linger as a zombie
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (`vars down` stopping what `vars up` started)
    return process_alive(pid)


class LocalStack:
    """``--local``: Redis (embedded unless REDIS_URL) and a worker per stage, stopped on exit."""

    def __init__(self, concurrency: int = 2) -> None:
        self.concurrency = concurrency
        self.redis_url = ""
        self._embedded: EmbeddedRedis | None = None
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> LocalStack:
        self.redis_url, self._embedded = resolve_redis_url(local=True)
        self._procs = spawn_workers(self.redis_url, vars_home() / "logs", self.concurrency)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_processes([p.pid for p in self._procs])
        for proc in self._procs:
            proc.wait(timeout=5)
        if self._embedded is not None:
            self._embedded.stop()

    def check_alive(self) -> None:
        # args: python -m scheduler.cli worker --stage STAGE ...
        dead = [p.args[p.args.index("--stage") + 1] for p in self._procs if p.poll() is not None]
        if dead:
            raise RuntimeError(
                f"worker(s) for {', '.join(dead)} exited; see {vars_home() / 'logs'}"
            )


def up(concurrency: int = 2) -> tuple[str, list[int]]:
    home = vars_home()
    pidfile = home / PIDFILE
    running = [pid for pid in _read_pids(pidfile) if _alive(pid)]
    url, _ = resolve_redis_url(local=False)
    if running:
        return url, running
    procs = spawn_workers(url, home / "logs", concurrency, detach=True)
    pids = [p.pid for p in procs]
    pidfile.write_text("\n".join(map(str, pids)) + "\n")
    return url, pids


def down() -> int:
    home = vars_home()
    pidfile = home / PIDFILE
    pids = [pid for pid in _read_pids(pidfile) if _alive(pid)]
    stop_processes(pids)
    pidfile.unlink(missing_ok=True)
    EmbeddedRedis().stop()
    return len(pids)


def _read_pids(pidfile: Path) -> list[int]:
    try:
        return [int(line) for line in pidfile.read_text().split() if line.strip()]
    except (OSError, ValueError):
        return []
