"""Teacher-forced logits from llama.cpp contexts, for :mod:`edged.backends.fidelity`.

A reference and a candidate (the same GGUF with another KV cache type, or
another GGUF of the same model) run in one process, window by window, a batch
at a time: both read the same tokens, every position's logits are compared
and dropped before the next batch, so memory stays one batch of logits each.
Windows of ``window`` tokens overlap by one token: every token after the
first is predicted exactly once, from at most ``window - 1`` tokens before it.

Blocking and CPU-heavy: run it in a child process (``python -m bench.fidelity``),
never on the daemon's event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edged.backends.fidelity import Fidelity, FidelityAccumulator
from edged.backends.llamacpp.native import NativeContext, NativeModel, offload_for
from edged.common.errors import InvalidArgument

BATCH = 512  # tokens per decode (logits of every one are kept: rows x vocab x 4 bytes)


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a GGUF and the KV cache type to run it with."""

    model_path: str
    kv_type: str = "f16"
    # flash attention (None: as the engine runs it, on for a quantized KV cache)
    flash_attn: bool | None = None


def _windows(tokens: list[int], window: int) -> Iterator[list[int]]:
    step = window - 1
    for start in range(0, max(1, len(tokens) - 1), step):
        piece = tokens[start : start + window]
        if len(piece) >= 2:
            yield piece


def _logits_per_batch(ctx: NativeContext, piece: list[int], batch: int) -> Iterator[Any]:
    """Logits after each position of ``piece`` (a fresh sequence), a batch at a time."""
    ctx.seq_rm(0, 0, -1)
    for off in range(0, len(piece), batch):
        part = piece[off : off + batch]
        ctx.decode([(t, off + i, 0, True) for i, t in enumerate(part)])
        yield ctx.all_logits()


def measure(
    reference: Side,
    candidate: Side,
    tokens: list[int],
    *,
    window: int = 512,
    threads: int = 2,
    batch: int = BATCH,
) -> Fidelity:
    """Compare ``candidate`` with ``reference`` over ``tokens`` (the reference's
    tokenization; both models must share the vocabulary)."""
    if window < 2:
        raise InvalidArgument("the window must be at least 2 tokens")
    batch = max(1, min(batch, window))
    models: dict[str, NativeModel] = {}
    contexts: list[NativeContext] = []
    try:
        for side in (reference, candidate):
            if side.model_path not in models:
                models[side.model_path] = NativeModel.load(
                    side.model_path, offload=offload_for("cpu", 0)
                )
        ref_model, cand_model = models[reference.model_path], models[candidate.model_path]
        if ref_model.n_vocab() != cand_model.n_vocab():
            raise InvalidArgument(
                f"the models' vocabularies differ ({ref_model.n_vocab()} and "
                f"{cand_model.n_vocab()} tokens): logits cannot be compared"
            )
        for model, side in ((ref_model, reference), (cand_model, candidate)):
            contexts.append(
                NativeContext(
                    model,
                    n_ctx=window,
                    n_seq=1,
                    n_batch=batch,
                    threads=threads,
                    kv_type=side.kv_type,
                    flash_attn=side.flash_attn,
                )
            )
        ref_ctx, cand_ctx = contexts
        acc = FidelityAccumulator()
        for piece in _windows(tokens, window):
            targets = piece[1:]
            ref_rows = _logits_per_batch(ref_ctx, piece, batch)
            cand_rows = _logits_per_batch(cand_ctx, piece, batch)
            for off, (ref, cand) in enumerate(zip(ref_rows, cand_rows, strict=True)):
                lo = off * batch
                want = targets[lo : lo + batch]  # the last position has no target
                # each view stays valid until its own context's next decode
                acc.add(ref[: len(want)], cand[: len(want)], want)
        return acc.result()
    finally:
        for ctx in contexts:
            ctx.free()
        for model in models.values():
            model.free()


def tokenize(model_path: str, text: str) -> list[int]:
    """``text`` as ``model_path``'s tokens (with its BOS where it adds one)."""
    model = NativeModel.load(model_path, offload=offload_for("cpu", 0))
    try:
        return model.tokenize(text, add_special=True, parse_special=False)
    finally:
        model.free()
