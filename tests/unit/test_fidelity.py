"""The fidelity measure's arithmetic on small synthetic logits."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from edged.backends.fidelity import (
    FidelityAccumulator,
    eval_text,
    log_softmax,
    measure,
    windows,
)
from edged.common.errors import InvalidArgument


def test_identical_logits_agree_fully_with_zero_kl() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 50)).astype(np.float32)
    targets = rng.integers(0, 50, size=20)
    acc = FidelityAccumulator()
    acc.add(logits, logits.copy(), targets)
    got = acc.result()
    assert got.tokens == 20 and got.agreement == 1.0
    assert got.mean_kl == pytest.approx(0.0, abs=1e-12)
    assert got.perplexity_reference == got.perplexity_candidate


def test_uniform_logits_have_the_vocabulary_as_perplexity() -> None:
    acc = FidelityAccumulator()
    acc.add(np.zeros((4, 8)), np.zeros((4, 8)), [0, 1, 2, 3])
    assert acc.result().perplexity_reference == pytest.approx(8.0)


def test_agreement_kl_and_perplexity_by_hand() -> None:
    ref = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]]))
    cand = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.6, 0.2]]))
    acc = FidelityAccumulator()
    # fed in two blocks: the sums carry over
    acc.add(ref[:1], cand[:1], [0])
    acc.add(ref[1:], cand[1:], [1])
    got = acc.result()
    assert got.tokens == 2
    assert got.agreement == 0.5  # row 0 agrees on token 0, row 1 does not
    kl0 = 0.7 * math.log(0.7 / 0.6) + 0.2 * math.log(0.2 / 0.3)
    kl1 = 0.5 * math.log(0.5 / 0.2) + 0.25 * math.log(0.25 / 0.6) + 0.25 * math.log(0.25 / 0.2)
    assert got.mean_kl == pytest.approx((kl0 + kl1) / 2)
    ppl_ref = math.exp(-(math.log(0.7) + math.log(0.25)) / 2)
    assert got.perplexity_reference == pytest.approx(ppl_ref)
    assert got.perplexity_candidate == pytest.approx(1 / 0.6)


def test_log_softmax_is_stable_for_large_logits() -> None:
    lp = log_softmax(np.array([[1000.0, 1000.0]]))
    assert np.allclose(lp, math.log(0.5))


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        FidelityAccumulator().add(np.zeros((2, 3)), np.zeros((2, 4)), [0, 1])
    with pytest.raises(ValueError, match="shapes differ"):
        FidelityAccumulator().add(np.zeros((2, 3)), np.zeros((2, 3)), [0])


def test_windows_predict_every_token_after_the_first_once() -> None:
    tokens = list(range(10))
    pieces = list(windows(tokens, 4))
    assert pieces == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    targets = [t for p in pieces for t in p[1:]]
    assert targets == tokens[1:]
    assert list(windows([1], 4)) == []


def test_the_eval_text_ships_with_prose_code_and_chat() -> None:
    text = eval_text()
    assert len(text.split()) > 1500
    assert "def moving_average" in text and "User:" in text and "Assistant:" in text


class _Table:
    """A fake teacher-forced source: fixed logits per token id."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.closed = False

    def n_vocab(self) -> int:
        return int(self.table.shape[1])

    def logits(self, piece: list[int], batch: int) -> Iterator[np.ndarray]:
        for off in range(0, len(piece), batch):
            yield self.table[piece[off : off + batch]]

    def close(self) -> None:
        self.closed = True


def test_generic_measure_identical_sources_agree_fully() -> None:
    rng = np.random.default_rng(3)
    table = rng.normal(size=(16, 16))
    tokens = [int(t) for t in rng.integers(0, 16, size=40)]
    got = measure(_Table(table), _Table(table.copy()), tokens, window=8, batch=3)
    assert got.tokens == 39
    assert got.agreement == 1.0 and got.mean_kl < 1e-12
    assert got.perplexity_reference == pytest.approx(got.perplexity_candidate)


def test_generic_measure_sees_a_changed_candidate() -> None:
    rng = np.random.default_rng(4)
    table = rng.normal(size=(16, 16))
    other = table.copy()
    other[:, 0] += 50.0  # token 0 always first: disagrees wherever the reference differs
    tokens = [int(t) for t in rng.integers(0, 16, size=40)]
    got = measure(_Table(table), _Table(other), tokens, window=8, batch=8)
    expected = float((table[tokens[:-1]].argmax(axis=1) == 0).mean())
    assert got.agreement == pytest.approx(expected)
    assert got.mean_kl > 1.0


def test_generic_measure_refuses_different_vocabularies() -> None:
    with pytest.raises(InvalidArgument, match="vocabularies differ"):
        measure(_Table(np.zeros((4, 4))), _Table(np.zeros((4, 5))), [0, 1, 2], window=4)
    with pytest.raises(InvalidArgument, match="at least 2"):
        measure(_Table(np.zeros((4, 4))), _Table(np.zeros((4, 4))), [0, 1, 2], window=1)
