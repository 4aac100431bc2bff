"""Prompt-lookup drafting and the adaptive draft length (no model needed)."""

from __future__ import annotations

import pytest

from edged.backends import speculative as spec
from edged.backends.base import Sampling, check_speculative
from edged.common.errors import InvalidArgument


def test_draft_continues_the_longest_recent_match() -> None:
    d = spec.NgramDrafter([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    d.extend([1, 2, 3])  # suffix (1, 2, 3) matches at the start: 4, 5, 9 followed
    assert d.draft(3) == [4, 5, 9]
    d2 = spec.NgramDrafter([5, 2, 3, 4, 6, 2, 3, 7])
    d2.extend([2, 3])  # (2, 3) twice: the most recent continuation wins
    assert d2.draft(2) == [7, 2]
    assert spec.NgramDrafter([1, 2, 3]).draft(4) == []  # nothing repeats


def test_longer_match_wins_over_a_more_recent_shorter_one() -> None:
    d = spec.NgramDrafter([9, 2, 3, 10, 11, 8, 2, 3, 12])
    d.extend([9, 2, 3])  # (9, 2, 3) matched at 0 beats (2, 3) matched at 6
    assert d.draft(2) == [10, 11]


def test_draft_respects_k_and_single_tokens_do_not_match() -> None:
    d = spec.NgramDrafter([1, 2, 3, 4, 5, 6, 1, 2])
    assert d.draft(2) == [3, 4]
    assert d.draft(0) == []
    assert spec.NgramDrafter([4, 1, 7, 1]).draft(3) == []  # a 1-gram is not enough


def test_speculator_adapts_its_longest_draft() -> None:
    s = spec.Speculator(spec.NgramDrafter([1, 2, 3, 1, 2]), adaptive=True)
    assert s.propose(8) == [3, 1, 2][: s.k]
    s.verified(4, 4)
    assert s.k == spec.K_START + 2
    s.verified(4, 1)
    assert s.k == 2


def test_best_length_weighs_acceptance_against_what_rows_cost() -> None:
    assert spec.best_length(0.9, 0.05, 8) == 8  # memory-bound: long drafts pay
    assert spec.best_length(0.6, 0.85, 8) == 0  # compute-bound: nothing pays
    assert 0 < spec.best_length(0.95, 0.85, 8) < 8
    assert spec.best_length(1.0, 0.85, 8) == 8
    assert spec.expected_accepted(0.5, 3) == pytest.approx(0.875)


def test_auto_pauses_while_nothing_pays_then_probes() -> None:
    s = spec.Speculator(spec.NgramDrafter([1, 2, 3, 1, 2]), adaptive=True)
    assert s.length(8, row_cost=0.9) == 0  # the prior rate does not pay
    assert s.paused_for == spec.PAUSE and s.propose(8, 0.9) == []
    for _ in range(spec.PAUSE):
        s.push(1)
    assert s.probe and s.length(8, row_cost=0.9) == 1  # one token to learn from
    s.verified(1, 0)
    assert s.length(8, row_cost=0.9) == 0 and s.paused_for == 2 * spec.PAUSE
    # drafts that keep being accepted raise the estimate until they pay
    for _ in range(20):
        s.verified(4, 4)
    assert s.rate > 0.95
    s.paused_for = 0
    assert s.length(8, row_cost=0.9) > 0
    assert s.length(8, row_cost=0.05) == min(s.k, 8)


def test_ngram_mode_never_pauses() -> None:
    s = spec.Speculator(spec.NgramDrafter([1, 2, 3, 1, 2]), adaptive=False)
    for _ in range(64):
        s.verified(1, 0)
    assert s.paused_for == 0 and s.propose(8, row_cost=2.0) == [3]


def test_row_cost_is_fitted_from_steps_of_different_sizes() -> None:
    cost = spec.RowCost()
    assert cost.relative(1) == spec.PRIOR_ROW_COST
    for _ in range(10):  # steps of one size say nothing about a row's cost
        cost.observe(1, 0.010)
    assert cost.relative(1) == spec.PRIOR_ROW_COST
    for rows in (1, 3, 5, 2, 9, 1, 4) * 3:  # seconds = 0.002 + 0.008 * rows
        cost.observe(rows, 0.002 + 0.008 * rows)
    assert cost.relative(1) == pytest.approx(0.8, rel=0.05)
    assert cost.relative(4) == pytest.approx(0.008 / 0.034, rel=0.05)


def test_modes() -> None:
    assert spec.Speculator.for_prompt([1], "off") is None
    assert spec.Speculator.for_prompt([1], "ngram") is not None
    greedy = Sampling(temperature=0.0)
    assert spec.mode_of(greedy, "") == "auto"
    assert spec.mode_of(Sampling(temperature=0.0, speculative="off"), "ngram") == "off"
    assert spec.mode_of(Sampling(temperature=0.7, speculative="ngram"), "") == "off"
    assert check_speculative("draft:smollm2") == "draft:smollm2"
    with pytest.raises(InvalidArgument, match="auto, ngram, off or draft:MODEL"):
        Sampling(speculative="fast")
    with pytest.raises(InvalidArgument):
        check_speculative("draft:")


def test_edged_speculative_is_read_and_checked(tmp_path: object) -> None:
    from edged.daemon.config import load_engine

    def engine(value: str) -> str:
        env = {"EDGED_CACHE_DIR": str(tmp_path), "EDGED_SPECULATIVE": value}
        return load_engine(env).speculative

    assert engine("") == "auto"
    assert engine("off") == "off"
    assert engine("draft:smollm2:135m") == "draft:smollm2:135m"
    with pytest.raises(ValueError, match="EDGED_SPECULATIVE: speculative must be one of"):
        engine("sometimes")


def test_model_setting_speculative() -> None:
    from edged.models_registry.settings import ModelSettings

    assert ModelSettings(speculative="ngram").to_json() == {"speculative": "ngram"}
    assert ModelSettings.from_json({"speculative": "draft:smollm2"}).speculative == "draft:smollm2"
    with pytest.raises(InvalidArgument, match="speculative must be one of"):
        ModelSettings(speculative="draft:")
    with pytest.raises(InvalidArgument, match="wrong type"):
        ModelSettings.from_json({"speculative": 1})


def test_edged_batch_invariant_is_checked_at_start() -> None:
    from edged.daemon.config import load_engine

    assert load_engine({}).batch_invariance == 1
    assert load_engine({"EDGED_BATCH_INVARIANT": "2"}).batch_invariance == 2
    with pytest.raises(ValueError, match="EDGED_BATCH_INVARIANT must be between 0 and 2"):
        load_engine({"EDGED_BATCH_INVARIANT": "3"})
    with pytest.raises(ValueError, match="EDGED_BATCH_INVARIANT must be an integer"):
        load_engine({"EDGED_BATCH_INVARIANT": "yes"})


def test_a_new_stream_starts_from_how_drafts_fared_lately() -> None:
    engine = spec.AcceptanceRate(decay=spec.ENGINE_RATE_DECAY)
    assert engine.rate == pytest.approx(spec.PRIOR_RATE)
    for _ in range(50):  # recent streams' drafts rarely held
        engine.add(4, 0)
    low = spec.Speculator.for_prompt([1, 2, 3, 1, 2], "auto", engine.rate)
    assert low is not None and low.rate < 0.1 and low.length(8, row_cost=0.3) == 0
    for _ in range(200):  # ... then nearly always
        engine.add(4, 4)
    high = spec.Speculator.for_prompt([1, 2, 3, 1, 2], "auto", engine.rate)
    assert high is not None and high.rate > 0.9 and high.length(8, row_cost=0.3) > 0
