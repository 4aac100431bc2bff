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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og

from edged.backends import toolkit
from edged.backends.base import (
    Capabilities,
    Event,
    Job,
    LoadSpec,
    Sampling,
    TokenLogprob,
    refuse_kv_type,
)
from edged.backends.onnx.info import INFO
from edged.common import onnx_folder
from edged.common.errors import EdgedError, Internal, InvalidArgument, InvalidModelFile

log = logging.getLogger(__name__)

SUPPORTED_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed")
MAX_LOGPROBS = 20
# edged's constraint kinds as onnxruntime-genai's guidance types
GUIDANCE = {"json_schema": "json_schema", "regex": "regex", "grammar": "lark_grammar"}
# onnxruntime-genai's random_seed is a signed 32-bit int: edged's seeds (up to
# 2^32 - 2) are folded into it, so one seed always means the same generator.
ORT_SEED_MASK = 0x7FFFFFFF


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
    constrained: bool = False  # built with guidance: never reused for another turn


@dataclass(eq=False, kw_only=True)
class _Req(toolkit.Running):
    gen: _Gen
    tok_stream: Any
    appended: bool = False


class OnnxEngine(toolkit.EngineCore[_Req]):
    def __init__(self, spec: LoadSpec) -> None:
        refuse_kv_type(INFO.name, INFO.kv_types, spec.kv_type)
        folder = Path(spec.model_path)
        genai = onnx_folder.read_config(folder)
        tok_cfg = onnx_folder.read_tokenizer_config(folder)
        train_ctx = onnx_folder.context_length(genai) or spec.context_length
        n_ctx = min(spec.context_length, train_ctx)
        try:
            config = og.Config(str(folder))
            config.overlay(json.dumps(_threads_overlay(spec.threads)))
            self._model = og.Model(config)
            self._tokenizer = og.Tokenizer(self._model)
        except Exception as exc:  # onnxruntime raises plain RuntimeError/OSError
            raise InvalidModelFile(f"onnxruntime-genai could not load this model: {exc}") from exc
        template_file = folder / onnx_folder.CHAT_TEMPLATE
        template = (
            template_file.read_text(encoding="utf-8")
            if template_file.is_file()
            else str(tok_cfg.get("chat_template") or "")
        )
        self._max_seq = max(1, spec.max_sequences)
        self._gens: list[_Gen] = []
        caps = Capabilities(
            backend=INFO.name,
            device="cpu",
            formats=("onnx",),
            context_length=n_ctx,
            max_sequences=self._max_seq,
            batching=False,
            session_kv=True,
            sampling=SUPPORTED_SAMPLING,
            kv_tiers=False,
            fork=False,
            # onnxruntime-genai's guidance (llguidance): JSON schema, regex, Lark grammars
            response_formats=("json_object", "json_schema", "grammar", "regex"),
            grammar_syntaxes=("lark",),
            tools=True,
            max_logprobs=MAX_LOGPROBS,
            tokenize=True,
            # no pooling path: onnxruntime-genai runs decoder LLMs only
            embeddings=False,
        )
        self._controls = _special_texts(tok_cfg)
        model = onnx_folder.model_section(genai)
        super().__init__(
            caps,
            toolkit.PromptFormat(
                chat_template=template,
                bos_token=onnx_folder.token_text(tok_cfg.get("bos_token")),
                eos_token=onnx_folder.token_text(tok_cfg.get("eos_token")),
                metadata={
                    "model.type": str(model.get("type", "")),
                    "model.context_length": str(train_ctx),
                    "model.vocab_size": str(model.get("vocab_size", "")),
                },
            ),
        )

    # ------------------------------------------------------------ sessions

    def drop_session(self, session_id: str) -> None:
        for g in list(self._gens):
            if g.session_id == session_id and not g.busy:
                self._gens.remove(g)

    def kv_locations(self) -> dict[str, str]:
        return {g.session_id: "resident" for g in self._gens if g.session_id}

    def close(self) -> None:
        super().close()
        self._gens.clear()

    # ------------------------------------------------------------ admission

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        # onnxruntime-genai's tokenizer adds the model's special tokens itself
        return [int(t) for t in self._tokenizer.encode(text)]

    def _prepare(self, job: Job) -> object:
        """(guidance type, data) for a constrained job, else None."""
        c = toolkit.effective_constraint(job)
        if c is None:
            return None
        if c.kind == "json_object":
            return ("json_schema", json.dumps({"type": "object"}))
        return (GUIDANCE[c.kind], c.text)

    def _tokenize_parts(self, parts: list[tuple[str, bool]], add_special: bool) -> list[int]:
        """onnxruntime-genai's tokenizer reads control-token text as control tokens:
        a message that spells one is refused instead of forging a turn."""
        for text, is_content in parts:
            found = next((c for c in self._controls if is_content and c in text), None)
            if found is not None:
                raise InvalidArgument(
                    f"a message contains the control token {found!r}, which the {INFO.name} "
                    "backend cannot keep as plain text; remove it or use a backend that can "
                    "(llama.cpp)"
                )
        return super()._tokenize_parts(parts, add_special)

    def pieces(self, tokens: list[int], *, special: bool) -> list[bytes]:
        return [self._tokenizer.decode([t]).encode("utf-8") for t in tokens]

    def _start(self, job: Job, prompt: list[int], prepared: object) -> _Req | None:
        if sum(1 for g in self._gens if g.busy) >= self._max_seq:
            return None
        gen = self._session_generator(job.session_id)
        if gen is not None and gen.busy:
            return None  # the session's previous turn is still running
        key = _search_key(job.sampling)
        guidance = prepared if isinstance(prepared, tuple) else None
        # a grammar's state lives in its generator: a constrained turn never reuses one
        reusable = gen is not None and guidance is None and gen.key == key
        cached = self._reuse(gen, job, prompt, key) if gen is not None and reusable else 0
        if gen is not None and cached == 0:
            self._gens.remove(gen)
            gen = None
        resident = gen is not None
        if gen is None:
            self._make_room()
            generator = self._new_generator(job.sampling, guidance)
            gen = _Gen(generator, [], key, job.session_id, constrained=guidance is not None)
            self._gens.append(gen)
        gen.busy = True
        return _Req.begin(
            job,
            prompt,
            cached=cached,
            source=toolkit.kv_source(job, resident=resident),
            gen=gen,
            tok_stream=self._tokenizer.create_stream(),
        )

    def _session_generator(self, session_id: str | None) -> _Gen | None:
        if session_id is None:
            return None
        return next((g for g in self._gens if g.session_id == session_id), None)

    def _reuse(self, gen: _Gen, job: Job, prompt: list[int], key: tuple[Any, ...]) -> int:
        """Prompt tokens the session's generator still holds (rewound to them)."""
        sampled_with_seed = job.sampling.temperature > 0 and job.sampling.seed is not None
        if gen.key != key or sampled_with_seed:
            return 0
        cached = toolkit.common_prefix(gen.tokens, prompt)
        if cached == len(prompt):
            cached -= 1
        if 0 < cached < len(gen.tokens):
            try:
                gen.generator.rewind_to(cached)
                del gen.tokens[cached:]
            except Exception:  # a generator that cannot rewind is rebuilt
                return 0
        return cached

    def _new_generator(self, s: Sampling, guidance: tuple[str, str] | None = None) -> Any:
        params = og.GeneratorParams(self._model)
        if guidance is not None:
            try:
                params.set_guidance(*guidance)
            except Exception as exc:  # onnxruntime-genai raises plain RuntimeError
                raise InvalidArgument(f"onnxruntime-genai refused the constraint: {exc}") from exc
        opts: dict[str, Any] = {
            "max_length": self._n_ctx,
            "do_sample": s.temperature > 0.0,
            "repetition_penalty": s.repeat_penalty,
        }
        if s.temperature > 0.0:
            opts.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or 0)
            opts["random_seed"] = toolkit.request_seed(s) & ORT_SEED_MASK
        params.set_search_options(**opts)
        return og.Generator(self._model, params)

    def _make_room(self) -> None:
        while len(self._gens) >= self._max_seq:
            idle = [g for g in self._gens if not g.busy]
            if not idle:
                return
            victim = min(idle, key=lambda g: g.last_used)
            log.info("evicting session %s (its next turn is rebuilt)", victim.session_id)
            self._gens.remove(victim)

    # ------------------------------------------------------------ decoding

    def _advance(self, events: list[Event]) -> None:
        for r in list(self._active):
            try:
                self._advance_one(r, events)
            except EdgedError as exc:
                self._fail(r, exc, events)
            except Exception as exc:
                log.exception("onnxruntime-genai failed")
                self._fail(r, Internal(f"onnxruntime-genai: {exc}"), events)

    def _advance_one(self, r: _Req, events: list[Event]) -> None:
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
        # the logits this step samples from: after generate_next_token, get_logits
        # already holds the next position's
        logits = g.get_logits() if r.job.logprobs is not None else None
        g.generate_next_token()
        token = int(g.get_next_tokens()[0])
        if r.t.completion == 0:
            r.t.t_first = time.perf_counter()
        r.gen.tokens.append(token)
        if g.is_done():  # end of generation token (or max_length)
            self._finish(r, "stop", events)
            return
        if logits is not None and r.job.logprobs is not None:
            r.logprobs.append(self._logprob(logits, token, r.job.logprobs))
        self._on_text_token(r, r.tok_stream.decode(token).encode("utf-8"), events)

    def _logprob(self, step_logits: Any, token: int, top: int) -> TokenLogprob:
        """A log-softmax of the step's logits (before temperature and truncation)."""
        raw = np.asarray(step_logits, dtype=np.float64)
        logits = raw.reshape(-1, raw.shape[-1])[-1]  # the last position's row
        peak = float(logits.max())
        logz = peak + float(np.log(np.exp(logits - peak).sum()))
        piece = self._tokenizer.decode([token]).encode("utf-8")
        alternatives: tuple[tuple[int, bytes, float], ...] = ()
        if top:
            best = np.argpartition(logits, -top)[-top:]
            best = best[np.argsort(-logits[best], kind="stable")]
            alternatives = tuple(
                (int(t), self._tokenizer.decode([int(t)]).encode("utf-8"), float(logits[t]) - logz)
                for t in best
            )
        return TokenLogprob(token, piece, float(logits[token]) - logz, alternatives)

    def _release(self, r: _Req, reason: str) -> None:
        r.gen.busy = False
        r.gen.last_used = time.monotonic()
        keep = r.job.session_id is not None and reason != "failed" and not r.gen.constrained
        if not keep and r.gen in self._gens:
            self._gens.remove(r.gen)


def _special_texts(tok_cfg: dict[str, Any]) -> tuple[str, ...]:
    """The text of every special token tokenizer_config.json declares."""
    decoder = tok_cfg.get("added_tokens_decoder")
    texts = set()
    if isinstance(decoder, dict):
        for entry in decoder.values():
            if isinstance(entry, dict) and entry.get("special") and entry.get("content"):
                texts.add(str(entry["content"]))
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        text = onnx_folder.token_text(tok_cfg.get(key))
        if text:
            texts.add(text)
    return tuple(sorted(texts, key=len, reverse=True))


def _threads_overlay(threads: int) -> dict[str, Any]:
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    return {"model": {"decoder": {"session_options": options}}}
