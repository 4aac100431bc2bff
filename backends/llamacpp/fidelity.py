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


def open_teacher_forced(
    path: str, *, window: int, batch: int = BATCH, threads: int = 2, kv_type: str = "f16"
) -> LlamaTeacherForced:
    """The backend's ``teacher_forced`` hook: a GGUF with a ``kv_type`` KV cache."""
    return LlamaTeacherForced(Side(path, kv_type), window=window, batch=batch, threads=threads)


class LlamaGreedy:
    """A GGUF on llama.cpp (CPU) as a :class:`~edged.backends.fidelity.GreedySource`:
    the reference side of a greedy comparison."""

    def __init__(self, path: str, *, threads: int = 2, kv_type: str = "f16") -> None:
        self._path, self._threads, self._kv_type = path, threads, kv_type
        self._model = NativeModel.load(path, offload=offload_for("cpu", 0))

    def n_vocab(self) -> int:
        return self._model.n_vocab()

    def continue_greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        """Every prompt in its own sequence of one context, decoded together."""
        if not prompts:
            return []
        per_seq = max(len(p) for p in prompts) + new_tokens + 1
        ctx = NativeContext(
            self._model,
            n_ctx=per_seq * len(prompts),
            n_seq=len(prompts),
            n_batch=BATCH,
            threads=self._threads,
            kv_type=self._kv_type,
        )
        try:
            entries = [
                (t, i, seq, i == len(p) - 1)
                for seq, p in enumerate(prompts)
                for i, t in enumerate(p)
            ]
            out: list[list[int]] = [[] for _ in prompts]
            for off in range(0, len(entries), BATCH):
                part = entries[off : off + BATCH]
                ctx.decode(part)
                for k, e in enumerate(part):
                    if e[3]:  # a prompt's last token: its first greedy token
                        out[e[2]].append(ctx.greedy(k))
            while len(out[0]) < new_tokens:
                step = [
                    (o[-1], len(p) + len(o) - 1, s, True)
                    for s, (p, o) in enumerate(zip(prompts, out, strict=True))
                ]
                ctx.decode(step)
                for k, e in enumerate(step):
                    out[e[2]].append(ctx.greedy(k))
            return out
        finally:
            ctx.free()

    def close(self) -> None:
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
