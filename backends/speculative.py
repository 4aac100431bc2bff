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
acceptance, and in ``auto`` mode stops drafting for a while when drafts keep
failing (a rejected draft costs rows in the batch and gives nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edged.backends.base import DEFAULT_SPECULATIVE, DRAFT_PREFIX, Sampling

N_MIN = 2  # shortest n-gram looked up (single tokens match too often by chance)
N_MAX = 4  # longest n-gram looked up
# Most draft tokens one stream carries into a step. llama.cpp's CPU attention
# computes a sequence's rows exactly as one-row decodes while it has fewer than
# 64 rows in a step (measured: bit-identical logits up to 48 rows, not at 64),
# which keeps verified tokens identical to plain decoding.
K_MAX = 8
K_START = 4
# auto: after WINDOW drafted tokens with under MIN_RATE of them accepted, stop
# drafting for PAUSE generated tokens (doubling while it keeps not paying)
WINDOW = 16
MIN_RATE = 0.3
PAUSE = 32
MAX_PAUSE = 512


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
class Speculator:
    """One stream's drafting: the drafter, its draft length and its pauses."""

    drafter: NgramDrafter | None  # None: a draft model drafts (the engine's)
    adaptive: bool = True  # auto: pause while drafts do not pay
    k: int = K_START
    drafted: int = 0  # in the current window
    accepted: int = 0
    paused_for: int = 0  # generated tokens left before drafting again
    pause: int = PAUSE

    @classmethod
    def for_prompt(cls, prompt: Sequence[int], mode: str) -> Speculator | None:
        """The speculator for a stream whose mode is ``mode`` (None when off)."""
        if mode.startswith(DRAFT_PREFIX):
            return cls(None, adaptive=True)
        if mode not in ("auto", "ngram"):
            return None
        return cls(NgramDrafter(prompt), adaptive=mode == "auto")

    def push(self, token: int) -> None:
        """A token the stream generated (its text now includes it)."""
        if self.drafter is not None:
            self.drafter.push(token)
        if self.paused_for:
            self.paused_for -= 1

    def length(self, limit: int) -> int:
        """How many tokens to draft for the next step (at most ``limit``)."""
        return 0 if self.paused_for else max(0, min(self.k, limit))

    def propose(self, limit: int) -> list[int]:
        """Prompt-lookup draft tokens for the next step, at most ``limit`` of them."""
        k = self.length(limit)
        if not k or self.drafter is None:
            return []
        return self.drafter.draft(k)

    def verified(self, drafted: int, accepted: int) -> None:
        """How a step's draft fared: the next length follows it, and in auto
        mode a window where too few were accepted pauses drafting."""
        if not drafted:
            return
        if accepted == drafted:
            self.k = min(K_MAX, self.k + 2)
        else:
            self.k = max(1, accepted + 1)
        if not self.adaptive:
            return
        self.drafted += drafted
        self.accepted += accepted
        if self.drafted < WINDOW:
            return
        if self.accepted < MIN_RATE * self.drafted:
            self.paused_for = self.pause
            self.pause = min(MAX_PAUSE, self.pause * 2)
            self.k = K_START
        else:
            self.pause = PAUSE
        self.drafted = self.accepted = 0
