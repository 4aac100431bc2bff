"""Teacher-forced logits from an ONNX Runtime GenAI model folder, for
:mod:`edged.backends.fidelity`.

:class:`OnnxTeacherForced` reads a folder (the output of ``edged convert MODEL
--to onnx``) with onnxruntime-genai's own Generator: ``append_tokens`` of a
block of tokens followed by ``get_output("logits")`` gives the logits after
every position of that block (shape (1, rows, vocab)), and the next block
attends to the KV cache the Generator kept. The Generator, not a plain
``onnxruntime.InferenceSession``, because it owns the model's KV layout: a
buffer shared between past and present, sliding-window layers that need a
cache of at least their window (Gemma 3), the input names in genai_config.json.
A plain session re-implementing that per architecture gave the same logits
for SmolLM2 and failed on Gemma 3's sliding-window attention. So memory stays
one block of logits, as with llama.cpp's
:class:`~edged.backends.llamacpp.fidelity.LlamaTeacherForced`.

Blocking and CPU-heavy: run it in a child process (``python -m bench.fidelity``),
never on the daemon's event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og

from edged.common import onnx_folder
from edged.common.errors import InvalidArgument, InvalidModelFile


def _sliding_window(config: dict[str, Any]) -> int:
    """The model's sliding-window size (0 without one): the Generator's cache must hold it."""
    window = onnx_folder.decoder_section(config).get("sliding_window")
    size = window.get("window_size") if isinstance(window, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0


class OnnxTeacherForced:
    """An ONNX Runtime GenAI folder on onnxruntime-genai (CPU) as a
    :class:`~edged.backends.fidelity.TeacherForced`."""

    def __init__(self, folder: str, *, window: int, batch: int, threads: int) -> None:
        path = Path(folder)
        config = onnx_folder.read_config(path)
        if window < 2:
            raise InvalidArgument("the window must be at least 2 tokens")
        context = onnx_folder.context_length(config)
        if context and window > context:
            raise InvalidArgument(
                f"a window of {window} tokens is longer than the model's context ({context})"
            )
        self._window = window
        self._batch = max(1, min(batch, window))
        self._max_length = max(window, _sliding_window(config))
        vocab = onnx_folder.model_section(config).get("vocab_size")
        self._vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else 0
        options = {"intra_op_num_threads": max(1, threads), "inter_op_num_threads": 1}
        try:
            og_config = og.Config(str(path))
            og_config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            self._model: Any = og.Model(og_config)
        except Exception as exc:  # onnxruntime-genai raises plain RuntimeError/OSError
            raise InvalidModelFile(f"onnxruntime-genai could not load this model: {exc}") from exc

    def n_vocab(self) -> int:
        if not self._vocab:  # genai_config.json does not say: ask the model once
            self._vocab = int(next(self.logits([0, 0], 2)).shape[-1])
        return self._vocab

    def logits(self, piece: Sequence[int], batch: int) -> Iterator[Any]:
        if len(piece) > self._window:
            raise InvalidArgument(f"a piece of {len(piece)} tokens exceeds the window")
        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=self._max_length)
        generator = og.Generator(self._model, params)
        try:
            for off in range(0, len(piece), batch):
                generator.append_tokens([int(t) for t in piece[off : off + batch]])
                rows = np.asarray(generator.get_output("logits"), dtype=np.float32)
                yield rows.reshape(-1, rows.shape[-1])
        finally:
            del generator

    def close(self) -> None:
        self._model = None
