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

from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import numpy as np

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
