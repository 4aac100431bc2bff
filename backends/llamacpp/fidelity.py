"""Teacher-forced logits from llama.cpp contexts, for :mod:`edged.backends.fidelity`.

:class:`LlamaTeacherForced` reads a GGUF with a KV cache type and returns the
logits after every position a batch at a time (the generic
:func:`~edged.backends.fidelity.measure` compares two sources window by window).
:func:`measure` compares two llama.cpp sides, the same GGUF with another KV
cache type or another GGUF of the same model.

Blocking and CPU-heavy: run it in a child process (``python -m bench.fidelity``),
never on the daemon's event loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from edged.backends import fidelity
from edged.backends.fidelity import Fidelity
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


class LlamaTeacherForced:
    """A GGUF on llama.cpp (CPU) as a :class:`~edged.backends.fidelity.TeacherForced`."""

    def __init__(self, side: Side, *, window: int, batch: int = BATCH, threads: int = 2) -> None:
        self._model = NativeModel.load(side.model_path, offload=offload_for("cpu", 0))
        try:
            self._ctx = NativeContext(
                self._model,
                n_ctx=window,
                n_seq=1,
                n_batch=max(1, min(batch, window)),
                threads=threads,
                kv_type=side.kv_type,
                flash_attn=side.flash_attn,
            )
        except BaseException:
            self._model.free()
            raise

    def n_vocab(self) -> int:
        return self._model.n_vocab()

    def logits(self, piece: Sequence[int], batch: int) -> Iterator[Any]:
        self._ctx.seq_rm(0, 0, -1)
        for off in range(0, len(piece), batch):
            part = piece[off : off + batch]
            self._ctx.decode([(t, off + i, 0, True) for i, t in enumerate(part)])
            yield self._ctx.all_logits()

    def close(self) -> None:
        self._ctx.free()
        self._model.free()


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
    opened: list[LlamaTeacherForced] = []
    try:
        for side in (reference, candidate):
            opened.append(LlamaTeacherForced(side, window=window, batch=batch, threads=threads))
        ref, cand = opened
        return fidelity.measure(ref, cand, tokens, window=window, batch=batch)
    finally:
        for source in opened:
            source.close()


def tokenize(model_path: str, text: str) -> list[int]:
    """``text`` as ``model_path``'s tokens (with its BOS where it adds one)."""
    model = NativeModel.load(model_path, offload=offload_for("cpu", 0))
    try:
        return model.tokenize(text, add_special=True, parse_special=False)
    finally:
        model.free()
