"""Embeddings through every door, against a real daemon and all-MiniLM-L6-v2
(``all-minilm``, converted to an F16 GGUF by the pull): gRPC Inference.Embed,
the ``openai`` SDK on /v1/embeddings, the ``ollama`` SDK on /api/embed and
/api/embeddings, and ``edged embed``; with the refusals (generation on the
embedding model, embeddings from SmolLM2, ``dimensions``, over-long inputs
without truncation, too many inputs)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import ollama
import openai
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon

MODEL = "all-minilm"
DIMS = 384
TEXTS = [
    "The cat sat on the mat.",
    "A dog barked at the mailman all morning.",
    "Embeddings map text to vectors.",
    "The weather in Paris is mild in spring.",
]
LONG = "the quick brown fox jumps over the lazy dog " * 80  # ~720 tokens, context 512


@pytest.fixture(scope="module")
def emb(tmp_path_factory: pytest.TempPathFactory, minilm_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("embeddings")
    clone_store(minilm_store, root / "data")
    d = start_daemon(root)
    yield d
    d.stop()


def embed(d: Daemon, *texts: str, **fields: object) -> pb.EmbedResponse:
    req = pb.EmbedRequest(model=MODEL, inputs=list(texts), **fields)  # type: ignore[arg-type]
    reply: pb.EmbedResponse = d.inference.Embed(req, timeout=300)
    return reply


def rows(reply: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in reply.embeddings], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------ gRPC


def test_vectors_are_unit_length_and_identical_texts_agree(emb: Daemon) -> None:
    reply = embed(emb, TEXTS[0], TEXTS[1], TEXTS[0])
    v = rows(reply)
    assert v.shape == (3, DIMS) and reply.dimensions == DIMS
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # the same text at another place in a batch: equal up to float rounding
    assert np.allclose(v[0], v[2], atol=1e-6)
    again = rows(embed(emb, TEXTS[1], TEXTS[0], TEXTS[0]))
    assert np.array_equal(again, rows(embed(emb, TEXTS[1], TEXTS[0], TEXTS[0])))
    assert cosine(v[0], v[1]) < 0.9
    assert reply.model == "all-minilm:l6-v2" and reply.backend == "llama.cpp"
    assert reply.prompt_tokens > 0 and list(reply.truncated) == []


def test_similar_texts_are_closer_than_unrelated_ones(emb: Daemon) -> None:
    v = rows(embed(emb, "A kitten sleeps on the rug.", "A cat naps on the carpet.", "Tax law"))
    assert cosine(v[0], v[1]) > cosine(v[0], v[2]) + 0.2


def test_a_batch_equals_one_at_a_time(emb: Daemon) -> None:
    texts = [f"Sentence {i}: {TEXTS[i % 4]} ({'more words ' * (i % 7)})" for i in range(96)]
    embed(emb, "warm up")
    started = time.perf_counter()
    batch = rows(embed(emb, *texts))
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    single = np.vstack([rows(embed(emb, t)) for t in texts[:16]])
    single_s = time.perf_counter() - started
    print(
        f"\nembeddings: {len(texts) / batched_s:.0f} texts/s in one request, "
        f"{16 / single_s:.0f} texts/s one request each"
    )
    for i in range(16):
        assert cosine(batch[i], single[i]) > 0.9999


def test_normalize_off_gives_the_raw_pooled_vector(emb: Daemon) -> None:
    raw = rows(embed(emb, TEXTS[2], normalize=False))[0]
    unit = rows(embed(emb, TEXTS[2]))[0]
    assert abs(np.linalg.norm(raw) - 1.0) > 0.01
    assert np.allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)


def test_truncation_cuts_and_reports_or_refuses(emb: Daemon) -> None:
    reply = embed(emb, TEXTS[0], LONG)
    assert list(reply.truncated) == [1] and len(reply.embeddings) == 2
    assert reply.prompt_tokens <= 512 + 16
    with pytest.raises(grpc.RpcError) as err:
        embed(emb, TEXTS[0], LONG, truncate=False)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(err.value.details())
    assert "input 1 is" in details and "context of 512" in details


def test_token_inputs_embed_like_their_text(emb: Daemon) -> None:
    tokens = emb.models.Tokenize(
        pb.TokenizeRequest(model=MODEL, text=TEXTS[1], add_special=True), timeout=60
    ).tokens
    reply = emb.inference.Embed(
        pb.EmbedRequest(
            model=MODEL, inputs=[TEXTS[0]], token_inputs=[pb.TokenIds(ids=list(tokens))]
        ),
        timeout=60,
    )
    v = rows(reply)
    assert cosine(v[1], rows(embed(emb, TEXTS[1]))[0]) > 0.99999


def test_dimensions_other_than_the_models_are_refused(emb: Daemon) -> None:
    assert embed(emb, TEXTS[0], dimensions=DIMS).dimensions == DIMS
    with pytest.raises(grpc.RpcError) as err:
        embed(emb, TEXTS[0], dimensions=128)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "this model returns 384 dimensions" in str(err.value.details())


def test_bad_inputs_are_refused(emb: Daemon) -> None:
    for texts, says in (
        ((), "inputs is empty"),
        (("hello", ""), "input 1 is empty"),
        (("x",) * 2049, "at most 2048"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            embed(emb, *texts)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in str(err.value.details())


def test_generation_on_the_embedding_model_is_refused(emb: Daemon) -> None:
    with pytest.raises(grpc.RpcError) as err:
        for _ in emb.inference.Generate(pb.GenerateRequest(model=MODEL, prompt="hi"), timeout=60):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "all-minilm:l6-v2 is an embedding model: use Embed" in str(err.value.details())


def test_embeddings_from_a_chat_model_are_refused(daemon: Daemon) -> None:
    with pytest.raises(grpc.RpcError) as err:
        daemon.inference.Embed(pb.EmbedRequest(model="smollm2", inputs=["hi"]), timeout=120)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "smollm2:135m-q4_1 has no pooling for embeddings" in str(err.value.details())


# ------------------------------------------------------------------ OpenAI


@pytest.fixture(scope="module")
def oai(emb: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=emb.http_url + "/v1", api_key="sk-no-key", max_retries=0) as sdk:
        yield sdk


def test_openai_embeddings_float_and_base64_agree(emb: Daemon, oai: openai.OpenAI) -> None:
    as_float = oai.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    as_b64 = oai.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64
    assert [d.index for d in as_float.data] == [0, 1, 2, 3]
    assert as_float.model == MODEL and as_float.usage.prompt_tokens > 0
    assert as_float.usage.total_tokens == as_float.usage.prompt_tokens
    a = np.array([d.embedding for d in as_float.data])
    b = np.array([d.embedding for d in as_b64.data])
    assert a.shape == (4, DIMS) and np.array_equal(a.astype(np.float32), b.astype(np.float32))
    assert np.allclose(a, rows(embed(emb, *TEXTS)), atol=1e-6)


def test_openai_token_arrays(emb: Daemon, oai: openai.OpenAI) -> None:
    ids = list(
        emb.models.Tokenize(
            pb.TokenizeRequest(model=MODEL, text=TEXTS[0], add_special=True), timeout=60
        ).tokens
    )
    one = oai.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    two = oai.embeddings.create(model=MODEL, input=[ids, ids[:4]], encoding_format="float")
    text = oai.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert len(one.data) == 1 and len(two.data) == 2
    assert cosine(np.array(one.data[0].embedding), np.array(text.data[0].embedding)) > 0.99999
    assert one.usage.prompt_tokens == len(ids)


def test_openai_refusals(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="this model returns 384 dimensions"):
        oai.embeddings.create(model=MODEL, input="hi", dimensions=256)
    assert len(oai.embeddings.create(model=MODEL, input="hi", dimensions=DIMS).data) == 1
    with pytest.raises(openai.BadRequestError, match="input must be"):
        oai.embeddings.create(model=MODEL, input=[])
    with pytest.raises(openai.BadRequestError, match="is an embedding model"):
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="nosuch", input="hi")


# ------------------------------------------------------------------ Ollama


@pytest.fixture(scope="module")
def oll(emb: Daemon) -> Iterator[ollama.Client]:
    c = ollama.Client(host=emb.http_url, timeout=300)
    try:
        yield c
    finally:
        c.close()


def test_ollama_embed(emb: Daemon, oll: ollama.Client) -> None:
    r = oll.embed(model=MODEL, input=TEXTS[:2])
    v = np.array(r.embeddings)
    assert v.shape == (2, DIMS) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert r.prompt_eval_count and r.prompt_eval_count > 0
    assert r.total_duration and r.total_duration > 0
    assert np.allclose(v, rows(embed(emb, *TEXTS[:2])), atol=1e-6)
    one = oll.embed(model=MODEL, input=TEXTS[0])
    assert np.allclose(one.embeddings[0], v[0], atol=1e-6)
    # what Ollama clients check before embedding (Open WebUI, Continue)
    assert oll.show(MODEL).capabilities == ["embedding"]


def test_ollama_legacy_embeddings_are_not_normalized(emb: Daemon, oll: ollama.Client) -> None:
    r = oll.embeddings(model=MODEL, prompt=TEXTS[2])
    raw = rows(embed(emb, TEXTS[2], normalize=False))[0]
    assert len(r.embedding) == DIMS and np.allclose(r.embedding, raw, atol=1e-5)


def test_ollama_truncate_and_refusals(oll: ollama.Client) -> None:
    assert len(oll.embed(model=MODEL, input=[LONG]).embeddings) == 1
    with pytest.raises(ollama.ResponseError) as err:
        oll.embed(model=MODEL, input=[LONG], truncate=False)
    assert err.value.status_code == 400 and "input 0 is" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400 and "is an embedding model" in err.value.error


# ------------------------------------------------------------------ CLI


def edged(d: Daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged.daemon.cli.main", "--no-autostart", *args],
        env=d.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_embed_prints_vectors(emb: Daemon) -> None:
    out = edged(emb, "embed", MODEL, "hello world")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and len(json.loads(lines[0])) == DIMS
    out = edged(emb, "embed", MODEL, stdin="one\n\ntwo\n")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2
    out = edged(emb, "embed", MODEL, "hi", LONG, "--json", "--no-normalize")
    doc = json.loads(out.stdout)
    assert doc["dimensions"] == DIMS and doc["truncated"] == [1] and doc["prompt_tokens"] > 0
    assert doc["model"] == "all-minilm:l6-v2" and len(doc["embeddings"]) == 2
    out = edged(emb, "embed", MODEL, LONG, "--no-truncate")
    assert out.returncode == 1 and "input 0 is" in out.stderr
