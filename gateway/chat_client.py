"""`vars chat`: a terminal client on the gateway's HTTP API.

Each line typed is one turn; the reply streams in as it is generated, then the memories
that went into the prompt are listed (read from the ``vars`` field of the stream's last
content chunk). The run is its own session (X-Session-Id), ended when the client exits.
Commands: /memory (list the user's cards), /reset (start a new session), /quit.
"""

from __future__ import annotations

import json
import secrets
import sys
from typing import Any, TextIO

import httpx


class ChatError(RuntimeError):
    """The gateway answered with an error (the message is its OpenAI-shaped one)."""


def _error_text(status: int, body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        return f"HTTP {status}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {body[:300].decode(errors='replace')}"


class ChatClient:
    def __init__(self, base_url: str, key: str, user: str, model: str, session: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.user = user
        self.model = model
        self.session = session or f"chat-{secrets.token_hex(4)}"
        self.http = httpx.Client(
            headers={"Authorization": f"Bearer {key}"}, timeout=httpx.Timeout(300.0, connect=10.0)
        )

    def close(self) -> None:
        self.http.close()

    def _headers(self) -> dict[str, str]:
        return {"X-Session-Id": self.session}

    def say(self, text: str, out: TextIO) -> list[dict[str, Any]]:
        """Stream the reply to ``text`` onto ``out``; return the memories used."""
        body = {
            "model": self.model,
            "user": self.user,
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        memories: list[dict[str, Any]] = []
        url = f"{self.base}/chat/completions"
        with self.http.stream("POST", url, json=body, headers=self._headers()) as resp:
            if resp.status_code != 200:
                raise ChatError(_error_text(resp.status_code, resp.read()))
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise ChatError(event["error"].get("message", "error mid-stream"))
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        out.write(piece)
                        out.flush()
                if event.get("vars"):
                    memories = event["vars"].get("memories") or []
        out.write("\n")
        return memories

    def memory(self) -> list[dict[str, Any]]:
        resp = self.http.get(f"{self.base}/users/{self.user}/memory")
        if resp.status_code != 200:
            raise ChatError(_error_text(resp.status_code, resp.content))
        return resp.json()["data"]

    def end_session(self) -> None:
        resp = self.http.post(f"{self.base}/users/{self.user}/sessions/reset", headers=self._headers())
        if resp.status_code != 200:
            raise ChatError(_error_text(resp.status_code, resp.content))


def _show_memories(memories: list[dict[str, Any]], out: TextIO) -> None:
    if not memories:
        out.write("  (no memories used)\n")
        return
    out.write("  memories used:\n")
    for m in memories:
        label = f"[{m['id']}] " if m.get("id") else ""
        out.write(f"  - {label}{m['note']}\n")


def run(client: ChatClient, lines: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    interactive = lines.isatty()
    if interactive:
        out.write(f"chatting as {client.user} with {client.model}; /memory, /reset, /quit\n")
    try:
        while True:
            if interactive:
                out.write("> ")
                out.flush()
            line = lines.readline()
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            try:
                if text == "/quit":
                    break
                if text == "/reset":
                    client.end_session()
                    client.session = f"chat-{secrets.token_hex(4)}"
                    out.write("  (new session)\n")
                elif text == "/memory":
                    cards = client.memory()
                    out.write("  memory:\n" + "".join(f"  - [{c['id']}] {c['note']}\n" for c in cards) if cards else "  (no memories)\n")
                else:
                    _show_memories(client.say(text, out), out)
            except (ChatError, httpx.HTTPError) as exc:
                out.write(f"  error: {exc}\n")
                if not interactive:
                    return 1
    finally:
        try:
            client.end_session()
        except (ChatError, httpx.HTTPError):
            pass
        client.close()
    return 0
