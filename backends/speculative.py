"""Speculative decoding's engine-independent half: what to draft, and how much.

A speculating stream carries draft tokens into a decode step; the engine
verifies them with the request's own sampler (the longest agreeing prefix plus
one token is kept) and reports back here how many were accepted. Only greedy
requests (temperature 0) speculate, so the kept tokens are exactly those plain
decoding would produce.

Drafts come from prompt lookup (:class:`NgramDrafter`): the longest recent
n-gram that ends the stream's text (its prompt, session history included, and
what it generated) is looked up earlier in that text, and what followed it
there is proposed. :class:`Speculator` adapts the draft length to the measured
acceptance, and in ``auto`` mode drafts only as many tokens as pay for the rows
they add to a step (:class:`RowCost`, measured by the engine), pausing while
none would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edged.backends.base import DEFAULT_SPECULATIVE, DRAFT_PREFIX, Sampling

N_MIN = 2  # shortest n-gram looked up (single tokens match too often by chance)
N_MAX = 4  # longest n-gram looked up
# Most draft tokens one stream carries into a step. llama.cpp's CPU attention
# computes a sequence's rows exactly as one-row decodes while it has fewer than
# 64 rows in a step (measured: bit-identical logits up to 48 rows, not at 64),
# which keeps verified tokens identical to plain decoding.
K_MAX = 8
K_START = 4
# auto: a stream drafts only as many tokens as pay for themselves. A step with k
# draft rows yields 1 + (the accepted ones) tokens and costs 1 + c*k steps,
# where c is what one more row adds to a step (RowCost, measured by the engine:
# nearly a whole step where decoding is compute-bound, as for SmolLM2 Q4_1 on an
# AVX2 CPU, a few percent where it is memory-bound). The acceptance rate per
# draft token is estimated from the stream's verifications (recent ones weigh
# more, starting from a prior). When no length pays, drafting pauses for PAUSE
# generated tokens (doubling while it keeps not paying), then one token is
# drafted as a probe.
PRIOR_RATE = 0.6
PRIOR_WEIGHT = 2.0  # as many draft tokens' worth of evidence
RATE_DECAY = 0.9  # per verification step (a stream's estimate)
ENGINE_RATE_DECAY = 0.98  # the engine's, over all its streams: a new stream's prior
PRIOR_ROW_COST = 0.2  # until the engine has measured steps of different sizes
PAUSE = 32
MAX_PAUSE = 512


def expected_accepted(rate: float, k: int) -> float:
    """Expected accepted tokens of a k-token draft when each is accepted (given
    the ones before it were) with probability ``rate``."""
    return sum(rate**i for i in range(1, k + 1))


def best_length(rate: float, row_cost: float, k_max: int) -> int:
    """The draft length in 0..k_max that gives the most tokens per unit of step
    time: (1 + expected accepted) / (1 + row_cost * k); 0 when none beats a
    plain step."""
    best, best_gain = 0, 1.0
    for k in range(1, k_max + 1):
        gain = (1.0 + expected_accepted(rate, k)) / (1.0 + row_cost * k)
        if gain > best_gain * 1.0001:  # ties go to the shorter draft
            best, best_gain = k, gain
    return best


class RowCost:
    """What one more row adds to a decode step, as a fraction of the step
    without it: a least-squares line seconds = a + b * rows over recent
    decode-only steps (each older step weighs ``decay`` times less)."""

    def __init__(self, decay: float = 0.98) -> None:
        self._decay = decay
        self._w = self._x = self._y = self._xx = self._xy = 0.0

    def observe(self, rows: int, seconds: float) -> None:
        d = self._decay
        self._w = self._w * d + 1.0
        self._x = self._x * d + rows
        self._y = self._y * d + seconds
        self._xx = self._xx * d + rows * rows
        self._xy = self._xy * d + rows * seconds

    def relative(self, base_rows: int) -> float:
        """The cost of one more row beside ``base_rows`` plain ones (relative to
        their step); PRIOR_ROW_COST until steps of different sizes were seen."""
        if self._w < 4.0:
            return PRIOR_ROW_COST
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        if var < 0.1:
            return PRIOR_ROW_COST
        b = (self._xy / self._w - mx * my) / var
        base = my + b * (base_rows - mx)
        if base <= 0.0:
            return PRIOR_ROW_COST
        return min(2.0, max(0.0, b / base))


def mode_of(sampling: Sampling, default: str) -> str:
    """How a request speculates: its own setting, else ``default``; a request
    that samples (temperature > 0) never does ("off")."""
    mode = sampling.speculative or default or DEFAULT_SPECULATIVE
    if sampling.temperature > 0.0:
        return "off"
    return mode


class NgramDrafter:
    """Prompt lookup over one stream's tokens (appended as they are generated).

    For every n in [N_MIN, N_MAX] an index maps each n-gram to where its most
    recent continuation starts; the current suffix is looked up longest first.
    """

    def __init__(self, tokens: Sequence[int], n_min: int = N_MIN, n_max: int = N_MAX) -> None:
        self._n = range(n_max, n_min - 1, -1)
        self._tokens: list[int] = []
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self._n}
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def push(self, token: int) -> None:
        toks = self._tokens
        i = len(toks)  # where the new token lands: it continues the n-grams ending at i - 1
        for n, index in self._index.items():
            if i >= n:
                index[tuple(toks[i - n : i])] = i
        toks.append(token)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.push(t)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest match of the current suffix."""
        toks = self._tokens
        if k <= 0:
            return []
        for n in self._n:
            if len(toks) <= n:
                continue
            at = self._index[n].get(tuple(toks[-n:]))
            if at is not None:
                return toks[at : at + k]
        return []


@dataclass
class AcceptanceRate:
    """The chance a draft token is accepted (given the ones before it were):
    decayed counts of verified draft tokens, starting from ``prior``."""

    prior: float = PRIOR_RATE
    decay: float = RATE_DECAY  # per verification step
    accepted_w: float = 0.0
    trials_w: float = 0.0

    def add(self, drafted: int, accepted: int) -> None:
        """One verification: ``accepted`` of ``drafted`` tokens kept."""
        judged = accepted + (1 if accepted < drafted else 0)
        self.accepted_w = self.accepted_w * self.decay + accepted
        self.trials_w = self.trials_w * self.decay + judged

    @property
    def rate(self) -> float:
        prior = self.prior * PRIOR_WEIGHT
        return (self.accepted_w + prior) / (self.trials_w + PRIOR_WEIGHT)


@dataclass
class Speculator:
    """One stream's drafting: the drafter, its draft length and its pauses."""

    drafter: NgramDrafter | None  # None: a draft model drafts (the engine's)
    adaptive: bool = True  # auto: draft only what pays, pause while nothing does
    k: int = K_START  # the longest draft for the next step
    acceptance: AcceptanceRate = field(default_factory=AcceptanceRate)  # this stream's
    paused_for: int = 0  # generated tokens left before drafting again
    pause: int = PAUSE
    probe: bool = False  # the first draft after a pause: one token

    @classmethod
    def for_prompt(
        cls, prompt: Sequence[int], mode: str, prior: float = PRIOR_RATE
    ) -> Speculator | None:
        """The speculator for a stream whose mode is ``mode`` (None when off);
        ``prior`` is its acceptance rate before it has drafted (the engine's
        recent streams' rate: how drafts fare on this model and workload)."""
        if mode.startswith(DRAFT_PREFIX):  # asked for by name: it always drafts
            return cls(None, adaptive=False)
        if mode not in ("auto", "ngram"):
            return None
        return cls(NgramDrafter(prompt), adaptive=mode == "auto", acceptance=AcceptanceRate(prior))

    @property
    def rate(self) -> float:
        """The estimated chance a draft token is accepted (given the ones before)."""
        return self.acceptance.rate

    def push(self, token: int) -> None:
        """A token the stream generated (its text now includes it)."""
        if self.drafter is not None:
            self.drafter.push(token)
        if self.paused_for:
            self.paused_for -= 1
            self.probe = self.paused_for == 0

    def length(self, limit: int, row_cost: float | None = None) -> int:
        """How many tokens to draft for the next step (at most ``limit``); in auto
        mode only what pays at ``row_cost`` (RowCost.relative), else a pause."""
        if self.paused_for:
            return 0
        k = max(0, min(self.k, limit))
        if not self.adaptive or row_cost is None or k == 0:
            return k
        if self.probe:
            return 1
        best = best_length(self.rate, row_cost, k)
        if best == 0:
            self.paused_for = self.pause
            self.pause = min(MAX_PAUSE, self.pause * 2)
        return best

    def propose(self, limit: int, row_cost: float | None = None) -> list[int]:
        """Prompt-lookup draft tokens for the next step, at most ``limit`` of them."""
        k = self.length(limit, row_cost)
        if not k or self.drafter is None:
            return []
        return self.drafter.draft(k)

    def verified(self, drafted: int, accepted: int) -> None:
        """How a step's draft fared: the next length follows it (longer after a
        fully accepted draft, just past the accepted part otherwise), and the
        acceptance estimate learns from it."""
        if not drafted:
            return
        self.probe = False
        if accepted == drafted:
            self.k = min(K_MAX, self.k + 2)
        else:
            self.k = max(1, accepted + 1)
        self.acceptance.add(drafted, accepted)
        if self.adaptive and accepted > 0:
            self.pause = PAUSE
