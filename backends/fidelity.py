"""Fidelity of a candidate (a KV cache type, a variant, a backend) against a reference.

Both read the same tokens teacher-forced (each position sees the true text
before it, never its own guesses) and give next-token logits at every position.
Compared per position:

- top-1 agreement: the share of positions where both put the same token first;
- mean KL divergence KL(reference || candidate) of the next-token distributions,
  in nats (0 for identical distributions);
- perplexity of each, over the true next tokens: ``exp(mean NLL)``.

Pure numpy; the engines that produce the logits live with their backend
(:mod:`edged.backends.llamacpp.fidelity`). The evaluation text ships with edged
(:func:`eval_text`): prose, code and chat turns written for the project.

Example::

    acc = FidelityAccumulator()
    acc.add(ref_logits, cand_logits, targets)  # (rows, vocab), (rows, vocab), (rows,)
    acc.result().agreement
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal, Protocol

import numpy as np

from edged.common.errors import InvalidArgument

# How a candidate was compared: "logits" (teacher-forced next-token
# distributions), "greedy" (greedy continuations of short prompts, for a
# backend that cannot return logits; no KL or perplexity then: both read 0) or
# "reference" (the candidate is the reference itself).
Measure = Literal["logits", "greedy", "reference"]

EVAL_TEXT = "fidelity_eval.txt"


def eval_text() -> str:
    """The evaluation text shipped with edged (package data of edged.backends)."""
    return resources.files("edged.backends").joinpath(EVAL_TEXT).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Fidelity:
    tokens: int  # positions compared
    agreement: float  # top-1 next-token agreement, 0..1
    mean_kl: float  # mean KL(reference || candidate), nats
    perplexity_reference: float
    perplexity_candidate: float
    measure: Measure = "logits"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def log_softmax(logits: Any) -> Any:
    """Row-wise log-probabilities (float64) of a (rows, vocab) array."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class FidelityAccumulator:
    """Sums over positions, fed a block of rows at a time (memory stays one block)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.agree = 0
        self.kl = 0.0
        self.nll_ref = 0.0
        self.nll_cand = 0.0

    def add(self, reference: Any, candidate: Any, targets: Any) -> None:
        """``reference``/``candidate``: (rows, vocab) logits at the same positions;
        ``targets``: (rows,) the true next token at each."""
        ref = np.asarray(reference)
        cand = np.asarray(candidate)
        tgt = np.asarray(targets, dtype=np.int64)
        if ref.shape != cand.shape or ref.ndim != 2 or tgt.shape != (ref.shape[0],):
            raise ValueError(
                f"shapes differ: reference {ref.shape}, candidate {cand.shape}, targets {tgt.shape}"
            )
        if not len(tgt):
            return
        self.agree += int((ref.argmax(axis=1) == cand.argmax(axis=1)).sum())
        lp_ref = log_softmax(ref)
        lp_cand = log_softmax(cand)
        self.kl += float((np.exp(lp_ref) * (lp_ref - lp_cand)).sum())
        rows = np.arange(len(tgt))
        self.nll_ref -= float(lp_ref[rows, tgt].sum())
        self.nll_cand -= float(lp_cand[rows, tgt].sum())
        self.tokens += len(tgt)

    def result(self) -> Fidelity:
        n = max(1, self.tokens)
        return Fidelity(
            tokens=self.tokens,
            agreement=self.agree / n,
            mean_kl=max(0.0, self.kl / n),
            perplexity_reference=float(np.exp(self.nll_ref / n)),
            perplexity_candidate=float(np.exp(self.nll_cand / n)),
        )


class TeacherForced(Protocol):
    """A model that reads given tokens teacher-forced and returns the logits
    after every position (one per backend: llama.cpp, ONNX Runtime, ...)."""

    def n_vocab(self) -> int: ...

    def logits(self, piece: Sequence[int], batch: int) -> Iterator[Any]:
        """Logits (rows, n_vocab) after each position of ``piece``, read as a
        fresh sequence, in consecutive blocks of exactly ``batch`` rows (the last
        may be shorter). A block stays valid until the next one is requested."""
        ...

    def close(self) -> None: ...


def windows(tokens: Sequence[int], window: int) -> Iterator[list[int]]:
    """Windows of ``window`` tokens overlapping by one: every token after the
    first is predicted exactly once, from at most ``window - 1`` tokens before it."""
    step = window - 1
    for start in range(0, max(1, len(tokens) - 1), step):
        piece = list(tokens[start : start + window])
        if len(piece) >= 2:
            yield piece


def measure(
    reference: TeacherForced,
    candidate: TeacherForced,
    tokens: Sequence[int],
    *,
    window: int = 512,
    batch: int = 512,
) -> Fidelity:
    """Compare ``candidate`` with ``reference`` over ``tokens`` (the reference's
    tokenization; both must share the vocabulary), window by window, a block of
    ``batch`` positions at a time: memory stays one block of logits each."""
    if window < 2:
        raise InvalidArgument("the window must be at least 2 tokens")
    if reference.n_vocab() != candidate.n_vocab():
        raise InvalidArgument(
            f"the models' vocabularies differ ({reference.n_vocab()} and "
            f"{candidate.n_vocab()} tokens): logits cannot be compared"
        )
    batch = max(1, min(batch, window))
    acc = FidelityAccumulator()
    for piece in windows(tokens, window):
        targets = piece[1:]
        ref_rows = reference.logits(piece, batch)
        cand_rows = candidate.logits(piece, batch)
        for off, (ref, cand) in enumerate(zip(ref_rows, cand_rows, strict=True)):
            want = targets[off * batch : off * batch + batch]  # the last has no target
            acc.add(ref[: len(want)], cand[: len(want)], want)
    return acc.result()


class GreedySource(Protocol):
    """A model that continues token prompts greedily (for a backend without logits)."""

    def n_vocab(self) -> int: ...

    def continue_greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        """``new_tokens`` greedy tokens after each prompt (end-of-text ignored)."""
        ...

    def close(self) -> None: ...


def greedy_prompts(tokens: Sequence[int], count: int, length: int) -> list[list[int]]:
    """``count`` prompts of ``length`` tokens spread evenly over ``tokens``."""
    if len(tokens) < length or count < 1:
        return []
    last = len(tokens) - length
    starts = sorted({round(i * last / max(1, count - 1)) for i in range(count)})
    return [list(tokens[s : s + length]) for s in starts]


def greedy_measure(
    reference: GreedySource,
    candidate: GreedySource,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
) -> Fidelity:
    """Top-1 agreement estimated from greedy continuations.

    Up to the first token where two continuations differ, both read the same
    text, so every position before it is one where both put the same token
    first, and the first difference is one where they did not; after it the
    texts differ and nothing more is compared. The estimate is agreements /
    (agreements + differences): the per-position top-1 agreement on text the
    reference would write. KL and perplexity need logits: they read 0.
    """
    if reference.n_vocab() != candidate.n_vocab():
        raise InvalidArgument(
            f"the models' vocabularies differ ({reference.n_vocab()} and "
            f"{candidate.n_vocab()} tokens): their answers cannot be compared"
        )
    ref = reference.continue_greedy(prompts, new_tokens)
    cand = candidate.continue_greedy(prompts, new_tokens)
    agree = differ = 0
    for a, b in zip(ref, cand, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if same is None:
            agree += min(len(a), len(b))
        else:
            agree += same
            differ += 1
    compared = agree + differ
    return Fidelity(
        tokens=compared,
        agreement=agree / compared if compared else 0.0,
        mean_kl=0.0,
        perplexity_reference=0.0,
        perplexity_candidate=0.0,
        measure="greedy",
    )
