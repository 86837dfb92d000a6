"""A real gateway for integration tests: `vars gateway` in a subprocess on a free port,
on a test pipeline's Redis, and API keys made in its store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gateway.auth import ApiKey, KeyStore
from tests.pipeline_harness import Pipeline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    def __init__(self, pipeline: Pipeline, *args: str, env: dict[str, str] | None = None) -> None:
        self.pipeline = pipeline
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.log = pipeline.home / "logs" / f"gateway-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        environ = {**os.environ, "REDIS_URL": pipeline.url, "VARS_HOME": str(pipeline.home), **(env or {})}
        cmd = [sys.executable, "-m", "scheduler.cli", "gateway", "--port", str(self.port), *args]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=environ, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 120.0) -> GatewayProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready in {timeout_s} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_key(pipeline: Pipeline, users: list[str], **options) -> tuple[str, ApiKey]:
    return KeyStore(pipeline.store().backend).create(users, **options)


def start_stack(home: Path, *gateway_args: str) -> tuple[Pipeline, GatewayProcess]:
    pipeline = Pipeline(home).start()
    try:
        return pipeline, GatewayProcess(pipeline, *gateway_args).wait_ready()
    except BaseException:
        pipeline.stop()
        raise
