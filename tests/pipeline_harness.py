"""A real pipeline for integration tests: a dedicated embedded redis-server and one real
Celery worker process per stage, consuming real queues."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from scheduler.embedded_redis import EmbeddedRedis
from scheduler.local import spawn_workers, stop_processes
from vars_core.store import StateStore
from vars_core.store.connect import connect
from vars_core.store.redis_backend import RedisBackend


def run_vars(args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`vars ARGS` in a subprocess on the embedded default under ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["VARS_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "scheduler.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


class Pipeline:
    def __init__(
        self,
        home: Path,
        concurrency: int = 2,
        stage_env: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self.home = home
        self.redis = EmbeddedRedis(home=home)
        self.concurrency = concurrency
        self.stage_env = stage_env  # extra environment of one stage's worker
        self.procs: list = []
        self.url = ""
        self._saved_url: str | None = None

    def start(self) -> Pipeline:
        self.url = self.redis.start()
        # CLI commands run in-process find this Redis; stop() puts the caller's back.
        self._saved_url = os.environ.get("REDIS_URL")
        os.environ["REDIS_URL"] = self.url
        self.procs = spawn_workers(self.url, self.home / "logs", self.concurrency, stage_env=self.stage_env)
        return self

    def stop(self) -> None:
        stop_processes([p.pid for p in self.procs])
        self.redis.stop()
        if self._saved_url is None:
            os.environ.pop("REDIS_URL", None)
        else:
            os.environ["REDIS_URL"] = self._saved_url

    def store(self) -> StateStore:
        return StateStore(RedisBackend(connect(self.url)))

    def client(self) -> redis.Redis:
        return connect(self.url)

    def app(self):
        from workers.app import make_app

        return make_app(self.url)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-4000:]
            for path in sorted((self.home / "logs").glob("*.log"))
        )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def wait_for(self, predicate, timeout_s: float = 240.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.alive(), f"a worker died while waiting for {what}\n{self.logs()}"
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")

    def queues_empty(self) -> bool:
        from queues.topology import all_queues

        client = self.client()
        return all(client.llen(q.name) == 0 for q in all_queues()) and not client.hlen("unacked")
