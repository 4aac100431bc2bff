"""Greedy continuations from OpenVINO GenAI, for :mod:`edged.backends.fidelity`.

openvino-genai 2026.4's pipelines return generated tokens, not logits, so an
OpenVINO candidate is compared by greedy continuations
(:func:`~edged.backends.fidelity.greedy_measure`). All prompts go into one
continuous-batching pipeline at once, end-of-text ignored, so every
continuation has the asked length.

Blocking and CPU-heavy: run in a child process (``edged.backends.fidelity_run``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as og

from edged.common.errors import InvalidModelFile
from edged.common.model_facts import model_facts

KV_CACHE_GB = 1


class OpenVinoGreedy:
    """A GGUF (or OpenVINO IR folder) on OpenVINO's CPU plugin as a
    :class:`~edged.backends.fidelity.GreedySource`."""

    def __init__(self, path: str, *, threads: int = 2) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        model = Path(path)
        if not model.is_dir():
            self._vocab = model_facts(model, "gguf").n_vocab
            if model.suffix.lower() != ".gguf":  # OpenVINO GenAI tells GGUF by the suffix
                self._tmp = tempfile.TemporaryDirectory(prefix="edged-fidelity-")
                link = Path(self._tmp.name) / "model.gguf"
                link.symlink_to(model.resolve())
                model = link
        else:
            self._vocab = model_facts(model, "openvino").n_vocab
        sched = og.SchedulerConfig()
        sched.cache_size = KV_CACHE_GB
        sched.max_num_batched_tokens = 512
        sched.dynamic_split_fuse = True
        props: dict[str, object] = {"INFERENCE_NUM_THREADS": threads} if threads > 0 else {}
        try:
            self._pipe: Any = og.ContinuousBatchingPipeline(str(model), sched, "CPU", props)
        except RuntimeError as exc:
            self.close()
            raise InvalidModelFile(f"OpenVINO GenAI could not load {path}: {exc}") from exc

    def n_vocab(self) -> int:
        return self._vocab

    def continue_greedy(self, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
        handles = []
        for i, prompt in enumerate(prompts):
            cfg = self._pipe.get_config()
            cfg.max_new_tokens = new_tokens
            cfg.min_new_tokens = new_tokens
            cfg.ignore_eos = True
            cfg.do_sample = False
            cfg.stop_strings = set()
            cfg.stop_token_ids = set()
            ids = ov.Tensor(np.array([list(prompt)], dtype=np.int64))
            handles.append(self._pipe.add_request(i, ids, cfg))
        while self._pipe.has_non_finished_requests():
            self._pipe.step()
        return [[int(t) for t in h.read_all()[0].generated_ids] for h in handles]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
