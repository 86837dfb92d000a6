"""Model backends: pooling, rerankers, HTTP clients, the PCA projection.

Tiny models with random weights are built here, saved to temporary directories and loaded
by path like any local model; the HTTP backends talk to a stdlib server on loopback.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModel,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from vars_core.config import PolicyConfig
from vars_core.embedder import (
    TransformersEmbedder,
    default_embedder,
    last_token_index,
    make_embedder,
    query_embeddings,
)
from vars_core.embedders_http import ModelServerError, OpenAIEmbeddings
from vars_core.projection import (
    DATA,
    PCA_FILE,
    Projection,
    fit_pca_projection,
    load_projection,
    load_projection_file,
    projection_metadata,
    random_projection,
    read_corpus,
    save_projection,
)
from vars_core.rerankers import (
    MIN_LOG_P,
    CrossEncoderReranker,
    HTTPReranker,
    NoReranker,
    YesNoReranker,
    bind_reranker,
    make_reranker,
)
from vars_core.retrieval import UserIndex, retrieve
from vars_core.types import CardEmbedding

WORDS = "the a cat dog sat on mat rug ran fast slow red blue code math step list yes no".split()
TEXTS = ["the cat sat", "a dog ran fast on the red rug", "math", "code step list yes no the mat"]


def _tokenizer(specials: list[str], bert_style: bool) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bert_style:
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


def _bert_config(**kw: Any) -> BertConfig:
    return BertConfig(
        vocab_size=len(WORDS) + 4,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        **kw,
    )


def _save(model: Any, tokenizer: Any, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tok = _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], bert_style=True)
    return _save(BertModel(_bert_config()), tok, tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    tok = _tokenizer(["[PAD]", "[UNK]", "[EOS]"], bert_style=False)
    cfg = LlamaConfig(
        vocab_size=len(WORDS) + 3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=2,
    )
    return _save(LlamaForCausalLM(cfg), tok, tmp_path_factory.mktemp("llama"))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- pooling


def test_last_token_index_for_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3, 3]


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_pooling_picks_the_last_real_token(llama_dir, side):
    emb = TransformersEmbedder(llama_dir, pooling="last", padding_side=side, cache_size=0)
    got = emb.embed(TEXTS)  # one padded batch: the texts differ in length
    model = AutoModel.from_pretrained(str(llama_dir), local_files_only=True).eval()
    for text, row in zip(TEXTS, got, strict=True):
        ids = emb.tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**ids).last_hidden_state[0, -1].numpy()  # alone: nothing padded
        np.testing.assert_allclose(row, _unit(hidden), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_mean_and_cls_pooling_match_a_manual_computation(bert_dir, pooling):
    emb = TransformersEmbedder(bert_dir, pooling=pooling)
    got = emb.embed(TEXTS)
    model = BertModel.from_pretrained(str(bert_dir), local_files_only=True).eval()
    for text, row in zip(TEXTS, got, strict=True):
        ids = emb.tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**ids).last_hidden_state[0].numpy()
        want = hidden.mean(0) if pooling == "mean" else hidden[0]
        np.testing.assert_allclose(row, _unit(want), atol=2e-5)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_query_prefix_applies_to_queries_only(bert_dir):
    emb = make_embedder("transformers", path=str(bert_dir), pooling="mean", query_prefix="math ")
    np.testing.assert_allclose(emb.embed_queries(["the cat"]), emb.embed(["math the cat"]))
    assert not np.allclose(emb.embed(["the cat"]), emb.embed_queries(["the cat"]))
    np.testing.assert_allclose(query_embeddings(emb, ["the cat"]), emb.embed(["math the cat"]))


@pytest.fixture(scope="module")
def minilm() -> TransformersEmbedder:
    """A private MiniLM: the shared one's cache stays as other tests expect it (a padded
    batch changes a vector's last bits, and pipeline tests compare runs bit for bit)."""
    emb = make_embedder("minilm", batch_size=16)
    assert isinstance(emb, TransformersEmbedder) and emb is not default_embedder()
    return emb


def test_real_minilm_ranks_a_paraphrase_above_an_unrelated_sentence(minilm):
    assert make_embedder("minilm") is default_embedder()
    q, para, other = minilm.embed(
        [
            "show every step of the derivation",
            "write out all the derivation steps",
            "the train to Lyon leaves at noon",
        ]
    )
    assert q @ para > q @ other + 0.3


def test_embedder_registry_names_what_it_knows(bert_dir):
    with pytest.raises(ValueError, match="minilm.*openai.*transformers"):
        make_embedder("word2vec")
    with pytest.raises(ValueError, match="path"):
        make_embedder("transformers")
    with pytest.raises(TypeError, match="poolng"):
        make_embedder("transformers", path=bert_dir, poolng="mean")
    with pytest.raises(ValueError, match="pooling"):
        TransformersEmbedder(bert_dir, pooling="max")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rerankers


def test_yes_no_reranker_is_log_p_yes_of_a_softmax_over_two_logits(llama_dir):
    docs = ["the cat sat on the mat", "code", "a dog ran fast on the red rug yes", "math step"]
    rr = YesNoReranker(llama_dir, batch_size=3)  # batches of unequal lengths: left padding
    got = rr.score("the cat", docs)
    assert rr.yes_id == rr.tokenizer.convert_tokens_to_ids("yes")
    model = LlamaForCausalLM.from_pretrained(str(llama_dir), local_files_only=True).eval()
    for doc, p in zip(docs, got, strict=True):
        ids = torch.tensor([rr.prompt_ids("the cat", doc)])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, -1]
        yes, no = float(logits[rr.yes_id]), float(logits[rr.no_id])
        # normalized over the (no, yes) pair, not over the vocabulary
        assert p == pytest.approx(yes - np.logaddexp(yes, no), abs=1e-5)
    assert got.shape == (4,) and ((got >= MIN_LOG_P) & (got <= 0)).all()
    assert rr.score("q", []).shape == (0,)


def test_yes_no_reranker_refuses_answer_words_it_cannot_read(llama_dir):
    with pytest.raises(ValueError, match="maybe"):
        YesNoReranker(llama_dir, yes_token="maybe")


@pytest.mark.parametrize("labels", [1, 2])
def test_cross_encoder_scores(tmp_path, labels):
    torch.manual_seed(2)
    tok = _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], bert_style=True)
    path = _save(BertForSequenceClassification(_bert_config(num_labels=labels)), tok, tmp_path)
    rr = make_reranker("cross-encoder", path=str(path), endpoint="rerank")  # endpoint: dropped
    assert isinstance(rr, CrossEncoderReranker)
    docs = ["the cat sat", "math step list", "red"]
    got = rr.score("the cat", docs)
    model = BertForSequenceClassification.from_pretrained(str(path)).eval()
    for doc, p in zip(docs, got, strict=True):
        with torch.inference_mode():
            logits = model(**tok("the cat", doc, return_tensors="pt")).logits[0].double()
        want = torch.nn.functional.logsigmoid(logits[0]) if labels == 1 else torch.log_softmax(logits, 0)[1]
        assert p == pytest.approx(float(want), abs=1e-5)


def test_no_reranker_is_the_cosine_default():
    assert make_reranker("none").score("q", ["d"]) is None
    assert bind_reranker(NoReranker(), "q", None) is None
    assert bind_reranker(None, "q", None) is None
    with pytest.raises(ValueError, match="known: cross-encoder"):
        make_reranker("colbert")


class _Fixed:
    name = "fixed"

    def __init__(self, scores: dict[str, float]):
        self.scores = scores
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, documents: list[str]) -> np.ndarray:
        self.calls.append((query, documents))
        return np.array([self.scores[d] for d in documents])


def test_retrieve_takes_a_text_reranker_with_the_query_and_notes():
    rng = np.random.default_rng(0)
    vecs = _unit(rng.normal(size=(3, 8))).astype(np.float32)
    ids = ["c0", "c1", "c2"]
    notes = {c: f"When note {c}, do {c}." for c in ids}
    emb = {
        c: CardEmbedding(v.tolist(), v.tolist(), [0.0] * 4, "p")
        for c, v in zip(ids, vecs, strict=True)
    }
    index = UserIndex({c: vecs[i] for i, c in enumerate(ids)})
    fixed = _Fixed({notes["c0"]: -2.3, notes["c1"]: -0.1, notes["c2"]: -0.7})
    args = (emb, None, PolicyConfig(list_size=2), np.random.default_rng(0), False, "p")
    trace = retrieve("u", vecs[0], index, *args, rerank=fixed, query="q?", notes=notes)
    assert fixed.calls[0][0] == "q?"
    assert dict(zip(trace.candidate_ids, trace.base_scores, strict=True)) == pytest.approx(
        {"c0": -2.3, "c1": -0.1, "c2": -0.7}
    )
    assert [trace.candidate_ids[i] for i in trace.chosen] == ["c1", "c2"]
    plain = retrieve("u", vecs[0], index, *args)
    none = retrieve("u", vecs[0], index, *args, rerank=NoReranker())
    assert plain.base_scores == none.base_scores
    with pytest.raises(ValueError, match="notes"):
        retrieve("u", vecs[0], index, *args, rerank=fixed, query="q?")
    bad = _Fixed({n: 0.5 for n in notes.values()})  # a probability, not its log
    with pytest.raises(ValueError, match=r"outside \[log\(1e-6\), 0\]"):
        retrieve("u", vecs[0], index, *args, rerank=bad, query="q?", notes=notes)


# --------------------------------------------------------------------------- HTTP backends


class _Handler(BaseHTTPRequestHandler):
    """/v1/embeddings: [len(text), 2, count of "a"] in reverse order with indices;
    /rerank: 1 / (1 + len(doc)), best first; /score: len(doc) / 100 (or 2 * that under
    /logits); /junk/...: not JSON; /short/...: one item too few; /bad/...: HTTP 400;
    /flaky/...: 503 on every other call."""

    requests: list[dict[str, Any]] = []
    flaky = 0

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        path = self.path
        if path.startswith("/junk/"):
            return self._send(200, b"<html>bad gateway</html>")
        if path.startswith("/bad/"):
            return self._send(400, b'{"error": "model not found"}')
        if path.startswith("/flaky/"):
            type(self).flaky += 1
            if type(self).flaky % 2:
                return self._send(503, b"busy")
            path = path[len("/flaky") :]
        short = path.startswith("/short/")
        if path.endswith("/embeddings"):
            texts = body["input"]
            data = [
                {"index": i, "embedding": [len(t), 2.0, t.count("a")]} for i, t in enumerate(texts)
            ][::-1]
            out: dict[str, Any] = {"data": data[1:] if short else data}
        elif path.endswith("/rerank"):
            results = [
                {"index": i, "relevance_score": 1 / (1 + len(d)), "document": {"text": d}}
                for i, d in enumerate(body["documents"])
            ]
            out = {"results": sorted(results, key=lambda r: -r["relevance_score"])}
        elif path.endswith("/score"):
            scale = 2 if path.startswith("/logits/") else 1
            data = [
                {"index": i, "score": scale * len(d) / 100} for i, d in enumerate(body["text_2"])
            ]
            out = {"data": data}
        else:
            return self._send(404, b"no route")
        self._send(200, json.dumps(out).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _expected(texts: list[str]) -> np.ndarray:
    return _unit(np.array([[len(t), 2.0, t.count("a")] for t in texts]))


def test_openai_embeddings_batches_reorders_and_normalizes(server):
    _Handler.requests.clear()
    emb = make_embedder(
        "openai", base_url=server, model="m", api_key="k", batch_size=2, device="cpu"
    )
    assert isinstance(emb, OpenAIEmbeddings)
    texts = ["a", "banana", "cat", "", "data"]
    np.testing.assert_allclose(emb.embed(texts), _expected(texts), rtol=1e-6)
    assert emb.dim == 3 and len(_Handler.requests) == 3
    first = _Handler.requests[0]
    assert first["path"] == "/v1/embeddings" and first["auth"] == "Bearer k"
    assert first["body"] == {"model": "m", "input": ["a", "banana"], "encoding_format": "float"}
    emb = OpenAIEmbeddings(server + "/v1", "m", query_prefix="query: ")
    np.testing.assert_allclose(emb.embed_queries(["x"]), _expected(["query: x"]), rtol=1e-6)
    assert _Handler.requests[-1]["path"] == "/v1/embeddings"


@pytest.mark.parametrize(
    ("prefix", "message"),
    [("/junk", "not JSON"), ("/short", "expected 'data' with 2"), ("/bad", "HTTP 400")],
)
def test_openai_embeddings_bad_replies_are_clear_errors(server, prefix, message):
    emb = OpenAIEmbeddings(server + prefix, "m", retries=0)
    with pytest.raises(ModelServerError, match=message):
        emb.embed(["a", "b"])


def test_http_clients_retry_a_busy_server(server):
    emb = OpenAIEmbeddings(server + "/flaky", "m", retries=1)
    np.testing.assert_allclose(emb.embed(["ab"]), _expected(["ab"]), rtol=1e-6)


def test_http_reranker_rerank_and_score_endpoints(server):
    docs = ["aaaa", "b", "cc"]
    rerank = make_reranker("http", base_url=server, model="r", device="cpu", path="")
    assert isinstance(rerank, HTTPReranker)
    np.testing.assert_allclose(rerank.score("q", docs), np.log([1 / 5, 1 / 2, 1 / 3]))
    assert _Handler.requests[-1]["body"] == {
        "model": "r",
        "query": "q",
        "documents": docs,
        "top_n": 3,
    }
    score = HTTPReranker(server + "/v1", "r", endpoint="score")
    np.testing.assert_allclose(score.score("q", docs), np.log([0.04, 0.01, 0.02]))
    assert _Handler.requests[-1]["path"] == "/v1/score"
    assert _Handler.requests[-1]["body"] == {"model": "r", "text_1": "q", "text_2": docs}
    logits = HTTPReranker(server + "/logits", "r", endpoint="score")
    with pytest.raises(ModelServerError, match="sigmoid=True"):
        logits.score("q", ["x" * 80])
    sig = HTTPReranker(server + "/logits", "r", endpoint="score", sigmoid=True)
    assert sig.score("q", ["x" * 80])[0] == pytest.approx(-np.log1p(np.exp(-1.6)))
    with pytest.raises(ModelServerError, match="not JSON"):
        HTTPReranker(server + "/junk", "r", retries=0).score("q", docs)
    with pytest.raises(TypeError, match="bogus"):
        make_reranker("http", base_url=server, model="r", bogus=1)


# --------------------------------------------------------------------------- projection


def test_pca_rows_are_the_principal_directions():
    rng = np.random.default_rng(0)
    scales = np.linspace(5.0, 0.5, 12)
    x = rng.normal(size=(400, 12)) * scales @ np.linalg.qr(rng.normal(size=(12, 12)))[0] + 3.0
    p = fit_pca_projection(x, dim=4, version="pca-test")
    assert p.version == "pca-test" and p.matrix.shape == (4, 12)
    np.testing.assert_allclose(p.matrix @ p.matrix.T, np.eye(4), atol=1e-6)
    np.testing.assert_allclose(p.mean, x.mean(0), atol=1e-5)
    _, vecs = np.linalg.eigh(np.cov(x.T))
    top = vecs[:, ::-1][:, :4].T  # eigenvectors of the covariance, largest first
    np.testing.assert_allclose(np.abs((p.matrix @ top.T).diagonal()), 1.0, atol=1e-4)
    again = fit_pca_projection(x, dim=4)
    assert (
        again.version.startswith("pca-12x4-") and again.version == fit_pca_projection(x, 4).version
    )


def test_pca_with_fewer_samples_than_dim_completes_an_orthonormal_basis():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 32))
    p = fit_pca_projection(x, dim=16)
    np.testing.assert_allclose(p.matrix @ p.matrix.T, np.eye(16), atol=1e-6)
    centered = x - x.mean(0)
    # rank 4: the first four rows span the data, the rest are orthogonal to it
    np.testing.assert_allclose(np.linalg.norm(centered @ p.matrix[4:].T), 0.0, atol=1e-5)
    kept = np.linalg.norm(centered @ p.matrix[:4].T) / np.linalg.norm(centered)
    assert kept == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(p.matrix, fit_pca_projection(x, dim=16).matrix)


def test_projection_files_round_trip(tmp_path):
    p = fit_pca_projection(np.random.default_rng(2).normal(size=(50, 8)), dim=3, version="v1")
    save_projection(p, tmp_path / "p.bin", corpus="x")
    back = load_projection_file(tmp_path / "p.bin")
    assert isinstance(back, Projection) and back.version == "v1"
    np.testing.assert_array_equal(back.matrix, p.matrix)
    assert projection_metadata(tmp_path / "p.bin") == {"version": "v1", "corpus": "x"}


def test_shipped_pca_projection_fits_the_shipped_corpus(minilm):
    notes = read_corpus()
    assert len(notes) >= 300 and len(set(notes)) == len(notes)
    assert all(re.fullmatch(r"When [^,]+.*, .+\.", n) for n in notes)
    p = load_projection("pca")
    assert p is load_projection("pca") and p.matrix.shape == (256, 384)
    np.testing.assert_allclose(p.matrix @ p.matrix.T, np.eye(256), atol=1e-5)
    meta = projection_metadata(Path(str(DATA / PCA_FILE)))
    assert meta["version"] == p.version and p.version.startswith("pca-384x256-")
    assert meta["corpus_sha256"] == hashlib.sha256("\n".join(notes).encode()).hexdigest()
    assert meta["embedder"] == "all-MiniLM-L6-v2" and int(meta["notes"]) == len(notes)
    # on notes it was fitted on, PCA keeps more of the spread than a random basis does
    e = minilm.embed(notes[::5])
    spread = {
        name: np.square(proj.project(e) - proj.project(e).mean(0)).sum()
        for name, proj in (("pca", p), ("random", random_projection()))
    }
    assert spread["pca"] > 1.2 * spread["random"]


def test_load_projection_names_the_known_kinds():
    assert load_projection("random", seed=3).version == "rand-384x256-s3"
    with pytest.raises(ValueError, match="known: random, pca"):
        load_projection("umap")
    with pytest.raises(ValueError, match="refit"):
        load_projection("pca", dim=128)


def test_the_facade_ranks_with_a_configured_reranker_and_the_pca_projection(llama_dir, minilm):
    from vars_core import PersonalizedLLM
    from vars_core.rerankers import YesNoReranker

    llm = PersonalizedLLM.from_config(
        {"reranker": {"kind": "yesno", "path": str(llama_dir)}, "projection": "pca"}
    )
    llm.engine._embedder = minilm
    llm.chat("rr", "When writing python code, use snake_case names. When answering a medical question, remind me to consult a doctor. Hi?")
    llm.reset_session("rr")
    result = llm.chat("rr", "Writing python code: how should I name a helper?")
    assert result.debug.cards
    query = "Writing python code: how should I name a helper?"
    expected = YesNoReranker(llama_dir).score(query, [c.note for c in result.debug.cards])
    assert np.allclose([c.base_score for c in result.debug.cards], expected, atol=1e-5)
    card = next(iter(llm.store.user("rr").embeddings().values()))
    assert card.projection_version.startswith("pca-")
