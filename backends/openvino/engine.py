"""The OpenVINO GenAI engine: a GGUF or an OpenVINO IR folder on CPU, GPU or NPU.

What runs in parallel: one ``ContinuousBatchingPipeline`` holds every request
that is running; each :meth:`step` is one pipeline step, which batches the next
token of every decoding request with a chunk of prompt for requests still
prefilling (``dynamic_split_fuse``). Up to ``max_sequences`` requests run at
once; the rest wait in edged's queue.

Sessions: the pipeline runs with prefix caching, so KV blocks of finished
sequences stay in its paged KV cache (until the cache is full, then least
recently used first) and a later prompt that starts with the same tokens reuses
them. Each turn of a session sends the whole history, whose prefix is the
previous turn's prompt and reply: that is per-session KV reuse without a slot
per session, and it also serves a fork or a shared system prompt.

``cached_prompt_tokens``: openvino-genai 2026.4 does not report how many prompt
tokens a request found in its prefix cache, so the engine computes it from its
own record of what the pipeline has evaluated, by the pipeline's rule (checked
against the pipeline by counting prefill steps, see tests/integration/
test_openvino.py): a prompt that starts with a whole earlier sequence (its
prompt and all generated tokens but the last) reuses all of it; otherwise only
the whole KV blocks of the shared prefix are reused. The figure assumes the
blocks were not overwritten, which needs the KV cache (``KV_CACHE_GB``) to fill
up first.

Model load: OpenVINO's CACHE_DIR (``LoadSpec.cache_dir``) keeps the compiled
model, so a second load skips compilation; reading the GGUF and building its
tokenizer are paid on every load.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_genai as og

from edged.backends import toolkit
from edged.backends.base import (
    Capabilities,
    Event,
    Job,
    LoadSpec,
    Sampling,
    refuse_kv_type,
)
from edged.backends.openvino.info import INFO
from edged.common.errors import (
    EdgedError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    InvalidModelFile,
    ResourceExhausted,
)
from edged.common.gguf import read_gguf_info
from edged.common.model_facts import ir_facts

log = logging.getLogger(__name__)

KV_CACHE_GB = 1  # the pipeline's paged KV cache (whole GB: SchedulerConfig.cache_size)
PREFILL_CHUNK = 512  # tokens per step (SchedulerConfig.max_num_batched_tokens)
# KV cache block size: 32 tokens on CPU (measured, see the module docstring);
# OpenVINO's GPU plugin uses 16.
BLOCK_SIZE = {"CPU": 32}
DEFAULT_BLOCK_SIZE = 16
REMEMBERED_SEQUENCES = 64  # evaluated sequences kept for the cached-token estimate
IR_MODEL = "openvino_model.xml"
IR_TOKENIZER = "openvino_tokenizer.xml"


def ov_device(device: str) -> str:
    """edged's device name ("cpu", "gpu", "gpu.1", "npu") to OpenVINO's ("GPU.1")."""
    name = device.strip().upper()
    base, _, index = name.partition(".")
    if base not in ("CPU", "GPU", "NPU") or (index and not index.isdigit()):
        raise InvalidArgument(
            f"the openvino backend runs on cpu, gpu, gpu.N or npu, not {device!r}"
        )
    return name


def reused_prefix(prompt: Sequence[int], seen: Sequence[int], block: int) -> int:
    """Prompt tokens the prefix cache holds from an earlier sequence ``seen``.

    A prompt that starts with all of ``seen`` reuses all of it (its last block
    may be partly filled); otherwise only whole blocks of the shared prefix.
    """
    n = toolkit.common_prefix(prompt, seen)
    if n == len(seen):
        return n
    return n // block * block


def _library_reason(exc: BaseException) -> str:
    """The last line of an OpenVINO error (the first lines name source files)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass(eq=False, kw_only=True)
class _Req(toolkit.Running):
    handle: Any
    limit: int  # max_new_tokens given to the pipeline
    by_context: bool  # the limit is the context, not max_tokens
    generated: list[int] = field(default_factory=list)  # as returned (end token included)
    text_ids: list[int] = field(default_factory=list)  # the generated tokens that make text
    prefix: int = 0  # decode window start (see _new_text)
    read: int = 0  # text_ids already turned into text


class OpenVinoEngine(toolkit.EngineCore[_Req]):
    def __init__(self, spec: LoadSpec) -> None:
        refuse_kv_type(INFO.name, INFO.kv_types, spec.kv_type)
        path = Path(spec.model_path)
        self._device = ov_device(spec.device)
        self._check_device()
        if path.is_dir():
            if not (path / IR_MODEL).is_file() or not (path / IR_TOKENIZER).is_file():
                raise InvalidModelFile(f"an OpenVINO IR folder needs {IR_MODEL} and {IR_TOKENIZER}")
            fmt, train_ctx, template = "openvino", ir_facts(path).context_train, ""
            bos_flag: bool | None = None
        else:
            info = read_gguf_info(path)
            fmt, train_ctx, template = "gguf", info.context_length, info.chat_template
            bos_flag = info.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        n_ctx = min(spec.context_length, train_ctx) if train_ctx else spec.context_length
        self._max_seq = max(1, spec.max_sequences)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._block = BLOCK_SIZE.get(self._device.partition(".")[0], DEFAULT_BLOCK_SIZE)
        t0 = time.perf_counter()
        self._pipe = self._load(path, spec)
        self.pipeline_seconds = time.perf_counter() - t0
        tok = self._pipe.get_tokenizer()
        self._tokenizer = tok
        if not template:
            template = tok.get_original_chat_template() or tok.chat_template
        base = self._pipe.get_config()
        self._stop_ids = {int(t) for t in base.stop_token_ids} | {int(base.eos_token_id)}
        self._next_id = 0
        self._seen: deque[tuple[int, ...]] = deque(maxlen=REMEMBERED_SEQUENCES)
        self._sessions: dict[str, tuple[int, ...]] = {}
        self._warm_up()
        self.load_seconds = time.perf_counter() - t0
        log.info("openvino: %s loaded on %s in %.1f s", fmt, self._device, self.load_seconds)
        caps = Capabilities(
            backend=INFO.name,
            device=spec.device,
            formats=("gguf", "openvino"),
            context_length=n_ctx,
            max_sequences=self._max_seq,
            batching=True,
            session_kv=True,
            kv_tiers=False,
            fork=False,
            # openvino-genai's structured output (xgrammar): JSON schema, regex, EBNF
            response_formats=("json_object", "json_schema", "grammar", "regex"),
            grammar_syntaxes=("ebnf",),
            tools=True,
            tokenize=True,
            # LLMPipeline generates only (TextEmbeddingPipeline is not wired in)
            embeddings=False,
        )
        metadata = {
            "model.format": fmt,
            "model.context_length": str(train_ctx),
            "openvino.device": self._device,
            "openvino.version": og.get_version(),
            "openvino.load_seconds": f"{self.load_seconds:.2f}",
        }
        super().__init__(
            caps,
            toolkit.PromptFormat(
                chat_template=template,
                bos_token=tok.get_bos_token(),
                eos_token=tok.get_eos_token(),
                add_bos=bos_flag is not False,
                metadata=metadata,
            ),
        )

    # ------------------------------------------------------------ loading

    def _check_device(self) -> None:
        try:
            available = list(ov.Core().available_devices)
        except RuntimeError as exc:
            raise FailedPrecondition(f"OpenVINO cannot list devices: {exc}") from exc
        base = self._device.partition(".")[0]
        if self._device not in available and not (
            self._device == base and any(d.startswith(base) for d in available)
        ):
            raise FailedPrecondition(
                f"the OpenVINO device {self._device} is not available here "
                f"(available: {', '.join(available) or 'none'})"
            )

    def _load(self, path: Path, spec: LoadSpec) -> Any:
        sched = og.SchedulerConfig()
        sched.enable_prefix_caching = True
        sched.cache_size = KV_CACHE_GB
        sched.max_num_seqs = self._max_seq
        sched.max_num_batched_tokens = PREFILL_CHUNK
        sched.dynamic_split_fuse = True
        props: dict[str, object] = {}
        if self._device == "CPU" and spec.threads > 0:
            props["INFERENCE_NUM_THREADS"] = spec.threads
        if spec.cache_dir:
            Path(spec.cache_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            props["CACHE_DIR"] = spec.cache_dir
        if not path.is_dir() and path.suffix.lower() != ".gguf":
            path = self._gguf_link(path, spec)
        try:
            return og.ContinuousBatchingPipeline(str(path), sched, self._device, props)
        except RuntimeError as exc:
            raise InvalidModelFile(
                f"OpenVINO GenAI could not load this model on {self._device}: "
                f"{_library_reason(exc)}"
            ) from exc

    def _gguf_link(self, blob: Path, spec: LoadSpec) -> Path:
        """A ``.gguf`` name for a store blob: OpenVINO GenAI tells GGUF by the suffix."""
        if spec.cache_dir:
            folder = Path(spec.cache_dir) / "gguf"
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="edged-openvino-")
            folder = Path(self._tmp.name)
        link = folder / f"{spec.model_digest.replace(':', '-') or 'model'}.gguf"
        tmp = folder / f".{link.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(blob.resolve())
        tmp.replace(link)  # atomic: another worker may be loading the same model
        return link

    def _warm_up(self) -> None:
        """One token through the pipeline: its first step is several times slower."""
        ids = [
            int(t) for t in self._tokenizer.encode("Hi", add_special_tokens=True).input_ids.data[0]
        ]
        cfg = self._pipe.get_config()
        cfg.max_new_tokens = 1
        cfg.do_sample = False
        handle = self._pipe.add_request(self._new_id(), _tensor(ids), cfg)
        try:
            while self._pipe.has_non_finished_requests():
                self._pipe.step()
            handle.read_all()
        except RuntimeError as exc:
            raise FailedPrecondition(
                f"OpenVINO could not run this model on {self._device}: {_library_reason(exc)}"
            ) from exc

    # ------------------------------------------------------------ interface

    def drop_session(self, session_id: str) -> None:
        # The pipeline's blocks are not owned by a session: they stay in the
        # prefix cache until overwritten. Forgetting the record is all we can do.
        self._sessions.pop(session_id, None)

    def fork_session(self, source_id: str, new_id: str) -> str:
        # Nothing is copied: the fork's next turn resends the history and finds
        # its prefix in the pipeline's cache like any other prompt.
        seen = self._sessions.get(source_id)
        if seen is not None:
            self._sessions[new_id] = seen
        return "none"

    def kv_locations(self) -> dict[str, str]:
        return {sid: "resident" for sid in self._sessions}

    def _advance(self, events: list[Event]) -> None:
        if not self._active:
            if self._pipe.has_non_finished_requests():
                self._pipe_step(events)  # let stopped requests leave the pipeline
            return
        if not self._pipe_step(events):
            return
        now = time.perf_counter()
        for r in list(self._active):
            try:
                self._collect(r, now, events)
            except EdgedError as exc:
                self._fail(r, exc, events)

    def close(self) -> None:
        super().close()
        self._pipe = None
        if self._tmp is not None:
            self._tmp.cleanup()

    # ------------------------------------------------------------ admission

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        enc = self._tokenizer.encode(text, add_special_tokens=add_special)
        return [int(t) for t in enc.input_ids.data[0]]

    def _prepare(self, job: Job) -> object:
        """The job's structured-output config (openvino-genai checks it when the
        request is added: a bad one fails the request then, naming the problem)."""
        c = toolkit.effective_constraint(job)
        if c is None:
            return None
        if c.kind == "json_object":
            return og.StructuredOutputConfig(json_schema=json.dumps({"type": "object"}))
        if c.kind == "json_schema":
            return og.StructuredOutputConfig(json_schema=c.text)
        if c.kind == "regex":
            return og.StructuredOutputConfig(regex=c.text)
        return og.StructuredOutputConfig(grammar=c.text)

    def _tokenize_parts(self, parts: list[tuple[str, bool]], add_special: bool) -> list[int]:
        """OpenVINO's tokenizer always reads control-token text as control tokens:
        a message that spells one is refused instead of forging a turn."""
        for text, is_content in parts:
            if is_content:
                ids = self._tokenize(text, False)
                plain = self._tokenizer.decode(ids, skip_special_tokens=True)
                if plain != self._tokenizer.decode(ids, skip_special_tokens=False):
                    raise InvalidArgument(
                        "a message contains the text of a control token, which the "
                        f"{INFO.name} backend cannot keep as plain text; remove it or use a "
                        "backend that can (llama.cpp)"
                    )
        return super()._tokenize_parts(parts, add_special)

    def pieces(self, tokens: list[int], *, special: bool) -> list[bytes]:
        decode = self._tokenizer.decode
        return [decode([t], skip_special_tokens=not special).encode("utf-8") for t in tokens]

    def _config(self, s: Sampling, limit: int, structured: object = None) -> Any:
        cfg = self._pipe.get_config()
        if structured is not None:
            cfg.structured_output_config = structured
        cfg.max_new_tokens = limit
        cfg.repetition_penalty = s.repeat_penalty
        cfg.stop_strings = set()  # edged's TextStream handles stop strings
        if s.temperature > 0.0:
            cfg.do_sample = True
            cfg.temperature = s.temperature
            cfg.top_p = s.top_p
            if s.top_k > 0:
                cfg.top_k = s.top_k
            if s.min_p > 0.0:
                cfg.min_p = s.min_p
            cfg.rng_seed = toolkit.request_seed(s)
        else:
            cfg.do_sample = False
        return cfg

    def _cached(self, job: Job, prompt: list[int]) -> tuple[int, str]:
        best = 0
        for seen in self._seen:
            best = max(best, reused_prefix(prompt, seen, self._block))
        own = self._sessions.get(job.session_id) if job.session_id is not None else None
        cached = min(best, len(prompt) - 1)  # the last prompt token is always evaluated
        resident = own is not None and reused_prefix(prompt, own, self._block) > 0
        return cached, toolkit.kv_source(job, resident=resident, cached=cached)

    def _start(self, job: Job, prompt: list[int], prepared: object) -> _Req | None:
        if len(self._active) >= self._max_seq:
            return None
        if job.session_id is not None and any(
            r.job.session_id == job.session_id for r in self._active
        ):
            return None  # the session's previous turn is still running
        room = self._n_ctx - len(prompt)
        wanted = job.sampling.max_tokens or room
        limit = min(wanted, room)
        cached, source = self._cached(job, prompt)
        try:
            handle = self._pipe.add_request(
                self._new_id(), _tensor(prompt), self._config(job.sampling, limit, prepared)
            )
        except RuntimeError as exc:
            raise Internal(f"openvino: {_library_reason(exc)}") from exc
        return _Req.begin(
            job,
            prompt,
            cached=cached,
            source=source,
            handle=handle,
            limit=limit,
            by_context=limit < wanted,
        )

    # ------------------------------------------------------------ decoding

    def _pipe_step(self, events: list[Event]) -> bool:
        try:
            self._pipe.step()
        except RuntimeError as exc:
            log.exception("openvino: pipeline step failed")
            self._fail_all(Internal(f"openvino: {_library_reason(exc)}"), events)
            return False
        return True

    def _collect(self, r: _Req, now: float, events: list[Event]) -> None:
        handle = r.handle
        new: list[int] = []
        finish: str | None = None
        if handle.can_read():
            for out in handle.read().values():
                new.extend(int(t) for t in out.generated_ids)
                if out.finish_reason == og.GenerationFinishReason.LENGTH:
                    finish = "context_full" if r.by_context else "length"
                elif out.finish_reason == og.GenerationFinishReason.STOP:
                    finish = "stop"
        status = handle.get_status()
        if status == og.GenerationStatus.IGNORED:
            raise ResourceExhausted(
                "the OpenVINO KV cache cannot hold this request; shorten it or lower EDGED_PARALLEL"
            )
        if finish is None and status != og.GenerationStatus.RUNNING:
            finish = "stop"
        if new and not r.generated:
            r.t.t_first = now
            r.t.t_prefilled = now
        for token in new:
            r.generated.append(token)
            if token in self._stop_ids:
                finish = "stop"
                break
            r.text_ids.append(token)
            r.t.completion += 1
            r.t.unsent += 1
        if self._emit(r, self._new_text(r).encode("utf-8"), events):
            return  # a stop string ended it
        if finish is not None:
            self._finish(r, finish, events)

    def _new_text(self, r: _Req) -> str:
        """Text of the generated tokens not yet emitted (whole characters only).

        Decodes a short window (from ``prefix``) so that a token whose text
        depends on its neighbours (merges, leading spaces) comes out right.
        """
        ids = r.text_ids
        if len(ids) == r.read:
            return ""
        decode = self._tokenizer.decode
        before = decode(ids[r.prefix : r.read], skip_special_tokens=True)
        after = decode(ids[r.prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing new yet, or a character split across tokens
        r.prefix, r.read = r.read, len(ids)
        return str(after[len(before) :])

    def _flush(self, r: _Req, reason: str, events: list[Event]) -> None:
        """The text of tokens the decode window still holds (a stop string ends without it)."""
        if reason == "stop_sequence" or r.read >= len(r.text_ids):
            return
        decode = self._tokenizer.decode
        before = decode(r.text_ids[r.prefix : r.read], skip_special_tokens=True)
        rest = decode(r.text_ids[r.prefix :], skip_special_tokens=True)[len(before) :]
        r.read = len(r.text_ids)
        self._chunk(r, r.stream.feed(rest.encode("utf-8")), events)

    def _release(self, r: _Req, reason: str) -> None:
        if reason in ("cancelled", "stop_sequence"):
            r.handle.stop()  # the pipeline would otherwise go on generating for it
        if reason in ("cancelled", "failed"):
            return
        # What the pipeline evaluated: the prompt and every generated token but
        # the last (sampled, never fed back).
        seq = tuple(r.prompt + r.generated[:-1]) if r.generated else tuple(r.prompt)
        self._seen.append(seq)
        if r.job.session_id is not None:
            self._sessions[r.job.session_id] = seq


def _tensor(ids: Sequence[int]) -> Any:
    return ov.Tensor(np.array([list(ids)], dtype=np.int64))
