"""Chat LLM backends behind one protocol (``base.ChatLLM``), chosen by name (``make_llm``)."""

from vars_core.llm.base import ChatLLM, Completion, LLMError, complete_sync
from vars_core.llm.registry import known_kinds, make_llm

__all__ = ["ChatLLM", "Completion", "LLMError", "complete_sync", "known_kinds", "make_llm"]
