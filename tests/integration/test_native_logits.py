"""The engine's fast paths to llama.cpp's outputs agree with llama.cpp's own
accessors (real SmolLM2, in-process): the logits view kept across decodes,
the one argmax per decode that serves every greedy row, and the per-token
caches of piece bytes and end-of-generation flags."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import llama_cpp as lc
import numpy as np
import pytest

from edged.backends.llamacpp.native import (
    NativeContext,
    NativeModel,
    Offload,
    batch_invariance,
)


@pytest.fixture(scope="module")
def model_path(smollm2_store: Path) -> str:
    blobs = [p for p in smollm2_store.rglob("sha256-*") if p.is_file()]
    return str(max(blobs, key=lambda p: p.stat().st_size))


@pytest.fixture(scope="module")
def model(model_path: str) -> Iterator[NativeModel]:
    m = NativeModel.load(model_path, offload=Offload(0))
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


def test_this_llama_cpp_has_batch_invariant_attention() -> None:
    """The installer's build carries the patches the rows tests below need (a
    stock llama-cpp-python limits speculation to below position 256); unset,
    EDGED_BATCH_INVARIANT means level 1."""
    assert "EDGED_BATCH_INVARIANT" not in os.environ
    assert batch_invariance() == 1, "llama-cpp-python was not built by installer/llama_build.py"


def rows_match(model: NativeModel, pre: int, rows: int) -> bool:
    """Whether ``rows`` rows of a sequence after ``pre`` tokens, in one step beside
    another sequence's prefill, give bit-identical logits to decoding them one
    at a time alone."""
    text = "The quick brown fox jumps over the lazy dog. " * 120
    toks = model.tokenize(text, add_special=True, parse_special=False)
    assert len(toks) > pre + rows
    c = NativeContext(model, n_ctx=3 * 1024, n_seq=3, n_batch=512, threads=2)
    try:
        for seq in (0, 1):
            for start in range(0, pre, 256):
                end = min(pre, start + 256)
                c.decode([(toks[p], p, seq, False) for p in range(start, end)])
        single = []
        for p in range(pre, pre + rows):
            c.decode([(toks[p], p, 0, True)])
            single.append(c.logits(0).copy())
        others = [(t, p, 2, False) for p, t in enumerate(toks[:100])]
        c.decode([(toks[p], p, 1, True) for p in range(pre, pre + rows)] + others)
        return all(np.array_equal(c.logits(k), single[k]) for k in range(rows))
    finally:
        c.free()


@pytest.mark.parametrize(
    ("pre", "rows"),
    [(20, 33), (223, 33), (300, 33), (900, 33)],
    ids=["start", "below-256", "past-256", "past-512"],
)
def test_rows_of_a_sequence_are_computed_as_one_token_decodes(
    model: NativeModel, pre: int, rows: int
) -> None:
    """What speculative verification (K_MAX + 1 rows) and the prompt tail
    (TAIL_ROWS rows with the last token) rely on: a sequence's rows in one step
    give bit-identical logits to decoding them one at a time alone, whatever
    else shares the batch, at any position (a stock llama.cpp: below 256)."""
    from edged.backends.llamacpp.engine import TAIL_ROWS
    from edged.backends.speculative import K_MAX

    assert rows > max(K_MAX, TAIL_ROWS)
    assert rows_match(model, pre, rows)


LEVEL_CHILD = """
import json, sys
from edged.backends.llamacpp.native import NativeModel, Offload, batch_invariance
from tests.integration.test_native_logits import rows_match
m = NativeModel.load(sys.argv[1], offload=Offload(0))
cases = [(900, 33), (600, 100)]
print(json.dumps([batch_invariance(), *(rows_match(m, p, r) for p, r in cases)]))
"""


def test_the_switch_levels_do_what_they_say(model_path: str) -> None:
    """EDGED_BATCH_INVARIANT, read once per process by ggml: 0 is stock llama.cpp
    (a one-row decode past position 256 is computed differently), 1 is exact up
    to 63 rows anywhere but not for a 100-row prompt chunk (tiled), 2 is exact
    for that too."""
    got = {}
    for level in ("0", "1", "2"):
        env = dict(os.environ, EDGED_BATCH_INVARIANT=level)
        done = subprocess.run(
            [sys.executable, "-c", LEVEL_CHILD, model_path],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert done.returncode == 0, done.stderr[-2000:]
        got[level] = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"0": [0, False, False], "1": [1, True, False], "2": [2, True, True]}
