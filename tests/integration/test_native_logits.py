"""The engine's fast paths to llama.cpp's outputs agree with llama.cpp's own
accessors (real SmolLM2, in-process): the logits view kept across decodes,
the one argmax per decode that serves every greedy row, and the per-token
caches of piece bytes and end-of-generation flags."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import llama_cpp as lc
import numpy as np
import pytest

from edged.backends.llamacpp.native import NativeContext, NativeModel, Offload


@pytest.fixture(scope="module")
def model(smollm2_store: Path) -> Iterator[NativeModel]:
    blobs = [p for p in smollm2_store.rglob("sha256-*") if p.is_file()]
    m = NativeModel.load(str(max(blobs, key=lambda p: p.stat().st_size)), offload=Offload(0))
    yield m
    m.free()


@pytest.fixture
def ctx(model: NativeModel) -> Iterator[NativeContext]:
    c = NativeContext(model, n_ctx=4 * 256, n_seq=4, n_batch=64, threads=2)
    yield c
    c.free()


def row_from_llama(ctx: NativeContext, index: int, n_vocab: int) -> np.ndarray:
    """Batch entry ``index``'s logits through llama_get_logits_ith (a copy)."""
    ptr = lc.llama_get_logits_ith(ctx.ctx, index)
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_vocab,))


def test_rows_and_greedy_match_llama_after_every_shape_of_batch(
    model: NativeModel, ctx: NativeContext
) -> None:
    n_vocab = int(lc.llama_vocab_n_tokens(model.vocab))
    prompts = [model.tokenize(t, add_special=True, parse_special=False) for t in (
        "The capital of France is",
        "Two plus two equals",
        "My favourite fruit is the",
    )]  # fmt: skip
    # One output, then three (one per sequence, prompt ends), then one again,
    # then two: the kept view must follow every change in the row count.
    batches: list[list[tuple[int, int, int, bool]]] = [
        [(t, p, 0, p == len(prompts[0]) - 1) for p, t in enumerate(prompts[0])],
        [(t, p, s, p == len(prompts[s]) - 1) for s in (1, 2) for p, t in enumerate(prompts[s])]
        + [(prompts[0][-1], len(prompts[0]), 0, True)],
        [(prompts[1][-1], len(prompts[1]), 1, True)],
        [(prompts[2][-1], len(prompts[2]), 2, True), (prompts[1][0], len(prompts[1]) + 1, 1, True)],
    ]
    for entries in batches:
        ctx.decode(entries)
        wanted = [i for i, e in enumerate(entries) if e[3]]
        for i in wanted:
            expected = row_from_llama(ctx, i, n_vocab)
            assert np.array_equal(ctx.logits(i), expected), f"row of entry {i}"
            assert ctx.greedy(i) == int(expected.argmax())
        if len(wanted) > 1:  # the rows differ, so a wrong row would be caught
            assert not np.array_equal(ctx.logits(wanted[0]), ctx.logits(wanted[-1]))


def test_cached_pieces_and_eog_match_llama(model: NativeModel) -> None:
    vocab = model.vocab
    tokens = [*range(0, 300), int(lc.llama_vocab_eos(vocab)), int(lc.llama_vocab_bos(vocab))]
    for _ in range(2):  # the second pass answers from the caches
        for t in tokens:
            buf = ctypes.create_string_buffer(256)
            n = lc.llama_token_to_piece(vocab, t, buf, len(buf), 0, False)
            assert model.piece(t) == buf.raw[:n]
            assert model.is_eog(t) == bool(lc.llama_vocab_is_eog(vocab, t))
    assert model.is_eog(int(lc.llama_vocab_eos(vocab)))


@pytest.mark.parametrize("at", ["start", "limit"])
def test_few_rows_of_a_sequence_are_computed_as_one_token_decodes(
    model: NativeModel, at: str
) -> None:
    """What speculative verification (K_MAX + 1 rows) and the prompt tail
    (TAIL_ROWS rows with the last token) rely on: a sequence's rows in one step,
    up to that many and below position EXACT_ROWS_BELOW, give bit-identical
    logits to decoding them one at a time, whatever else shares the batch."""
    from edged.backends.llamacpp.engine import EXACT_ROWS_BELOW, TAIL_ROWS
    from edged.backends.speculative import K_MAX

    rows = max(TAIL_ROWS, K_MAX + 1)
    pre = 20 if at == "start" else EXACT_ROWS_BELOW - rows
    text = "The quick brown fox jumps over the lazy dog. " * 30
    toks = model.tokenize(text, add_special=True, parse_special=False)
    assert len(toks) > pre + rows
    c = NativeContext(model, n_ctx=3 * 512, n_seq=3, n_batch=256, threads=2)
    try:
        for seq in (0, 1):
            c.decode([(t, p, seq, False) for p, t in enumerate(toks[:pre])])
        single = []
        for p in range(pre, pre + rows):
            c.decode([(toks[p], p, 0, True)])
            single.append(c.logits(0).copy())
        # the same rows at once, beside another sequence's long prefill
        others = [(t, p, 2, False) for p, t in enumerate(toks[:100])]
        c.decode([(toks[p], p, 1, True) for p in range(pre, pre + rows)] + others)
        for k in range(rows):
            assert np.array_equal(c.logits(k), single[k]), f"row {k} differs"
    finally:
        c.free()
