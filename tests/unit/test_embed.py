"""The pure parts of embeddings: truncation policy, batch packing, normalizing,
the pipe's vector encoding, joining worker answers, request parsing in the
service and the HTTP doors, the limits, and which GGUFs are embedding models."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from edged.backends import toolkit
from edged.backends.base import Capabilities, Embeddings, Job, Sampling
from edged.common.errors import FailedPrecondition, InvalidArgument
from edged.common.model_facts import is_embedding_metadata, is_embedding_model
from edged.daemon.config import Limits
from edged.daemon.http import ollama as ollama_door
from edged.daemon.http import openai as openai_door
from edged.daemon.http.errors import HttpError
from edged.daemon.limits import Limiter
from edged.daemon.scheduler import join_embeddings
from edged.daemon.services.inference import MAX_EMBED_INPUTS, embed_inputs
from edged.v1 import edged_pb2 as pb

# ------------------------------------------------------------------ truncation


def test_inputs_within_the_context_are_kept_whole() -> None:
    out, cut = toolkit.fit_to_context([[1, 2, 3], [4]], 3, truncate=True, keep_last=True)
    assert out == [[1, 2, 3], [4]] and cut == ()


def test_truncation_cuts_and_reports_the_indices() -> None:
    toks = [[1, 2], [1, 5, 6, 7, 9], [1, 8, 8, 8, 8, 9]]
    out, cut = toolkit.fit_to_context(toks, 4, truncate=True, keep_last=False)
    assert out == [[1, 2], [1, 5, 6, 7], [1, 8, 8, 8]] and cut == (1, 2)
    out, cut = toolkit.fit_to_context(toks, 4, truncate=True, keep_last=True)
    assert out == [[1, 2], [1, 5, 6, 9], [1, 8, 8, 9]] and cut == (1, 2)


def test_without_truncation_an_over_long_input_is_named() -> None:
    with pytest.raises(InvalidArgument, match="input 1 is 5 tokens, over the model's context of 4"):
        toolkit.fit_to_context([[1], [1, 2, 3, 4, 5]], 4, truncate=False, keep_last=True)
    with pytest.raises(InvalidArgument, match="input 0 is empty"):
        toolkit.fit_to_context([[]], 4, truncate=True, keep_last=True)


# ------------------------------------------------------------------ batches


def test_batches_respect_tokens_and_sequences() -> None:
    groups = [list(g) for g in toolkit.pack_batches([3, 3, 3, 1, 4], 6, 10)]
    assert groups == [[0, 1], [2, 3], [4]]
    groups = [list(g) for g in toolkit.pack_batches([1] * 5, 100, 2)]
    assert groups == [[0, 1], [2, 3], [4]]
    assert list(toolkit.pack_batches([], 10, 2)) == []
    assert [list(g) for g in toolkit.pack_batches([10, 10], 10, 4)] == [[0], [1]]


def test_every_input_lands_in_exactly_one_batch() -> None:
    rng = np.random.default_rng(7)
    lengths = [int(n) for n in rng.integers(1, 50, size=300)]
    groups = list(toolkit.pack_batches(lengths, 64, 8))
    assert [i for g in groups for i in g] == list(range(300))
    for g in groups:
        assert len(g) <= 8 and sum(lengths[i] for i in g) <= 64


# ------------------------------------------------------------------ vectors


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    rows = toolkit.l2_normalize([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
    assert rows.dtype == np.float32
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])


def test_the_pipe_carries_little_endian_float32_rows() -> None:
    e = toolkit.embeddings_of(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 7, (1,))
    assert e.dimensions == 3 and e.count == 2 and e.prompt_tokens == 7 and e.truncated == (1,)
    assert np.frombuffer(e.vectors, "<f4").tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_worker_answers_join_in_order() -> None:
    a = toolkit.embeddings_of(np.ones((2, 2)), 5, (0,))
    b = toolkit.embeddings_of(np.zeros((1, 2)), 3, ())
    c = Embeddings(b.vectors, 2, 3, (2,))
    joined = join_embeddings([a, c], 2)
    assert joined.count == 3 and joined.prompt_tokens == 8 and joined.truncated == (0, 2)
    assert np.frombuffer(joined.vectors, "<f4").tolist() == [1, 1, 1, 1, 0, 0]
    assert join_embeddings([], 384).dimensions == 384


def test_openai_base64_is_little_endian_float32() -> None:
    values = [0.5, -1.25, 3.0]
    raw = base64.b64decode(openai_door.base64_floats(values))
    assert np.frombuffer(raw, "<f4").tolist() == values


# ------------------------------------------------------------------ which engine


def test_encoders_and_declared_pooling_make_embedding_models() -> None:
    assert is_embedding_model("bert", False)
    assert is_embedding_model("nomic-bert", False)
    assert is_embedding_model("qwen3", True)  # Qwen3-Embedding declares last-token pooling
    assert not is_embedding_model("llama", False)
    assert is_embedding_metadata({"general.architecture": "bert"})
    assert is_embedding_metadata({"general.architecture": "qwen3", "qwen3.pooling_type": "3"})
    assert not is_embedding_metadata({"general.architecture": "llama"})


def test_an_embedding_model_refuses_generation_by_capability() -> None:
    caps = Capabilities("llama.cpp", "cpu", ("gguf",), 512, 1, True, False, embeddings=True)
    with pytest.raises(FailedPrecondition, match="embedding model: use Embed"):
        toolkit.check_controls(Job(1, Sampling(), prompt="hi"), caps)


# ------------------------------------------------------------------ the service


def test_service_inputs_texts_then_token_inputs() -> None:
    req = pb.EmbedRequest(model="m", inputs=["a", "b"], token_inputs=[pb.TokenIds(ids=[5, 6])])
    assert embed_inputs(req) == ["a", "b", (5, 6)]


@pytest.mark.parametrize(
    ("req", "says"),
    [
        (pb.EmbedRequest(model="m"), "inputs is empty"),
        (pb.EmbedRequest(model="m", inputs=["a", ""]), "input 1 is empty"),
        (pb.EmbedRequest(model="m", inputs=["a\x00"]), "NUL"),
        (
            pb.EmbedRequest(model="m", inputs=["a"], token_inputs=[pb.TokenIds()]),
            "input 1 is empty",
        ),
        (pb.EmbedRequest(model="m", inputs=["a"] * (MAX_EMBED_INPUTS + 1)), "at most 2048"),
    ],
)
def test_service_refuses_bad_inputs(req: pb.EmbedRequest, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        embed_inputs(req)


def test_the_prompt_byte_limit_counts_every_input() -> None:
    limiter = Limiter(Limits(max_prompt_bytes=10), lambda: 0)
    method = "/edged.v1.Inference/Embed"
    assert limiter.check(method, pb.EmbedRequest(inputs=["hello", "world"])) is None
    refused = limiter.refusal(method, pb.EmbedRequest(inputs=["hello", "world!"]))
    assert refused is not None and refused[0] == "size" and "11 bytes" in refused[1]
    tokens = pb.EmbedRequest(token_inputs=[pb.TokenIds(ids=[1, 2, 3])])
    assert limiter.refusal(method, tokens) is not None  # 12 bytes of token ids


# ------------------------------------------------------------------ the doors


@pytest.mark.parametrize(
    ("value", "texts", "tokens"),
    [
        ("hi", ["hi"], []),
        (["a", "b"], ["a", "b"], []),
        ([1, 2, 3], [], [[1, 2, 3]]),
        ([[1, 2], [3]], [], [[1, 2], [3]]),
    ],
)
def test_openai_input_shapes(value: object, texts: list[str], tokens: list[list[int]]) -> None:
    assert openai_door.embedding_inputs(value) == (texts, tokens)


@pytest.mark.parametrize("value", [None, [], 5, ["a", 1], [[1], []], [True], [[-1]], [{"a": 1}]])
def test_openai_bad_inputs_are_a_400(value: object) -> None:
    with pytest.raises(HttpError) as err:
        openai_door.embedding_inputs(value)
    assert err.value.status == 400 and "input must be" in err.value.message


def test_openai_request_fields() -> None:
    req, encoding = openai_door.embedding_request(
        {"model": "m", "input": ["x"], "encoding_format": "base64", "dimensions": 384}
    )
    assert encoding == "base64" and req.dimensions == 384 and list(req.inputs) == ["x"]
    req, encoding = openai_door.embedding_request({"model": "m", "input": "x"})
    assert encoding == "float" and not req.HasField("dimensions")
    with pytest.raises(HttpError, match="encoding_format"):
        openai_door.embedding_request({"model": "m", "input": "x", "encoding_format": "int8"})
    with pytest.raises(HttpError, match="model is required"):
        openai_door.embedding_request({"input": "x"})


def test_ollama_request_fields() -> None:
    body = {"truncate": False, "keep_alive": "5m", "options": {"num_ctx": 1024}}
    req = ollama_door.embed_request(body, "m", ["a"])
    assert req.truncate is False and req.keep_alive_s == 300 and req.context_length == 1024
    req = ollama_door.embed_request({}, "m", ["a"])
    assert req.truncate is True and not req.HasField("keep_alive_s")
    with pytest.raises(HttpError, match="truncate"):
        ollama_door.embed_request({"truncate": "yes"}, "m", ["a"])
