"""The llama.cpp embedding engine: pooled vectors of many inputs per decode.

An embedding model (an encoder such as ``bert``/``nomic-bert``, or any GGUF
that declares ``<arch>.pooling_type``) loads with an embedding context whose
pooling (mean, CLS or last token) is the model's own. A batch of inputs goes
in as few decodes as the context allows: one sequence id per input, as many
inputs per decode as fit in ``EMBED_BATCH_TOKENS`` tokens and
``EMBED_MAX_SEQUENCES`` sequences. It generates nothing: a generation job is
refused (FailedPrecondition) like any control the engine lacks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edged.backends import toolkit
from edged.backends.base import Capabilities, Embeddings, EmbedInput, Event, Job, LoadSpec
from edged.backends.llamacpp.info import INFO
from edged.backends.llamacpp.native import EmbeddingContext, NativeModel
from edged.common.errors import FailedPrecondition, InvalidArgument

# Tokens per decode (at least the context, so any input fits one): a non-causal
# model attends across the whole micro-batch (masked per sequence), so a larger
# one costs more than it saves. Measured on all-MiniLM-L6-v2 F16, 2 threads,
# 512 twelve-token texts: 512 tokens 333 texts/s, 1024 271, 2048 260 (one
# text per call: ~280 texts/s).
EMBED_BATCH_TOKENS = 512
EMBED_MAX_SEQUENCES = 64  # inputs per decode (llama.cpp allows 256)


def declares_pooling(model: NativeModel) -> bool:
    return bool(model.meta(f"{model.architecture()}.pooling_type"))


class LlamaEmbedEngine(toolkit.EngineCore[toolkit.Running]):
    def __init__(self, spec: LoadSpec, model: NativeModel, *, gpu_layers: int = 0) -> None:
        self._model = model
        train_ctx = model.n_ctx_train() or spec.context_length
        self._n_ctx_seq = min(spec.context_length, train_ctx)
        n_batch = max(self._n_ctx_seq, EMBED_BATCH_TOKENS)
        self._ctx = EmbeddingContext(
            model,
            n_ctx=n_batch,
            n_seq=EMBED_MAX_SEQUENCES,
            n_batch=n_batch,
            threads=spec.threads,
        )
        if not self._ctx.pooling:
            self._ctx.free()
            raise FailedPrecondition(
                "this model declares no pooling llama.cpp can make sentence embeddings "
                "with (mean, cls or last); rerankers are not supported"
            )
        self._keep_last = model.adds_end_token()
        caps = Capabilities(
            backend=INFO.name,
            device=spec.device,
            formats=("gguf",),
            context_length=self._n_ctx_seq,
            max_sequences=EMBED_MAX_SEQUENCES,
            batching=True,
            session_kv=False,
            sampling=(),
            kv_tiers=False,
            fork=False,
            gpu_layers=gpu_layers,
            tokenize=True,
            embeddings=True,
            embedding_dimensions=self._ctx.n_embd,
            pooling=self._ctx.pooling,
        )
        super().__init__(caps, toolkit.PromptFormat(chat_template="", metadata=model.metadata()))

    def embed(self, inputs: Sequence[EmbedInput], *, truncate: bool, normalize: bool) -> Embeddings:
        tokens = [self._tokens_of(i, item) for i, item in enumerate(inputs)]
        limit = min(self._n_ctx_seq, self._ctx.n_batch)
        tokens, cut = toolkit.fit_to_context(
            tokens, limit, truncate=truncate, keep_last=self._keep_last
        )
        lengths = [len(t) for t in tokens]
        rows = np.empty((len(tokens), self._ctx.n_embd), dtype=np.float32)
        for group in toolkit.pack_batches(lengths, self._ctx.n_batch, self._ctx.n_seq):
            rows[group.start : group.stop] = self._ctx.embed(tokens[group.start : group.stop])
        if normalize:
            rows = toolkit.l2_normalize(rows)
        return toolkit.embeddings_of(rows, sum(lengths), cut)

    def _tokens_of(self, index: int, item: EmbedInput) -> list[int]:
        if isinstance(item, str):
            return self._model.tokenize(item, add_special=True, parse_special=False)
        bad = [t for t in item if not self._model.valid_token(t)]
        if bad:
            raise InvalidArgument(
                f"input {index} has token {bad[0]}, not in the vocabulary "
                f"(0-{self._model.n_vocab() - 1})"
            )
        return list(item)

    # ------------------------------------------------------------ the rest of Engine

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def pieces(self, tokens: list[int], *, special: bool) -> list[bytes]:
        bad = [t for t in tokens if not self._model.valid_token(t)]
        if bad:
            raise InvalidArgument(
                f"token {bad[0]} is not in the vocabulary (0-{self._model.n_vocab() - 1})"
            )
        return self._model.pieces(tokens, special=special)

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=True)

    def _start(self, job: Job, prompt: list[int], prepared: object) -> toolkit.Running | None:
        raise FailedPrecondition(f"this is an embedding model: {toolkit.EMBED_INSTEAD}")

    def _advance(self, events: list[Event]) -> None:
        """Nothing runs: generation jobs are refused when they are admitted."""

    def close(self) -> None:
        super().close()
        self._ctx.free()
        self._model.free()
