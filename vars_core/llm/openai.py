"""OpenAI-compatible chat completions: vLLM, the llama.cpp servers, any OpenAI endpoint.

Only the request body and the reply parsing live here; pooling, the concurrency limit
and retries are ``ChatAPI``'s.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from vars_core.llm.api import BadReply, ChatAPI, Chunk, Reply
from vars_core.types import Message, Usage

SchemaFormat = Literal["json_schema", "json_object"]
_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class OpenAIChat(ChatAPI):
    """``POST {base_url}/v1/chat/completions``.

    schema_format: how a ``json_schema`` is sent. "json_schema" is the OpenAI form (vLLM,
    OpenAI, recent llama.cpp); "json_object" sends ``{"type": "json_object", "schema": ...}``,
    which llama-cpp-python's server enforces with a grammar.
    """

    def __init__(
        self, base_url: str, model: str, *, schema_format: SchemaFormat = "json_schema", **options: Any
    ) -> None:
        """``options``: ChatAPI's (api_key, max_concurrency, timeout_s, retries, name)."""
        if schema_format not in ("json_schema", "json_object"):
            raise ValueError(
                f"schema_format must be json_schema or json_object, not {schema_format!r}"
            )
        super().__init__(base_url, model, **options)
        self.schema_format = schema_format

    def build_payload(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        json_schema: dict[str, Any] | None,
        stream: bool,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if stream:
            payload["stream"] = True
            # Servers that know it append a usage chunk; others ignore the field.
            payload["stream_options"] = {"include_usage": True}
        if json_schema is not None:
            payload["response_format"] = self._response_format(json_schema)
        return payload

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.schema_format == "json_object":
            return {"type": "json_object", "schema": schema}
        title = str(schema.get("title", ""))
        name = title if _SCHEMA_NAME.match(title) else "reply"
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}

    def parse_reply(self, body: Any) -> Reply:
        choice = _first_choice(body)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise BadReply(f"choice has no message: {_short(choice)}")
        text = message.get("content")
        if text is not None and not isinstance(text, str):
            raise BadReply(f"message content is not text: {_short(message)}")
        return Reply(
            text=text or "",
            usage=_usage(body.get("usage")),
            model=str(body.get("model") or ""),
            finish_reason=str(choice.get("finish_reason") or ""),
        )

    def parse_chunk(self, body: Any) -> Chunk:
        if not isinstance(body, dict):
            raise BadReply(f"event is not an object: {_short(body)}")
        if "error" in body:
            raise BadReply(f"server error mid-stream: {_short(body['error'])}")
        usage = _usage(body.get("usage"))
        choices = body.get("choices")
        if not choices:  # the include_usage chunk has an empty list
            if usage is None:
                raise BadReply(f"event lacks choices: {_short(body)}")
            return Chunk("", usage)
        first = choices[0] if isinstance(choices, list) else None
        delta = first.get("delta") if isinstance(first, dict) else None
        if not isinstance(delta, dict):
            raise BadReply(f"event has no delta: {_short(body)}")
        content = delta.get("content")
        finish = first.get("finish_reason") if isinstance(first, dict) else None
        return Chunk(content if isinstance(content, str) else "", usage, finish if isinstance(finish, str) else "")


def _first_choice(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadReply(f"reply is not a JSON object: {_short(body)}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadReply(f"reply lacks choices: {_short(body)}")
    return choices[0]


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
