"""Rerankers: (query, candidate notes) -> s0 = log P(yes), one score per note.

Every reranker speaks the reference's scale, a log-probability that the note applies to the
query, clipped at log(1e-6) so it stays finite: softmax(s0 / tau) at tau = 1 is then
proportional to P(yes). Backends by name with ``make_reranker``: "none"
(s0 = log((1 + cos) / 2), computed by retrieval; an ablation), "scripted" (the scripted
world's reranker of one stated ROC AUC, ``vars_core.scripted.reranker``), "yesno" (a causal
LM asked "yes" or "no", Qwen3-Reranker style: the log-softmax over the (no, yes) logit pair),
"cross_encoder" (a sequence-classification model: log sigmoid) and "http" (vLLM's
``/rerank`` or ``/score``: the log of its probability). ``bind_reranker`` turns one into the
callable that ``retrieval.retrieve`` takes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from vars_core import retrieval
from vars_core.embedder import build_backend
from vars_core.embedders_http import ModelServerError, endpoint_url, http_client, post_json
from vars_core.policy import MIN_LOG_P, log_probs, log_sigmoid

DEFAULT_INSTRUCTION = (
    "Given a user's request to an assistant, judge whether this remembered preference of "
    "the user applies to the request"
)
# Qwen3-Reranker's chat framing; the answer slot is the last position of the prompt.
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
    'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
    "<|im_end|>\n<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"



class Reranker(Protocol):
    name: str

    def score(self, query: str, documents: list[str]) -> np.ndarray | None:
        """(len(documents),) float64 log P(yes) in [MIN_LOG_P, 0]; None means "no opinion:
        use the cosine"."""
        ...


class NoReranker:
    """s0 = log((1 + cos) / 2): retrieval computes it when no rerank callable is given."""

    name = "none"

    def score(self, query: str, documents: list[str]) -> None:
        return None


def bind_reranker(
    reranker: Reranker | None, query: str, notes: Mapping[str, str] | None, opening: str = ""
) -> retrieval.Reranker | None:
    """The ``rerank`` argument of ``retrieval.retrieve`` for one query: candidate ids and
    cosines in, s0 out. None (the cosine default) for no reranker or ``NoReranker``.
    A reranker with ``reads_opening`` (the scripted one) judges the session's request, its
    ``opening``, rather than the query with the latest message appended."""
    if reranker is None or isinstance(reranker, NoReranker):
        return None
    name = getattr(reranker, "name", type(reranker).__name__)
    if getattr(reranker, "reads_opening", False) and opening:
        query = opening
    if notes is None or not query:
        raise ValueError(f"reranker {name!r} reads texts: pass the query and the notes")

    def rerank(card_ids: list[str], cosines: np.ndarray) -> np.ndarray:
        if not card_ids:
            return np.zeros(0, dtype=np.float64)
        missing = [cid for cid in card_ids if cid not in notes]
        if missing:
            raise KeyError(f"no note text for candidate cards {missing[:5]}")
        scores = reranker.score(query, [notes[cid] for cid in card_ids])
        if scores is None:
            return retrieval.cosine_log_p(cosines)
        return check_scores(scores, len(card_ids), name)

    return rerank


def check_scores(scores: Any, n: int, source: str) -> np.ndarray:
    """One finite log P(yes) per document, in [MIN_LOG_P, 0]."""
    out = np.asarray(scores, dtype=np.float64)
    if out.shape != (n,):
        raise ValueError(f"reranker {source!r} gave {out.shape} scores for {n} documents")
    if not np.isfinite(out).all() or (out < MIN_LOG_P - 1e-6).any() or (out > 1e-6).any():
        raise ValueError(
            f"reranker {source!r} gave scores outside [log(1e-6), 0] (log P(yes)): {out[:8]}"
        )
    return np.clip(out, MIN_LOG_P, 0.0)


def _load(model_dir: str | Path, device: str, auto_class: str) -> tuple[Any, Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (config.json missing)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = getattr(transformers, auto_class).from_pretrained(str(path), local_files_only=True)
    model.eval().to(device)
    return torch, tokenizer, model


class YesNoReranker:
    """A causal LM judges each (query, note) pair; s0 = log P("yes") from a log-softmax over
    the "no" and "yes" logits at the last position (as Qwen3-Reranker's own code normalizes:
    over the pair, not the vocabulary). Prompts are left-padded in a batch so that the last
    position is every row's answer slot."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        batch_size: int = 8,
        instruction: str = DEFAULT_INSTRUCTION,
        max_length: int = 1024,
        prefix: str = QWEN3_PREFIX,
        suffix: str = QWEN3_SUFFIX,
        yes_token: str = "yes",
        no_token: str = "no",
        name: str = "",
    ) -> None:
        self._torch, self.tokenizer, self.model = _load(model_dir, device, "AutoModelForCausalLM")
        self.device = device
        self.batch_size = batch_size
        self.instruction = instruction
        self.name = name or Path(model_dir).name
        self.yes_id = self._single_token(yes_token)
        self.no_id = self._single_token(no_token)
        self._prefix = self.tokenizer.encode(prefix, add_special_tokens=False)
        self._suffix = self.tokenizer.encode(suffix, add_special_tokens=False)
        self._body_max = max_length - len(self._prefix) - len(self._suffix)
        if self._body_max < 8:
            raise ValueError(f"max_length {max_length} leaves no room inside the prompt frame")
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self.tokenizer.eos_token_id or 0

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"{word!r} is not a single known token of this tokenizer: {ids}")
        return int(ids[0])

    def prompt_ids(self, query: str, document: str) -> list[int]:
        """The full prompt of one pair; the body (not the frame) is cut when too long."""
        body = f"<Instruct>: {self.instruction}\n<Query>: {query}\n<Document>: {document}"
        ids = self.tokenizer.encode(body, add_special_tokens=False)[: self._body_max]
        return self._prefix + ids + self._suffix

    def score(self, query: str, documents: list[str]) -> np.ndarray:
        return self.score_pairs([(query, d) for d in documents])

    def score_pairs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """One score per (query, document) pair; the batcher merges callers' pairs."""
        prompts = [self.prompt_ids(q, d) for q, d in pairs]
        out = [
            self._batch(prompts[i : i + self.batch_size])
            for i in range(0, len(prompts), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)

    def _batch(self, prompts: list[list[int]]) -> np.ndarray:
        torch = self._torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):  # left padding
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        # positions count from each row's first real token, as if it were unpadded
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
            ).logits[:, -1, :]
            pair = torch.stack([logits[:, self.no_id], logits[:, self.yes_id]], dim=1).float()
            log_p_yes = torch.log_softmax(pair, dim=1)[:, 1]
        return np.maximum(log_p_yes.cpu().numpy().astype(np.float64), MIN_LOG_P)


class CrossEncoderReranker:
    """A sequence-classification model over (query, note) pairs: log sigmoid of a single
    logit, or the log-softmax of label 1 for a two-label head."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        batch_size: int = 16,
        max_length: int = 512,
        name: str = "",
    ) -> None:
        self._torch, self.tokenizer, self.model = _load(
            model_dir, device, "AutoModelForSequenceClassification"
        )
        self.num_labels = int(self.model.config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(f"a cross-encoder needs 1 or 2 labels, this one has {self.num_labels}")
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name or Path(model_dir).name

    def score(self, query: str, documents: list[str]) -> np.ndarray:
        return self.score_pairs([(query, d) for d in documents])

    def score_pairs(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """One score per (query, document) pair; the batcher merges callers' pairs."""
        out = [self._batch(pairs[i : i + self.batch_size]) for i in range(0, len(pairs), self.batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)

    def _batch(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            [q for q, _ in pairs],
            [d for _, d in pairs],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**batch).logits.float()
            if self.num_labels == 1:
                log_p = torch.nn.functional.logsigmoid(logits[:, 0])
            else:
                log_p = logits.log_softmax(1)[:, 1]
        return np.maximum(log_p.cpu().numpy().astype(np.float64), MIN_LOG_P)


class HTTPReranker:
    """vLLM's ``/rerank`` (``results`` of ``index`` + ``relevance_score``) or ``/score``
    (``data`` of ``index`` + ``score``). The server's probability becomes log P(yes);
    ``sigmoid=True`` for servers that return logits (then s0 = log sigmoid(logit))."""

    def __init__(
        self,
        base_url: str,
        model: str,
        endpoint: Literal["rerank", "score"] = "rerank",
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        sigmoid: bool = False,
        name: str = "",
    ) -> None:
        if endpoint not in ("rerank", "score"):
            raise ValueError(f"unknown endpoint {endpoint!r}: use 'rerank' or 'score'")
        self.url = endpoint_url(base_url, endpoint)
        self.model = model
        self.endpoint = endpoint
        self.retries = retries
        self.sigmoid = sigmoid
        self.name = name or model
        self._client = http_client(api_key, timeout_s)

    def close(self) -> None:
        self._client.close()

    def score(self, query: str, documents: list[str]) -> np.ndarray:
        if not documents:
            return np.zeros(0, dtype=np.float64)
        if self.endpoint == "rerank":
            payload: dict[str, Any] = {
                "model": self.model,
                "query": query,
                "documents": documents,
                "top_n": len(documents),
            }
            items_key, score_key = "results", "relevance_score"
        else:
            payload = {"model": self.model, "text_1": query, "text_2": documents}
            items_key, score_key = "data", "score"
        body = post_json(self._client, self.url, payload, self.retries)
        scores = self._parse(body, items_key, score_key, len(documents))
        if self.sigmoid:
            return log_sigmoid(scores)
        if (scores < -1e-6).any() or (scores > 1 + 1e-6).any():
            raise ModelServerError(
                f"{self.url}: reranker {self.name!r} gave scores outside [0, 1]: {scores[:8]}; "
                "set sigmoid=True if it returns logits"
            )
        return log_probs(scores)

    def _parse(self, body: Any, items_key: str, score_key: str, n: int) -> np.ndarray:
        items = body.get(items_key) if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) != n:
            got = f"{len(items)} items" if isinstance(items, list) else repr(body)[:200]
            raise ModelServerError(f"{self.url}: expected '{items_key}' with {n} scores, got {got}")
        scores = np.full(n, np.nan)
        for item in items:
            index = item.get("index") if isinstance(item, dict) else None
            value = item.get(score_key) if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < n or not np.isnan(scores[index]):
                raise ModelServerError(f"{self.url}: bad or repeated index in {item!r:.200}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ModelServerError(f"{self.url}: no numeric {score_key!r} in {item!r:.200}")
            scores[index] = float(value)
        return scores


# name -> "module:class"; "cross-encoder" is the config spelling
_RERANKERS: dict[str, str] = {
    "none": "vars_core.rerankers:NoReranker",
    "scripted": "vars_core.scripted.reranker:ScriptedReranker",
    "yesno": "vars_core.rerankers:YesNoReranker",
    "cross_encoder": "vars_core.rerankers:CrossEncoderReranker",
    "cross-encoder": "vars_core.rerankers:CrossEncoderReranker",
    "http": "vars_core.rerankers:HTTPReranker",
}


def reranker_kinds() -> list[str]:
    return sorted(_RERANKERS)


def make_reranker(kind: str = "none", **options: Any) -> Reranker:
    """A reranker by registered name; ``options`` go to its constructor: "yesno" and
    "cross_encoder" take ``model_dir`` (or ``path``) and ``device``, "http" takes
    ``base_url``, ``model`` and ``endpoint``, "scripted" takes ``auc``. Options that only
    another kind takes are dropped (see ``embedder.build_backend``)."""
    if "path" in options:
        options["model_dir"] = options.pop("path")
    if kind in ("yesno", "cross_encoder", "cross-encoder") and not options.get("model_dir"):
        raise ValueError(f"the {kind!r} reranker needs path= (a local model directory)")
    return build_backend("reranker", _RERANKERS, kind, options)
