"""The ONNX Runtime GenAI engine.

What runs in parallel and what queues: onnxruntime-genai's Generator API has no
continuous batching across independent requests, so each request (and each
resident session) owns a Generator, and every step advances each active
generator by one token in turn (round-robin interleaving). Streams therefore
progress together but share, not multiply, the decode throughput. Up to
``max_sequences`` requests run at once; the rest wait in the queue.

Sessions keep their Generator (and so its KV) between turns: a turn rewinds it
to the longest prefix shared with the new prompt (``rewind_to``) and appends
only the rest. A turn whose sampling settings differ from the ones the
generator was built with (they are fixed per generator) is rebuilt from its
history instead, as is a session whose generator was evicted. There is no RAM
or disk tier for this backend: evicted sessions are rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime_genai as og

from edged.backends.accounting import Timing, WaitQueue
from edged.backends.base import (
    Capabilities,
    Chunk,
    Event,
    Failed,
    Job,
    LoadSpec,
    ModelDescription,
    Sampling,
)
from edged.backends.chat_template import ChatTemplate
from edged.backends.textstream import TextStream
from edged.daemon.errors import (
    ContextOverflow,
    EdgedError,
    InvalidArgument,
    InvalidModelFile,
)

log = logging.getLogger(__name__)

SUPPORTED_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _search_key(s: Sampling) -> tuple[Any, ...]:
    return (s.temperature, s.top_p, s.top_k, s.repeat_penalty, s.seed)


@dataclass
class _Gen:
    generator: Any
    tokens: list[int]  # what the generator's KV holds
    key: tuple[Any, ...]
    session_id: str | None
    busy: bool = False
    last_used: float = 0.0


@dataclass
class _Req:
    job: Job
    gen: _Gen
    prompt: list[int]
    stream: TextStream
    tok_stream: Any
    t: Timing
    appended: bool = False
    cancelled: bool = False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelFile(f"{path.name} is missing or not valid JSON") from exc
    if not isinstance(data, dict):
        raise InvalidModelFile(f"{path.name} is not a JSON object")
    return data


def _token_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return ""


class OnnxEngine:
    def __init__(self, spec: LoadSpec) -> None:
        folder = Path(spec.model_path)
        genai = _read_json(folder / "genai_config.json")
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        model_cfg = genai.get("model", {})
        train_ctx = int(model_cfg.get("context_length") or spec.context_length)
        self._n_ctx = min(spec.context_length, train_ctx)
        try:
            config = og.Config(str(folder))
            config.overlay(
                json.dumps(
                    {
                        "model": {
                            "decoder": {
                                "session_options": {
                                    "intra_op_num_threads": spec.threads,
                                    "inter_op_num_threads": 1,
                                }
                            }
                        }
                    }
                )
            )
            self._model = og.Model(config)
            self._tokenizer = og.Tokenizer(self._model)
        except Exception as exc:  # onnxruntime raises plain RuntimeError/OSError
            raise InvalidModelFile(f"onnxruntime-genai could not load this model: {exc}") from exc
        template_file = folder / "chat_template.jinja"
        template = (
            template_file.read_text(encoding="utf-8")
            if template_file.is_file()
            else str(tok_cfg.get("chat_template") or "")
        )
        self._has_template = bool(template)
        self._template = ChatTemplate(
            template,
            bos_token=_token_text(tok_cfg.get("bos_token")),
            eos_token=_token_text(tok_cfg.get("eos_token")),
        )
        self._bos_text = _token_text(tok_cfg.get("bos_token"))
        self._max_seq = max(1, spec.max_sequences)
        self._gens: list[_Gen] = []
        self._waiting = WaitQueue()
        self._active: list[_Req] = []
        self._caps = Capabilities(
            backend="onnxruntime",
            device="cpu",
            formats=("onnx",),
            context_length=self._n_ctx,
            max_sequences=self._max_seq,
            batching=False,
            session_kv=True,
            sampling=SUPPORTED_SAMPLING,
            kv_tiers=False,
            fork=False,
        )
        self._metadata = {
            "model.type": str(model_cfg.get("type", "")),
            "model.context_length": str(train_ctx),
            "model.vocab_size": str(model_cfg.get("vocab_size", "")),
        }

    # ------------------------------------------------------------ interface

    def describe(self) -> ModelDescription:
        return ModelDescription(
            capabilities=self._caps,
            chat_template=self._template.source if self._has_template else "",
            metadata=self._metadata,
        )

    def submit(self, job: Job) -> None:
        self._waiting.submit(job)

    def cancel(self, request_id: int) -> None:
        for r in self._active:
            if r.job.request_id == request_id:
                r.cancelled = True
        self._waiting.cancel(request_id)

    def drop_session(self, session_id: str) -> None:
        for g in list(self._gens):
            if g.session_id == session_id and not g.busy:
                self._gens.remove(g)

    def fork_session(self, source_id: str, new_id: str) -> str:
        return "none"  # generators cannot be copied: the fork is rebuilt from history

    def kv_locations(self) -> dict[str, str]:
        return {g.session_id: "resident" for g in self._gens if g.session_id}

    def has_work(self) -> bool:
        return bool(self._active or self._waiting)

    def step(self) -> list[Event]:
        events: list[Event] = []
        for r in [r for r in self._active if r.cancelled]:
            self._finish(r, "cancelled", events)
        self._waiting.admit(lambda job: self._admit(job, events), events)
        for r in list(self._active):
            try:
                self._advance(r, events)
            except EdgedError as exc:
                events.append(Failed(r.job.request_id, type(exc).__name__, str(exc)))
                self._drop(r, keep=False)
            except Exception as exc:
                log.exception("onnxruntime-genai failed")
                events.append(Failed(r.job.request_id, "Internal", f"onnxruntime-genai: {exc}"))
                self._drop(r, keep=False)
        return events

    def close(self) -> None:
        self._active.clear()
        self._gens.clear()

    # ------------------------------------------------------------ admission

    def _admit(self, job: Job, events: list[Event]) -> bool:
        """Start ``job`` if a generator slot is free; False leaves it waiting."""
        if sum(1 for g in self._gens if g.busy) >= self._max_seq or self._session_busy(job):
            return False
        try:
            self._start(job)
        except EdgedError as exc:
            events.append(Failed(job.request_id, type(exc).__name__, str(exc)))
        return True

    def _session_busy(self, job: Job) -> bool:
        return job.session_id is not None and any(
            g.session_id == job.session_id and g.busy for g in self._gens
        )

    def _check_sampling(self, s: Sampling) -> None:
        if s.min_p > 0.0:
            raise InvalidArgument(
                "min_p is not supported by the onnxruntime backend (supported: "
                + ", ".join(SUPPORTED_SAMPLING)
                + ")"
            )

    def _tokenize(self, job: Job) -> list[int]:
        if job.prompt is not None:
            if not job.prompt.strip():
                raise InvalidArgument("the prompt is empty")
            text = job.prompt
        else:
            text = self._template.render(job.messages, add_generation_prompt=True)
        tokens = [int(t) for t in self._tokenizer.encode(text)]
        if not tokens:
            raise InvalidArgument("the prompt is empty")
        if len(tokens) >= self._n_ctx:
            raise ContextOverflow(
                f"the prompt is {len(tokens)} tokens but the context holds {self._n_ctx}; "
                "shorten it (or start a new session), or raise EDGED_CONTEXT"
            )
        return tokens

    def _new_generator(self, s: Sampling) -> Any:
        params = og.GeneratorParams(self._model)
        opts: dict[str, Any] = {
            "max_length": self._n_ctx,
            "do_sample": s.temperature > 0.0,
            "repetition_penalty": s.repeat_penalty,
        }
        if s.temperature > 0.0:
            opts.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or 0)
            opts["random_seed"] = (
                s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
            )
        params.set_search_options(**opts)
        return og.Generator(self._model, params)

    def _start(self, job: Job) -> None:
        self._check_sampling(job.sampling)
        prompt = self._tokenize(job)
        key = _search_key(job.sampling)
        gen: _Gen | None = None
        kv_source = "none"
        cached = 0
        if job.session_id is not None:
            gen = next((g for g in self._gens if g.session_id == job.session_id), None)
            if gen is not None:
                sampled_with_seed = job.sampling.temperature > 0 and job.sampling.seed is not None
                reusable = gen.key == key and not sampled_with_seed
                cached = _common_prefix(gen.tokens, prompt) if reusable else 0
                if cached == len(prompt):
                    cached -= 1
                if cached > 0 and cached < len(gen.tokens):
                    try:
                        gen.generator.rewind_to(cached)
                        del gen.tokens[cached:]
                    except Exception:
                        cached = 0
                if cached > 0:
                    kv_source = "resident"
                else:
                    self._gens.remove(gen)
                    gen = None
            if gen is None and any(m.role == "assistant" for m in job.messages):
                kv_source = "rebuilt"
        if gen is None:
            self._make_room()
            gen = _Gen(self._new_generator(job.sampling), [], key, job.session_id)
            self._gens.append(gen)
        gen.busy = True
        self._active.append(
            _Req(
                job=job,
                gen=gen,
                prompt=prompt,
                stream=TextStream(job.sampling.stop),
                tok_stream=self._tokenizer.create_stream(),
                t=Timing(len(prompt), cached, kv_source, time.perf_counter()),
            )
        )

    def _make_room(self) -> None:
        while len(self._gens) >= self._max_seq:
            idle = [g for g in self._gens if not g.busy]
            if not idle:
                return
            victim = min(idle, key=lambda g: g.last_used)
            log.info("evicting session %s (its next turn is rebuilt)", victim.session_id)
            self._gens.remove(victim)

    # ------------------------------------------------------------ decoding

    def _advance(self, r: _Req, events: list[Event]) -> None:
        g = r.gen.generator
        if not r.appended:
            new = r.prompt[r.t.cached :]
            g.append_tokens(new)
            r.gen.tokens.extend(new)
            r.appended = True
            r.t.t_prefilled = time.perf_counter()
        if g.is_done() or len(r.gen.tokens) >= self._n_ctx:
            self._finish(r, "context_full" if not g.is_done() else "stop", events)
            return
        g.generate_next_token()
        token = int(g.get_next_tokens()[0])
        now = time.perf_counter()
        if r.t.completion == 0:
            r.t.t_first = now
        r.gen.tokens.append(token)
        if g.is_done():  # end of generation token (or max_length)
            self._finish(r, "stop", events)
            return
        r.t.completion += 1
        r.t.unsent += 1
        text = r.stream.feed(r.tok_stream.decode(token).encode("utf-8"))
        if r.stream.matched is not None:
            if text:
                events.append(Chunk(r.job.request_id, text, r.t.unsent))
                r.t.unsent = 0
            self._finish(r, "stop_sequence", events)
            return
        if text:
            events.append(Chunk(r.job.request_id, text, r.t.unsent))
            r.t.unsent = 0
        if r.job.sampling.max_tokens and r.t.completion >= r.job.sampling.max_tokens:
            self._finish(r, "length", events)

    def _finish(self, r: _Req, reason: str, events: list[Event]) -> None:
        events.extend(r.t.final_events(r.job, r.stream, reason))
        self._drop(r, keep=r.job.session_id is not None)

    def _drop(self, r: _Req, *, keep: bool) -> None:
        if r in self._active:
            self._active.remove(r)
        r.gen.busy = False
        r.gen.last_used = time.monotonic()
        if not keep and r.gen in self._gens:
            self._gens.remove(r.gen)
