"""The engine toolkit: everything the engines share, written once.

The worker loop drives an engine one :meth:`~EngineCore.step` at a time (see
:class:`edged.backends.base.Engine`). Every engine queues jobs, encodes and
checks their prompts, admits them when it has room, finishes cancelled ones,
turns generated tokens into text chunks (stop strings, ``max_tokens``) and
ends each request with the same statistics. :class:`EngineCore` does all of
that; an engine subclasses it and implements only what its library does
differently:

``_tokenize(text, add_special)``
    the library's tokenizer.
``_start(job, prompt)``
    start a job: return its :class:`Running` record, or None when there is no
    room yet (the job keeps waiting, its prompt already encoded).
``_advance(events)``
    one scheduling/decode step for the running requests; it reports each
    generated token through :meth:`~EngineCore._on_text_token` (or
    :meth:`~EngineCore._emit`) and ends requests with
    :meth:`~EngineCore._finish` / :meth:`~EngineCore._fail`.
``_release(r, reason)``
    free what a request held once it has ended (optional).
``_prepare(job)``
    check and compile a job's controls (a grammar) once, while it may still
    wait for room; what it returns reaches ``_start`` (optional).

The controls a job may carry (constrained output, tools, logprobs, infill) are
checked against the engine's :class:`Capabilities` first
(:func:`check_controls`): a backend never silently ignores one. Tool calls
in the reply are parsed here for every engine (:mod:`edged.backends.tool_calls`),
and every chunk carries its tokens' logprobs when the job asked for them.

Engines that keep per-session KV override ``drop_session``, ``fork_session``
and ``kv_locations``; the defaults keep nothing.

The rules every engine follows live here too: :func:`common_prefix`,
:func:`kv_source`, :func:`request_seed` and the prompt checks.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from edged.backends import tool_calls
from edged.backends.accounting import Timing, Waiting, WaitQueue
from edged.backends.base import (
    Capabilities,
    Chunk,
    Constraint,
    Done,
    Embeddings,
    EmbedInput,
    Event,
    Failed,
    Job,
    ModelDescription,
    Sampling,
    TokenLogprob,
)
from edged.backends.chat_template import ChatTemplate
from edged.backends.infill_rules import InfillRules
from edged.backends.textstream import TextStream
from edged.common.errors import ContextOverflow, EdgedError, FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

# Seeds a request may name, and the range a random one is drawn from: 32 bits
# less llama.cpp's LLAMA_DEFAULT_SEED (0xFFFFFFFF), which means "pick one".
MAX_SEED = (1 << 32) - 2
_DEFAULT_SAMPLING = Sampling()
# Sampling fields a backend may not honour (Capabilities.sampling lists those it does).
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def request_seed(sampling: Sampling) -> int:
    """The seed a request samples with: its own, else a random one in [0, MAX_SEED]."""
    if sampling.seed is not None:
        return sampling.seed
    return int.from_bytes(os.urandom(4), "little") % (MAX_SEED + 1)


def kv_source(job: Job, *, resident: bool, restored: str = "", cached: int = 0) -> str:
    """Where a request's reused KV came from, as the final stats report it.

    ``resident``: the session's own KV was still in place; ``restored``: the tier
    it was brought back from ("ram", "disk"); otherwise a session turn with
    history was ``rebuilt``, and anything else reused a shared ``prefix`` of
    another sequence or nothing (``none``).
    """
    if resident:
        return "resident"
    if restored:
        return restored
    if job.session_id is not None and any(m.role == "assistant" for m in job.messages):
        return "rebuilt"
    return "prefix" if cached > 0 else "none"


def check_prompt(tokens: Sequence[int], n_ctx: int) -> None:
    """An encoded prompt must be non-empty and leave room for one generated token."""
    if not tokens:
        raise InvalidArgument("the prompt is empty")
    if len(tokens) >= n_ctx:
        raise ContextOverflow(
            f"the prompt is {len(tokens)} tokens but the context holds {n_ctx}; "
            "shorten it (or start a new session), or raise EDGED_CONTEXT"
        )


def check_sampling(sampling: Sampling, caps: Capabilities) -> None:
    """Refuse a sampling setting the backend does not honour (never ignore it)."""
    for name in SAMPLING_FIELDS:
        if name in caps.sampling:
            continue
        if getattr(sampling, name) != getattr(_DEFAULT_SAMPLING, name):
            raise InvalidArgument(
                f"{name} is not supported by the {caps.backend} backend (supported: "
                + ", ".join(caps.sampling)
                + ")"
            )


def check_controls(job: Job, caps: Capabilities) -> None:
    """Refuse a control the backend does not support, naming the backend."""
    name = caps.backend
    if caps.embeddings:
        raise FailedPrecondition(f"this is an embedding model: {EMBED_INSTEAD}")
    c = job.constraint
    if c is not None and c.kind not in caps.response_formats:
        have = ", ".join(caps.response_formats) or "none"
        raise InvalidArgument(
            f"{c.kind} output is not supported by the {name} backend (it supports: {have})"
        )
    if c is not None and c.kind == "grammar" and c.syntax not in caps.grammar_syntaxes:
        have = ", ".join(caps.grammar_syntaxes) or "none"
        raise InvalidArgument(
            f"the {name} backend does not take {c.syntax or 'unnamed'} grammars (it takes: {have})"
        )
    if job.tools and job.tool_choice.mode != "none" and not caps.tools:
        raise InvalidArgument(f"tool calls are not supported by the {name} backend")
    if job.logprobs is not None and not caps.max_logprobs:
        raise InvalidArgument(f"logprobs are not supported by the {name} backend")
    if job.logprobs is not None and job.logprobs > caps.max_logprobs:
        raise InvalidArgument(
            f"the {name} backend returns at most {caps.max_logprobs} alternatives per token"
        )
    if job.infill is not None and not caps.infill:
        raise FailedPrecondition(
            caps.infill_refusal or f"fill-in-the-middle is not supported by the {name} backend"
        )


EMBED_INSTEAD = "use Embed / /v1/embeddings"


def fit_to_context(
    tokens: list[list[int]], limit: int, *, truncate: bool, keep_last: bool
) -> tuple[list[list[int]], tuple[int, ...]]:
    """Every input cut to ``limit`` tokens when ``truncate``, with the indices
    that were cut; else an over-long input is InvalidArgument naming it.
    ``keep_last``: the input ends with a token the tokenizer adds (BERT's
    [SEP], an EOS): a cut input keeps it as its last token."""
    out: list[list[int]] = []
    cut: list[int] = []
    for i, toks in enumerate(tokens):
        if not toks:
            raise InvalidArgument(f"input {i} is empty")
        if len(toks) <= limit:
            out.append(toks)
            continue
        if not truncate:
            raise InvalidArgument(
                f"input {i} is {len(toks)} tokens, over the model's context of {limit}; "
                "shorten it, or allow truncation (truncate=true)"
            )
        out.append([*toks[: limit - 1], toks[-1]] if keep_last and limit > 1 else toks[:limit])
        cut.append(i)
    return out, tuple(cut)


def pack_batches(lengths: Sequence[int], max_tokens: int, max_seqs: int) -> Iterator[range]:
    """Consecutive inputs grouped into batches of at most ``max_tokens`` tokens
    and ``max_seqs`` inputs (every length must be at most ``max_tokens``)."""
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if i > start and (used + n > max_tokens or i - start >= max_seqs):
            yield range(start, i)
            start, used = i, 0
        used += n
    if start < len(lengths):
        yield range(start, len(lengths))


def l2_normalize(rows: Any) -> Any:
    """Each row scaled to unit length (a zero row stays zero), as float32."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows.astype(np.float64), axis=-1, keepdims=True)
    return (rows / np.where(norms > 0.0, norms, 1.0)).astype(np.float32)


def embeddings_of(rows: Any, prompt_tokens: int, truncated: tuple[int, ...]) -> Embeddings:
    """(inputs, dimensions) float rows as the :class:`Embeddings` the pipe carries."""
    rows = np.ascontiguousarray(rows, dtype="<f4")
    return Embeddings(rows.tobytes(), int(rows.shape[1]), prompt_tokens, truncated)


def effective_constraint(job: Job) -> Constraint | None:
    """What the reply must match: a ``required`` or named tool choice makes it
    generic-format calls to the offered tools (:func:`tool_calls.call_schema`),
    else the request's own constraint."""
    if job.tools and job.tool_choice.mode in ("required", "function"):
        offered = tool_calls.offered(job.tools, job.tool_choice)
        schema = tool_calls.call_schema(offered, parallel=job.parallel_tool_calls)
        return Constraint("json_schema", json.dumps(schema))
    return job.constraint


@dataclass(eq=False, kw_only=True)
class Running:
    """A request that has started: what every engine tracks for it.

    Engines subclass it (``@dataclass(eq=False, kw_only=True)``) to add their
    own state (a sequence slot, a generator, a pipeline handle).
    """

    job: Job
    prompt: list[int]
    stream: TextStream
    t: Timing
    cancelled: bool = False
    calls: tool_calls.CallParser | None = None  # when the reply may hold tool calls
    logprobs: list[TokenLogprob] = field(default_factory=list)  # for the next chunk
    rules: InfillRules | None = None  # an infill reply's editor stop rules

    @classmethod
    def begin(
        cls: type[RunningT], job: Job, prompt: list[int], *, cached: int, source: str, **state: Any
    ) -> RunningT:
        """A request starting now, with ``cached`` prompt tokens already in its KV."""
        parser = None
        if job.tools and job.tool_choice.mode != "none":
            names = frozenset(t.name for t in tool_calls.offered(job.tools, job.tool_choice))
            only = job.tool_choice.mode in ("required", "function")
            parser = tool_calls.CallParser(names, job.parallel_tool_calls, calls_only=only)
        fill = job.infill
        rules = InfillRules(fill.n_indent, fill.t_max_predict_ms) if fill is not None else None
        return cls(
            job=job,
            prompt=prompt,
            stream=TextStream(job.sampling.stop),
            t=Timing(len(prompt), cached, source, time.perf_counter()),
            calls=parser,
            rules=rules,
            **state,
        )


RunningT = TypeVar("RunningT", bound=Running)


@dataclass(frozen=True)
class PromptFormat:
    """How an engine turns a job into prompt text: the model's chat template
    (``""``: the model ships none and ChatML is used) and its BOS handling."""

    chat_template: str
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = True  # the tokenizer adds a BOS the template may already have written
    metadata: dict[str, str] = field(default_factory=dict)


class EngineCore(Generic[RunningT]):
    """The shared part of every engine (see the module docstring)."""

    def __init__(self, caps: Capabilities, fmt: PromptFormat) -> None:
        self._caps = caps
        self._n_ctx = caps.context_length
        self._template = ChatTemplate(
            fmt.chat_template, bos_token=fmt.bos_token, eos_token=fmt.eos_token
        )
        self._chat_template = fmt.chat_template
        self._bos_text = fmt.bos_token if fmt.add_bos else ""
        self._metadata = dict(fmt.metadata)
        self._waiting = WaitQueue()
        self._active: list[RunningT] = []

    # ------------------------------------------------------------ the Engine interface

    def describe(self) -> ModelDescription:
        return ModelDescription(
            capabilities=self._caps,
            chat_template=self._chat_template,
            metadata=self._metadata,
        )

    def submit(self, job: Job) -> None:
        self._waiting.submit(job)

    def cancel(self, request_id: int) -> None:
        for r in self._active:
            if r.job.request_id == request_id:
                r.cancelled = True
        self._waiting.cancel(request_id)

    def has_work(self) -> bool:
        return bool(self._active or self._waiting)

    def step(self) -> list[Event]:
        """Finish cancelled requests, admit waiting ones, advance the rest one step."""
        events: list[Event] = []
        for r in [r for r in self._active if r.cancelled]:
            self._finish(r, "cancelled", events)
        self._waiting.admit(lambda w: self._admit(w, events), events)
        self._advance(events)
        return events

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Tokens of raw text (engines whose tokenizer always reads control-token
        text as control tokens ignore ``parse_special``)."""
        return self._tokenize(text, add_special)

    def tokenize_job(self, job: Job) -> list[int]:
        """The tokens a chat or infill job's prompt is (what it will cost; a prompt
        longer than the context is counted, not refused)."""
        return self._prompt_tokens(job)

    def pieces(self, tokens: list[int], *, special: bool) -> list[bytes]:
        """Each token's bytes (``special``: control tokens as their text)."""
        raise InvalidArgument(f"detokenizing is not supported by the {self._caps.backend} backend")

    def embed(self, inputs: Sequence[EmbedInput], *, truncate: bool, normalize: bool) -> Embeddings:
        """Only an embedding model embeds (its engine overrides this)."""
        raise FailedPrecondition(
            f"this model has no pooling for embeddings (the {self._caps.backend} backend "
            "embeds only with an embedding model)"
        )

    def drop_session(self, session_id: str) -> None:
        """Forget any KV held for a session (engines that keep none: nothing to do)."""

    def fork_session(self, source_id: str, new_id: str) -> str:
        """Copy a session's KV; "none" means the fork rebuilds from its history."""
        return "none"

    def kv_locations(self) -> dict[str, str]:
        return {}

    def kv_bytes(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        for r in list(self._active):
            self._active.remove(r)
            self._release(r, "cancelled")

    # ------------------------------------------------------------ what engines implement

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        raise NotImplementedError

    def _start(self, job: Job, prompt: list[int], prepared: object) -> RunningT | None:
        raise NotImplementedError

    def _prepare(self, job: Job) -> object:
        """Check and compile a job's controls once (it may still wait for room)."""
        return None

    def _tokenize_parts(self, parts: list[tuple[str, bool]], add_special: bool) -> list[int]:
        """Tokens of a rendered chat: the template's text may spell control
        tokens, message content is tokenized as plain text. An engine whose
        tokenizer cannot tell them apart tokenizes the whole text."""
        return self._tokenize("".join(t for t, _ in parts), add_special)

    def _advance(self, events: list[Event]) -> None:
        raise NotImplementedError

    def _release(self, r: RunningT, reason: str) -> None:
        """Free what ``r`` held; ``reason`` is its finish reason or "failed"."""

    def _flush(self, r: RunningT, reason: str, events: list[Event]) -> None:
        """Emit text an engine still holds for ``r`` before its final stats."""

    # ------------------------------------------------------------ admission

    def _encode(self, job: Job) -> list[int]:
        """The job's prompt tokens, checked to fit the context."""
        tokens = self._prompt_tokens(job)
        check_prompt(tokens, self._n_ctx)
        return tokens

    def _prompt_tokens(self, job: Job) -> list[int]:
        """Raw text as given, a chat through the template, or an infill layout."""
        if job.prompt is not None:
            if not job.prompt.strip():
                raise InvalidArgument("the prompt is empty")
            tokens = self._tokenize(job.prompt, True)
        elif job.infill is not None:
            tokens = self._encode_infill(job)
        else:
            parts = self.chat_parts(job)
            text = parts[0][0] if parts else ""
            add_special = not (self._bos_text and text.startswith(self._bos_text))
            tokens = self._tokenize_parts(parts, add_special)
        return tokens

    def chat_parts(self, job: Job) -> list[tuple[str, bool]]:
        """A job's chat rendered for this model, tools included (see render_parts).

        A template that knows tools renders them and the calls and results in
        the history itself; any other gets the generic tool prompt, calls in the
        generic format and results as user turns (:func:`tool_calls.generic_messages`).
        """
        tools = tool_calls.offered(job.tools, job.tool_choice)
        if self._template.knows_tools:
            specs = tool_calls.function_specs(tools) if tools else None
            return self._template.render_parts(job.messages, True, specs)
        messages = job.messages
        if tools or any(m.role == "tool" or m.tool_calls for m in messages):
            messages = tuple(tool_calls.generic_messages(messages, tools, job.tool_choice))
        return self._template.render_parts(messages, True, None)

    def _encode_infill(self, job: Job) -> list[int]:
        raise FailedPrecondition(
            f"fill-in-the-middle is not supported by the {self._caps.backend} backend"
        )

    def _admit(self, w: Waiting, events: list[Event]) -> bool:
        """Start a waiting job if there is room; False leaves it waiting."""
        job = w.job
        try:
            if w.prompt is None:
                check_sampling(job.sampling, self._caps)
                check_controls(job, self._caps)
                w.prepared = self._prepare(job)
                w.prompt = self._encode(job)
            r = self._start(job, w.prompt, w.prepared)
        except EdgedError as exc:
            events.append(Failed(job.request_id, type(exc).__name__, str(exc)))
            return True
        except Exception as exc:  # one bad request must not take the worker down
            log.exception("starting request %d failed", job.request_id)
            events.append(Failed(job.request_id, "Internal", f"could not start: {exc}"))
            return True
        if r is None:
            return False
        self._active.append(r)
        return True

    # ------------------------------------------------------------ tokens and endings

    def _chunk(self, r: RunningT, text: str, events: list[Event], *, final: bool = False) -> None:
        """Send ``text`` (may be empty) with the tokens counted since the last chunk
        and their logprobs; tool calls in it leave as structured deltas."""
        deltas: list[Any] = []
        if r.calls is not None:
            text, deltas = r.calls.feed(text)
            if final:
                rest, more = r.calls.finish()
                text, deltas = text + rest, deltas + more
        if not (text or deltas or r.logprobs):
            return
        events.append(
            Chunk(
                r.job.request_id,
                text,
                r.t.unsent,
                tool_calls=tuple(deltas),
                logprobs=tuple(r.logprobs),
            )
        )
        r.t.unsent = 0
        r.logprobs.clear()

    def _emit(self, r: RunningT, data: bytes, events: list[Event]) -> bool:
        """Feed generated bytes (tokens already counted) to ``r``'s text stream and
        send what is safe to send; True when a stop string or an infill rule ended ``r``."""
        text = r.stream.feed(data)
        ended = None
        if r.rules is not None:
            gen_ms = (time.perf_counter() - (r.t.t_first or time.perf_counter())) * 1000.0
            text, ended = r.rules.feed(text, gen_ms)
        self._chunk(r, text, events)
        if r.stream.matched is not None:
            ended = "stop_sequence"
        if ended is not None:
            self._finish(r, ended, events)
            return True
        return False

    def _on_text_token(self, r: RunningT, data: bytes, events: list[Event]) -> bool:
        """One generated token that is text (not end-of-generation): count it, emit
        it, and end ``r`` at a stop string or ``max_tokens``. True when ``r`` ended."""
        r.t.completion += 1
        r.t.unsent += 1
        if self._emit(r, data, events):
            return True
        max_tokens = r.job.sampling.max_tokens
        if max_tokens and r.t.completion >= max_tokens:
            self._finish(r, "length", events)
            return True
        return False

    def _finish(self, r: RunningT, reason: str, events: list[Event]) -> None:
        """End ``r``: held text, then its stats; its resources are released."""
        self._flush(r, reason, events)
        tail = r.stream.finish() if reason != "stop_sequence" else ""
        if r.rules is not None:  # nothing after a rule's cut; held indentation otherwise
            tail = r.rules.feed(tail, 0.0)[0] + r.rules.finish()
        self._chunk(r, tail, events, final=True)
        if reason == "stop" and r.calls is not None and r.calls.calls:
            reason = "tool_calls"
        events.append(Done(r.job.request_id, r.t.stats(reason, r.stream.matched or "")))
        self._active.remove(r)
        self._release(r, reason)

    def _fail(self, r: RunningT, exc: EdgedError, events: list[Event]) -> None:
        events.append(Failed(r.job.request_id, type(exc).__name__, str(exc)))
        self._active.remove(r)
        self._release(r, "failed")

    def _fail_all(self, exc: EdgedError, events: list[Event]) -> None:
        for r in list(self._active):
            self._fail(r, exc, events)
