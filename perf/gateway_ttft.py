"""Time to first token through the gateway vs straight to the same LLM server.

The server is ``perf.stub_llm``: it streams its first token as soon as it has read the
request, so what is measured is what the gateway path adds (auth, rate limit, session,
the turn's events through Redis and the stage workers, the reply stream back), not a
model's prefill, which would grow with the gateway's longer prompts. An embedded Redis,
one worker process per stage and `vars gateway` run on this machine; requests are sent one
at a time, interleaved (direct, then each method through the gateway, rotating the order),
over a pool of users who each hold a short conversation and one remembered preference.

    python -m perf.gateway_ttft --requests 200      # writes its section of docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from perf import markdown

START = "<!-- perf/gateway_ttft.py -->"
END = "<!-- /perf/gateway_ttft.py -->"
PREFERENCE = "When answering any question, use bullet points for the key points."
QUESTIONS = (
    "What is the capital of France?",
    "How far is the moon?",
    "Why is the sky blue?",
    "What is a prime number?",
    "How do plants make food?",
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} not ready in {timeout_s} s")


def ttft(client: httpx.Client, url: str, body: dict, headers: dict[str, str]) -> float:
    """Seconds from sending the request to the first content delta (the stream is read to
    its end, so the turn is complete before the next request)."""
    first = None
    started = time.perf_counter()
    with client.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {resp.read()[:300]!r}")
        for line in resp.iter_lines():
            if first is None and line.startswith("data:") and '"content":"' in line.replace(" ", ""):
                event = json.loads(line[5:])
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - started
    if first is None:
        raise RuntimeError(f"{url}: no content in the stream")
    return first


def measure(requests: int, warmup: int, users: int, methods: list[str], concurrency: int) -> dict[str, list[float]]:
    from gateway.auth import KeyStore
    from scheduler.embedded_redis import EmbeddedRedis
    from scheduler.local import spawn_workers, stop_processes
    from vars_core.store.connect import connect
    from vars_core.store.redis_backend import RedisBackend

    home = Path(tempfile.mkdtemp(prefix="vars-ttft-"))
    procs: list[subprocess.Popen] = []
    redis = EmbeddedRedis(home=home)
    try:
        stub_port, gw_port = free_port(), free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        procs.append(subprocess.Popen([sys.executable, "-m", "perf.stub_llm", "--port", str(stub_port)]))
        wait_http(stub_url, procs[-1], "stub LLM server")
        url = redis.start()
        agent = {"VARS_AGENT__KIND": "openai", "VARS_AGENT__BASE_URL": stub_url, "VARS_AGENT__MODEL": "stub"}
        saved = dict(os.environ)
        os.environ.update({**agent, "VARS_HOME": str(home)})
        try:
            workers = spawn_workers(url, home / "logs", concurrency)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        procs += workers
        key, _ = KeyStore(RedisBackend(connect(url))).create(
            [f"u{i}" for i in range(users)], rate_per_s=10_000, burst=10_000
        )
        env = {**os.environ, **agent, "REDIS_URL": url, "VARS_HOME": str(home)}
        gw_cmd = [sys.executable, "-m", "scheduler.cli", "gateway", "--port", str(gw_port), "--log-level", "warning"]
        procs.append(subprocess.Popen(gw_cmd, env=env))
        gw_url = f"http://127.0.0.1:{gw_port}"
        wait_http(gw_url + "/healthz", procs[-1], "gateway")

        direct = {"url": stub_url + "/v1/chat/completions", "headers": {}}
        gateway = {"url": gw_url + "/v1/chat/completions", "headers": {"Authorization": f"Bearer {key}"}}
        samples: dict[str, list[float]] = {"direct": [], **{f"gateway {m}": [] for m in methods}}
        with httpx.Client(timeout=60) as client:
            # Each user opens with a preference (one card to retrieve from), then warms up.
            for u in range(users):
                for m in methods:
                    body = {"model": f"vars-{m}", "user": f"u{u}", "stream": True,
                            "messages": [{"role": "user", "content": f"{PREFERENCE} {QUESTIONS[0]}"}]}
                    ttft(client, gateway["url"], body, {**gateway["headers"], "X-Session-Id": f"{m}-{u}"})
            for i in range(warmup + requests):
                question = QUESTIONS[i % len(QUESTIONS)]
                u = i % users
                order = ["direct", *methods]
                order = order[i % len(order):] + order[: i % len(order)]
                for target in order:
                    if target == "direct":
                        body = {"model": "stub", "stream": True, "messages": [{"role": "user", "content": question}]}
                        t = ttft(client, direct["url"], body, {})
                        name = "direct"
                    else:
                        body = {"model": f"vars-{target}", "user": f"u{u}", "stream": True,
                                "messages": [{"role": "user", "content": question}]}
                        t = ttft(client, gateway["url"], body, {**gateway["headers"], "X-Session-Id": f"{target}-{u}"})
                        name = f"gateway {target}"
                    if i >= warmup:
                        samples[name].append(t)
        return samples
    finally:
        stop_processes([p.pid for p in procs])
        redis.stop()


def report(samples: dict[str, list[float]], users: int, concurrency: int, warmup: int) -> str:
    direct = np.asarray(samples["direct"]) * 1000
    rows = []
    for name, values in samples.items():
        ms = np.asarray(values) * 1000
        p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
        added = "" if name == "direct" else f"{p50 - np.percentile(direct, 50):+.1f} / {p99 - np.percentile(direct, 99):+.1f}"
        rows.append(f"| {name} | {len(ms)} | {p50:.1f} | {p99:.1f} | {added} |")
    cpu = os.cpu_count()
    n = len(samples["direct"])
    return "\n".join(
        [
            START,
            "## Gateway: added time to first token (`perf/gateway_ttft.py`)",
            "",
            "Streamed chat completions sent one at a time, interleaved, through `vars gateway` and",
            "straight to the same LLM server. Behind the gateway: an embedded Redis and one worker",
            f"process per stage ({concurrency} threads each, MiniLM embedder). The server is",
            "`perf/stub_llm.py`, which sends its first token as soon as it has read the request: a real",
            "model's prefill grows with the prompt, and the gateway's prompts are longer (system prompt",
            "and memories), so a model would count some of its own time as the gateway's. "
            f"{users} users,",
            "each with one remembered preference and a conversation that grows by a turn per request.",
            "TTFT is from sending the request to the first content delta, in ms. "
            f"{platform.python_implementation()} {platform.python_version()}",
            f"on {cpu} cores shared with other work; {n} measured requests per path after {warmup} warm-up",
            f"rounds, {time.strftime('%Y-%m-%d')}.",
            "",
            "| path | requests | p50 (ms) | p99 (ms) | added vs direct, p50 / p99 (ms) |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            "`vanilla` is the shortest route (the user's message, then generate); `rag_vector` runs judge,",
            "update, extract (rules), retrieve (MiniLM, FAISS, the policy) and generate, each a hop through",
            "its own queue and worker process.",
            END,
        ]
    ) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="measured requests per path (default: 200)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--methods", default="vanilla,rag_vector")
    parser.add_argument("--concurrency", type=int, default=2, help="threads per worker")
    parser.add_argument("--out", default="docs/performance.md", help="Markdown file to write the section into ('' to print only)")
    args = parser.parse_args()
    samples = measure(args.requests, args.warmup, args.users, args.methods.split(","), args.concurrency)
    section = report(samples, args.users, args.concurrency, args.warmup)
    print(section)
    if args.out:
        markdown.write_section(Path(args.out), section, START, END)


if __name__ == "__main__":
    main()
