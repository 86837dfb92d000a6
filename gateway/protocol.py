"""Request and response bodies of the HTTP API, as msgspec structs.

The chat structs follow the OpenAI chat-completions wire format (unknown request fields
are ignored, as an OpenAI-compatible server must); ``vars`` is our one extension field,
on a non-streamed completion and on the last content chunk of a stream.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from vars_core.types import RewardLabel

# --------------------------------------------------------------------------- chat


class ContentPart(msgspec.Struct, frozen=True):
    type: str
    text: str = ""


class ChatMessage(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # only text parts count; images are not read
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ChatRequest(msgspec.Struct, frozen=True):
    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None  # one choice per request


class CompletionUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MemoryUsed(msgspec.Struct, frozen=True):
    id: str  # the card id ("" for a reflection note, which is not a card)
    note: str


class VarsInfo(msgspec.Struct, frozen=True):
    """What personalized the reply: the server's session and turn, the memories used."""

    session_id: str
    turn: int
    memories: list[MemoryUsed]
    usage_estimated: bool = False


class ResponseMessage(msgspec.Struct, frozen=True):
    content: str
    role: str = "assistant"


class Choice(msgspec.Struct, frozen=True):
    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(msgspec.Struct, frozen=True):
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    vars: VarsInfo
    object: str = "chat.completion"
    system_fingerprint: None = None


class Delta(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, frozen=True):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    object: Literal["chat.completion.chunk"]  # no default: omit_defaults would drop it
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    vars: VarsInfo | None = None


# --------------------------------------------------------------------------- models


class Model(msgspec.Struct, frozen=True):
    id: str
    created: int = 0
    object: str = "model"
    owned_by: str = "vars"


class ModelList(msgspec.Struct, frozen=True):
    data: list[Model]
    object: str = "list"


# --------------------------------------------------------------------------- feedback


class FeedbackRequest(msgspec.Struct, frozen=True):
    """An explicit reward in [-1, 1], or a judge label, for one completion."""

    completion_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    reward: Annotated[float, msgspec.Meta(ge=-1.0, le=1.0)] | None = None
    label: RewardLabel | None = None
    confidence: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 1.0


class FeedbackResult(msgspec.Struct, frozen=True):
    completion_id: str
    applied: bool
    reason: str = ""
    advantage: float = 0.0
    object: str = "feedback"


# --------------------------------------------------------------------------- memory


class MemoryCard(msgspec.Struct, frozen=True):
    """One card. ``status``: "active", "superseded" (a later conflicting preference replaced
    it: ``superseded_by`` is that card's id and ``superseded_by_note`` its note) or
    "evicted" (the per-user cap set it aside)."""

    id: str
    note: str
    condition: str
    action: str
    created_at: str
    confidence: float
    status: str = "active"
    superseded_by: str | None = None
    superseded_by_note: str | None = None


class MemoryList(msgspec.Struct, frozen=True):
    user: str
    data: list[MemoryCard]
    object: str = "list"


class MemoryDeleted(msgspec.Struct, frozen=True):
    user: str
    deleted: list[str]  # card ids; for a reset, every card the user had
    reset: bool = False  # True when the whole memory went (vectors and baseline too)
    object: str = "memory.deleted"


class SessionsReset(msgspec.Struct, frozen=True):
    user: str
    ended: int  # live sessions that were open
    object: str = "sessions.reset"


class Health(msgspec.Struct, frozen=True):
    status: str
    redis: bool
