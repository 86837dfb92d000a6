"""A streaming OpenAI-compatible chat server that answers at once: a fixed reply of N
tokens, the first one sent as soon as the request is read, and the usage.

For measuring what sits in front of a model (the gateway's added time to first token):
a real model's own prefill time grows with the prompt, and the gateway's prompts are longer
(the system prompt and the memories), so a real model would count part of its own work as
the gateway's. ``python -m perf.stub_llm --port P``.
"""

from __future__ import annotations

import argparse
import time

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

TOKENS = ["Sure", ",", " here", " is", " a", " short", " answer", "."]


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body: dict = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "stub",
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


async def completions(request: Request) -> Response:
    body = msgspec.json.decode(await request.body())
    n = min(int(body.get("max_tokens") or len(TOKENS)), len(TOKENS))
    usage = {"prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body["messages"]), "completion_tokens": n}
    if not body.get("stream"):
        reply = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": "stub",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(TOKENS[:n])}, "finish_reason": "stop"}],
            "usage": {**usage, "total_tokens": usage["prompt_tokens"] + n},
        }
        return Response(msgspec.json.encode(reply), media_type="application/json")

    async def events():
        yield _chunk({"role": "assistant", "content": ""})
        for token in TOKENS[:n]:
            yield _chunk({"content": token})
        yield _chunk({}, "stop")
        yield _chunk({}, usage={**usage, "total_tokens": usage["prompt_tokens"] + n})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
