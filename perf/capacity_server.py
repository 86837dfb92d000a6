"""An OpenAI-compatible chat server that behaves, in time, like one vLLM instance of fixed
capacity, for measuring how close a workload comes to a backend's limit.

Model of time (``Capacity``):

- at most ``slots`` (K) sequences are in service at once; a request that finds them all
  busy waits in a FIFO queue (vLLM's waiting queue under continuous batching);
- a request holds its slot for ``prefill_s * prompt_tokens`` and then
  ``decode_s * output_tokens`` (the K sequences in service decode in parallel, one token
  per ``decode_s`` each);
- its output length is drawn from a log-normal (median ``median_tokens``, sigma
  ``sigma``), capped by the request's ``max_tokens``. The draw is seeded by the request
  itself (seed, model, messages): the same request gets the same length in any run, in
  any order, so two ways of running the same sessions meet the same token mix;
- every delay is multiplied by ``time_scale``.

Prompt tokens are counted as ``vars_core.tokens`` counts them (words and punctuation).
The reply text is filler of the drawn length (``usage`` reports it): what a reply *says*
is not this server's business (see ``perf/capacity_engine.py``).

The capacity bound. Request i holds a slot for ``s_i = time_scale * (prefill_s * P_i +
decode_s * L_i)``. K slots give at most K slot-seconds per second, so serving a set of
requests takes at least ``sum(s_i) / K`` seconds, and a campaign of N sessions runs at
most ``3600 * K * N / sum(s_i) = 3600 * K / s_session`` sessions per hour, where
``s_session`` is the mean slot-seconds per session of that campaign's token mix
(``bound_sessions_per_hour``). A measured rate divided by the bound is the share of the
server's slot-time the run used (``utilization``).

``GET /stats`` returns one record per request served since the last ``POST /stats/reset``
(role = the request's model field, arrival, slot acquired and released, tokens, modelled
service time), so a harness computes the bound from the requests its run made.

    python -m perf.capacity_server --port 8123 [--slots 64] [--time-scale 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import msgspec

from vars_core.tokens import count_tokens

_NORMAL = NormalDist()
_FILLER = "lorem"  # one token per word, as count_tokens counts


@dataclass(frozen=True)
class Capacity:
    slots: int = 64
    prefill_s: float = 0.0002  # per prompt token
    decode_s: float = 0.020  # per output token, per sequence
    median_tokens: float = 150.0
    sigma: float = 0.6
    time_scale: float = 1.0
    seed: int = 0

    def output_tokens(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> int:
        """The request's output length: its seeded log-normal draw, capped by max_tokens."""
        key = msgspec.json.encode([self.seed, model, messages])
        u = (int.from_bytes(hashlib.sha256(key).digest()[:8], "big") + 0.5) / 2**64
        drawn = max(1, round(self.median_tokens * math.exp(self.sigma * _NORMAL.inv_cdf(u))))
        return max(1, min(drawn, max_tokens))

    def prefill_time(self, prompt_tokens: int) -> float:
        return self.time_scale * self.prefill_s * prompt_tokens

    def service_time(self, prompt_tokens: int, output_tokens: int) -> float:
        """Seconds the request holds its slot."""
        return self.time_scale * (self.prefill_s * prompt_tokens + self.decode_s * output_tokens)


def bound_sessions_per_hour(slots: int, slot_seconds_per_session: float) -> float:
    """The most sessions per hour K slots can serve when each session needs
    ``slot_seconds_per_session`` of slot time (see the module docstring)."""
    return 3600.0 * slots / slot_seconds_per_session


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(count_tokens(_text(m.get("content"))) for m in messages)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class RequestRecord(msgspec.Struct, array_like=True):
    role: str
    arrived: float  # wall-clock seconds (time.time())
    started: float  # slot acquired
    finished: float  # slot released
    prompt_tokens: int
    output_tokens: int
    service_s: float  # modelled slot time (the bound's s_i)


class Slots:
    """K slots handed out first come, first served."""

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(not w.done() for w in self.waiters)

    async def acquire(self) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the caller went away: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class BadRequest(ValueError):
    pass


class CapacityServer:
    """The HTTP server (stdlib asyncio streams, HTTP/1.1 keep-alive) around ``Capacity``.

    ``start()`` runs it on a thread of its own and returns its base URL; or ``serve()`` on
    a loop you own."""

    def __init__(self, capacity: Capacity, host: str = "127.0.0.1", port: int = 0) -> None:
        self.capacity = capacity
        self.host, self.port = host, port
        self.records: list[RequestRecord] = []
        self.in_service = 0
        self.peak_queue = 0
        self._slots: Slots | None = None
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def serve(self, ready: threading.Event | None = None) -> None:
        self._slots = Slots(self.capacity.slots)
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        if ready is not None:
            ready.set()
        async with self._server:
            await self._server.serve_forever()

    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                asyncio.run(self.serve(ready))

        self._thread = threading.Thread(target=run, name="capacity-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the capacity server did not start")
        return self.url

    def stop(self) -> None:
        """Stop a server that ``start()`` runs (requests in service are cancelled)."""
        if self._loop is not None and self._loop.is_running():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, path, headers = _parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = headers.get("connection", "").lower() != "close"
                await self._dispatch(method, path, body, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # stop(): end quietly (3.11's stream callback
            return  # reports a cancelled connection task as an error)
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, {"error": {"message": "headers too large"}})
        finally:
            writer.close()

    async def _dispatch(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        route = path.split("?", 1)[0]
        if method == "POST" and route == "/v1/chat/completions":
            try:
                request = _chat_request(body)
            except BadRequest as exc:
                await _respond(writer, 400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                return
            await self._complete(request, writer)
        elif method == "GET" and route == "/stats":
            await _respond(writer, 200, self.stats())
        elif method == "POST" and route == "/stats/reset":
            self.records = []
            self.peak_queue = 0
            await _respond(writer, 200, {"reset": True})
        elif method == "GET" and route == "/v1/models":
            await _respond(writer, 200, {"object": "list", "data": [{"id": "capacity", "object": "model"}]})
        elif method == "GET" and route == "/healthz":
            await _respond(writer, 200, {"ok": True})
        else:
            await _respond(writer, 404, {"error": {"message": f"no route {method} {route}"}})

    def stats(self) -> dict[str, Any]:
        return {
            "capacity": asdict(self.capacity),
            "now": time.time(),
            "in_service": self.in_service,
            "queued": self._slots.queued if self._slots else 0,
            "peak_queue": self.peak_queue,
            "requests": msgspec.to_builtins(self.records),
        }

    async def _complete(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        cap, slots = self.capacity, self._slots
        assert slots is not None
        loop = asyncio.get_running_loop()
        model = str(request.get("model") or "")
        messages = request["messages"]
        max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
        n_prompt = prompt_tokens(messages)
        n_out = cap.output_tokens(model, messages, max_tokens)
        finish = "length" if n_out >= max_tokens else "stop"
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        arrived = time.time()
        self.peak_queue = max(self.peak_queue, slots.queued + 1)
        await slots.acquire()
        started, t0 = time.time(), loop.time()
        self.in_service += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_service -= 1
                slots.release()
                self.records.append(
                    RequestRecord(model, arrived, started, time.time(), n_prompt, n_out, cap.service_time(n_prompt, n_out))
                )

        try:
            prefill_end = t0 + cap.prefill_time(n_prompt)
            if request.get("stream"):
                await self._stream(writer, request, model, n_out, prefill_end, finish, usage, release)
                return
            await _sleep_until(loop, prefill_end + cap.time_scale * cap.decode_s * n_out)
            release()
            text = " ".join([_FILLER] * n_out)
            reply = {
                "id": f"chatcmpl-{int(started * 1e6):x}",
                "object": "chat.completion",
                "created": int(started),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": usage,
            }
            await _respond(writer, 200, reply)
        finally:
            release()

    async def _stream(self, writer, request, model, n_out, prefill_end, finish, usage, release) -> None:
        cap = self.capacity
        loop = asyncio.get_running_loop()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        created = int(time.time())

        def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
            body = {"id": "chatcmpl-capacity", "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": choices, **(extra or {})}
            _chunk(writer, b"data: " + msgspec.json.encode(body) + b"\n\n")

        step = cap.time_scale * cap.decode_s
        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        sent = 0
        while sent < n_out:
            # Tokens are due one per decode step after the prefill; those already due go out
            # together, so a late wake-up never slows the stream below the model's rate.
            await _sleep_until(loop, prefill_end + step * (sent + 1))
            due = min(n_out, max(sent + 1, int((loop.time() - prefill_end) / step) if step > 0 else n_out))
            text = "".join(("" if i == 0 else " ") + _FILLER for i in range(sent, due))
            event([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
            sent = due
            await writer.drain()
        release()
        event([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (request.get("stream_options") or {}).get("include_usage"):
            event([], {"usage": usage})
        _chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _cancel_all() -> None:
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    delay = deadline - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2:
        raise ConnectionError(f"bad request line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


def _chat_request(body: bytes) -> dict[str, Any]:
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest("body is not a JSON object")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages: expected a non-empty list of message objects")
    max_tokens = request.get("max_tokens", 16)
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("max_tokens: expected a positive integer")
    return request


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large"}


async def _respond(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    data = msgspec.json.encode(payload)
    writer.write(
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n\r\n".encode() + data
    )
    await writer.drain()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=Capacity.slots)
    parser.add_argument("--prefill-ms", type=float, default=Capacity.prefill_s * 1000)
    parser.add_argument("--decode-ms", type=float, default=Capacity.decode_s * 1000)
    parser.add_argument("--median-tokens", type=float, default=Capacity.median_tokens)
    parser.add_argument("--sigma", type=float, default=Capacity.sigma)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    capacity = Capacity(
        slots=args.slots, prefill_s=args.prefill_ms / 1000, decode_s=args.decode_ms / 1000,
        median_tokens=args.median_tokens, sigma=args.sigma, time_scale=args.time_scale, seed=args.seed,
    )
    server = CapacityServer(capacity, args.host, args.port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve())


if __name__ == "__main__":
    main()
