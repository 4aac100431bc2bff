"""Teacher-forced logits from an ONNX Runtime GenAI model folder, for
:mod:`edged.backends.fidelity`.

:class:`OnnxTeacherForced` runs the folder's decoder graph (``model.onnx``, the
output of ``edged convert MODEL --to onnx``) with plain
``onnxruntime.InferenceSession``, not onnxruntime-genai's Generator: the graph
itself returns the logits of every input position (shape (1, rows, vocab)),
while the Generator keeps only the last position's. A window is fed a block of
``batch`` tokens at a time, each block attending to the KV cache the previous
blocks returned (``present.*`` fed back as ``past_*``), so memory stays one
block of logits, as with llama.cpp's :class:`~edged.backends.llamacpp.fidelity.LlamaTeacherForced`.

The input and output names, the KV cache shape and its dtype come from the
folder's ``genai_config.json`` and the graph's own declared inputs.

Blocking and CPU-heavy: run it in a child process (``python -m bench.fidelity``),
never on the daemon's event loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edged.common import onnx_folder
from edged.common.errors import InvalidArgument, InvalidModelFile

# onnxruntime's element type names -> numpy dtypes (the KV cache's io dtype)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class _Graph:
    """What the decoder graph needs, read from genai_config.json."""

    filename: str
    input_ids: str
    attention_mask: str
    position_ids: str
    past_keys: str  # "past_key_values.%d.key"
    past_values: str
    logits: str
    present_keys: str
    present_values: str
    layers: int
    kv_heads: int
    head_size: int
    context_length: int


def _graph(config: dict[str, Any]) -> _Graph:
    decoder = onnx_folder.decoder_section(config)
    inputs = _section(decoder, "inputs")
    outputs = _section(decoder, "outputs")

    def name(section: dict[str, Any], key: str, default: str) -> str:
        value = section.get(key, default)
        return value if isinstance(value, str) and value else default

    def count(key: str) -> int:
        value = decoder.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InvalidModelFile(f"{onnx_folder.GENAI_CONFIG} has no decoder '{key}'")
        return value

    return _Graph(
        filename=name(decoder, "filename", "model.onnx"),
        input_ids=name(inputs, "input_ids", "input_ids"),
        attention_mask=name(inputs, "attention_mask", "attention_mask"),
        position_ids=name(inputs, "position_ids", "position_ids"),
        past_keys=name(inputs, "past_key_names", "past_key_values.%d.key"),
        past_values=name(inputs, "past_value_names", "past_key_values.%d.value"),
        logits=name(outputs, "logits", "logits"),
        present_keys=name(outputs, "present_key_names", "present.%d.key"),
        present_values=name(outputs, "present_value_names", "present.%d.value"),
        layers=count("num_hidden_layers"),
        kv_heads=count("num_key_value_heads"),
        head_size=count("head_size"),
        context_length=onnx_folder.context_length(config),
    )


def _section(decoder: dict[str, Any], key: str) -> dict[str, Any]:
    value = decoder.get(key)
    return value if isinstance(value, dict) else {}


class OnnxTeacherForced:
    """An ONNX Runtime GenAI folder on onnxruntime (CPU) as a
    :class:`~edged.backends.fidelity.TeacherForced`."""

    def __init__(self, folder: str, *, window: int, batch: int, threads: int) -> None:
        path = Path(folder)
        self._g = _graph(onnx_folder.read_config(path))
        if window < 2:
            raise InvalidArgument("the window must be at least 2 tokens")
        if self._g.context_length and window > self._g.context_length:
            raise InvalidArgument(
                f"a window of {window} tokens is longer than the model's context "
                f"({self._g.context_length})"
            )
        self._window = window
        self._batch = max(1, min(batch, window))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path / self._g.filename), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidModelFile(f"onnxruntime could not load this model: {exc}") from exc
        declared = {i.name: i for i in self._session.get_inputs()}
        self._inputs = set(declared)
        past = declared.get(self._g.past_keys % 0)
        if past is None:
            raise InvalidModelFile(f"the graph has no input {self._g.past_keys % 0!r}")
        if past.type not in _DTYPES:
            raise InvalidModelFile(f"unsupported KV cache type {past.type}")
        self._kv_dtype = _DTYPES[past.type]
        logits = next((o for o in self._session.get_outputs() if o.name == self._g.logits), None)
        if logits is None:
            raise InvalidModelFile(f"the graph has no output {self._g.logits!r}")
        self._vocab = int(logits.shape[-1]) if isinstance(logits.shape[-1], int) else 0
        self._wanted = [
            self._g.logits,
            *(self._g.present_keys % i for i in range(self._g.layers)),
            *(self._g.present_values % i for i in range(self._g.layers)),
        ]

    def n_vocab(self) -> int:
        if not self._vocab:  # a symbolic vocabulary dimension: ask the graph once
            self._vocab = int(next(self.logits([0, 0], 2)).shape[-1])
        return self._vocab

    def logits(self, piece: Sequence[int], batch: int) -> Iterator[Any]:
        if len(piece) > self._window:
            raise InvalidArgument(f"a piece of {len(piece)} tokens exceeds the window")
        g = self._g
        empty = np.zeros((1, g.kv_heads, 0, g.head_size), dtype=self._kv_dtype)
        past_k = [empty] * g.layers
        past_v = [empty] * g.layers
        for off in range(0, len(piece), batch):
            part = np.asarray(piece[off : off + batch], dtype=np.int64)[None, :]
            end = off + part.shape[1]
            feed: dict[str, Any] = {
                g.input_ids: part,
                g.attention_mask: np.ones((1, end), dtype=np.int64),
            }
            if g.position_ids in self._inputs:
                feed[g.position_ids] = np.arange(off, end, dtype=np.int64)[None, :]
            for i in range(g.layers):
                feed[g.past_keys % i] = past_k[i]
                feed[g.past_values % i] = past_v[i]
            out = self._session.run(self._wanted, feed)
            past_k = out[1 : 1 + g.layers]
            past_v = out[1 + g.layers :]
            yield np.asarray(out[0][0], dtype=np.float32)

    def close(self) -> None:
        del self._session
