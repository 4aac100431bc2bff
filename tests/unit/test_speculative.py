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


def test_speculator_adapts_length_and_pauses_in_auto() -> None:
    s = spec.Speculator(spec.NgramDrafter([1, 2, 3, 1, 2]), adaptive=True)
    assert s.propose(8) == [3, 1, 2][: s.k]
    s.verified(4, 4)
    assert s.k == spec.K_START + 2
    s.verified(4, 1)
    assert s.k == 2
    s = spec.Speculator(spec.NgramDrafter([1, 2, 3, 1, 2]), adaptive=True)
    for _ in range(spec.WINDOW):  # drafts that keep failing pause drafting
        s.verified(1, 0)
    assert s.paused_for == spec.PAUSE and s.propose(8) == []
    for _ in range(spec.PAUSE):
        s.push(1)
    assert s.propose(8) != []


def test_ngram_mode_never_pauses() -> None:
    s = spec.Speculator(spec.NgramDrafter([1, 2, 3, 1, 2]), adaptive=False)
    for _ in range(4 * spec.WINDOW):
        s.verified(1, 0)
    assert s.paused_for == 0 and s.propose(8) == [3]


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
