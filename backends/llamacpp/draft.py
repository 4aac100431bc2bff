"""A draft model for speculative decoding, loaded beside the target in its worker.

The draft model has its own llama.cpp context with one sequence per target
sequence. Before it drafts for a stream, its sequence is brought in line with
the stream's text (the longest common prefix is kept, the rest evaluated), so
sessions, rewinds and rejected drafts need no bookkeeping of their own. It
drafts greedily, all streams in one batch per draft token.

Its vocabulary must be the target's, token for token: a draft token id means
the same text to both models, or drafts would be garbage that verification
merely rejects. A mismatch is refused when the worker loads.
"""

from __future__ import annotations

from edged.backends.llamacpp.native import NativeContext, NativeModel, Offload
from edged.backends.toolkit import common_prefix
from edged.common.errors import FailedPrecondition


def check_vocab(target: NativeModel, draft: NativeModel, name: str) -> None:
    """FailedPrecondition unless ``draft`` has ``target``'s vocabulary, token for token."""
    n, m = target.n_vocab(), draft.n_vocab()
    advice = "a draft model must share the target's tokenizer (a smaller model of the same family)"
    if n != m:
        raise FailedPrecondition(
            f"the draft model {name} has a vocabulary of {m} tokens, the target {n}: {advice}"
        )
    for t in range(n):
        a, b = target.token_text(t), draft.token_text(t)
        if a != b:
            raise FailedPrecondition(
                f"the draft model {name}'s token {t} is {b[:20]!r}, the target's {a[:20]!r}: "
                + advice
            )


class DraftModel:
    """The draft model and its context (``n_seq`` sequences like the target's)."""

    def __init__(
        self,
        path: str,
        target: NativeModel,
        *,
        name: str,
        offload: Offload,
        n_ctx: int,
        n_seq: int,
        n_batch: int,
        threads: int,
    ) -> None:
        self.model = NativeModel.load(path, offload=offload)
        try:
            check_vocab(target, self.model, name)
            self.ctx = NativeContext(
                self.model, n_ctx=n_ctx, n_seq=n_seq, n_batch=n_batch, threads=threads
            )
        except BaseException:
            self.model.free()
            raise
        self.held: list[list[int]] = [[] for _ in range(n_seq)]  # what each sequence's KV holds

    def forget(self, seq: int) -> None:
        """Drop what ``seq`` holds (its target sequence moved or changed)."""
        if self.held[seq]:
            self.ctx.seq_rm(seq, 0, -1)
            self.held[seq] = []

    def draft(self, wants: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """For each ``(seq, text, k)``: up to ``k`` tokens the draft model predicts
        greedily after ``text`` (which its sequence ``seq`` is brought in line with)."""
        todo: list[list[int]] = []
        for seq, text, _ in wants:
            held = self.held[seq]
            keep = min(common_prefix(held, text), len(text) - 1)  # the last one gives logits
            if keep < len(held):
                self.ctx.seq_rm(seq, keep, -1)
                del held[keep:]
            todo.append(text[keep:])
        out: list[list[int]] = [[] for _ in wants]
        # catch up (in batches of at most n_batch tokens); each sequence's last
        # token gives its first draft token
        while any(todo):
            entries: list[tuple[int, int, int, bool]] = []
            ends: list[tuple[int, int]] = []  # (want index, batch index)
            room = self.ctx.n_batch
            for i, (seq, _, _) in enumerate(wants):
                take = min(room, len(todo[i]))
                if take <= 0:
                    continue
                base = len(self.held[seq])
                for j in range(take):
                    last = take == len(todo[i]) and j == take - 1
                    entries.append((todo[i][j], base + j, seq, last))
                self.held[seq].extend(todo[i][:take])
                if take == len(todo[i]):
                    ends.append((i, len(entries) - 1))
                todo[i] = todo[i][take:]
                room -= take
            self.ctx.decode(entries)
            for i, index in ends:
                out[i].append(self.ctx.greedy(index))
        # then one token per step for every stream that wants more
        while True:
            more = [i for i, (_, _, k) in enumerate(wants) if len(out[i]) < k]
            if not more:
                return out
            entries = []
            for i in more:
                seq = wants[i][0]
                entries.append((out[i][-1], len(self.held[seq]), seq, True))
                self.held[seq].append(out[i][-1])
            self.ctx.decode(entries)
            for index, i in enumerate(more):
                out[i].append(self.ctx.greedy(index))

    def free(self) -> None:
        self.ctx.free()
        self.model.free()
