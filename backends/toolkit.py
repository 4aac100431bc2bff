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

Engines that keep per-session KV override ``drop_session``, ``fork_session``
and ``kv_locations``; the defaults keep nothing.

The rules every engine follows live here too: :func:`common_prefix`,
:func:`kv_source`, :func:`request_seed` and the prompt checks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edged.backends.accounting import Timing, Waiting, WaitQueue
from edged.backends.base import (
    Capabilities,
    Chunk,
    Event,
    Failed,
    Job,
    ModelDescription,
    Sampling,
)
from edged.backends.chat_template import ChatTemplate
from edged.backends.textstream import TextStream
from edged.common.errors import ContextOverflow, EdgedError, InvalidArgument

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

    @classmethod
    def begin(
        cls: type[RunningT], job: Job, prompt: list[int], *, cached: int, source: str, **state: Any
    ) -> RunningT:
        """A request starting now, with ``cached`` prompt tokens already in its KV."""
        return cls(
            job=job,
            prompt=prompt,
            stream=TextStream(job.sampling.stop),
            t=Timing(len(prompt), cached, source, time.perf_counter()),
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

    def drop_session(self, session_id: str) -> None:
        """Forget any KV held for a session (engines that keep none: nothing to do)."""

    def fork_session(self, source_id: str, new_id: str) -> str:
        """Copy a session's KV; "none" means the fork rebuilds from its history."""
        return "none"

    def kv_locations(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        for r in list(self._active):
            self._active.remove(r)
            self._release(r, "cancelled")

    # ------------------------------------------------------------ what engines implement

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        raise NotImplementedError

    def _start(self, job: Job, prompt: list[int]) -> RunningT | None:
        raise NotImplementedError

    def _advance(self, events: list[Event]) -> None:
        raise NotImplementedError

    def _release(self, r: RunningT, reason: str) -> None:
        """Free what ``r`` held; ``reason`` is its finish reason or "failed"."""

    def _flush(self, r: RunningT, reason: str, events: list[Event]) -> None:
        """Emit text an engine still holds for ``r`` before its final stats."""

    # ------------------------------------------------------------ admission

    def _encode(self, job: Job) -> list[int]:
        """The job's prompt tokens: raw text as given, or chat through the template."""
        if job.prompt is not None:
            if not job.prompt.strip():
                raise InvalidArgument("the prompt is empty")
            text, add_special = job.prompt, True
        else:
            text = self._template.render(job.messages, add_generation_prompt=True)
            add_special = not (self._bos_text and text.startswith(self._bos_text))
        tokens = self._tokenize(text, add_special)
        check_prompt(tokens, self._n_ctx)
        return tokens

    def _admit(self, w: Waiting, events: list[Event]) -> bool:
        """Start a waiting job if there is room; False leaves it waiting."""
        job = w.job
        try:
            if w.prompt is None:
                check_sampling(job.sampling, self._caps)
                w.prompt = self._encode(job)
            r = self._start(job, w.prompt)
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

    def _emit(self, r: RunningT, data: bytes, events: list[Event]) -> bool:
        """Feed generated bytes (tokens already counted) to ``r``'s text stream and
        send what is safe to send; True when a stop string ended ``r``."""
        text = r.stream.feed(data)
        if text:
            events.append(Chunk(r.job.request_id, text, r.t.unsent))
            r.t.unsent = 0
        if r.stream.matched is not None:
            self._finish(r, "stop_sequence", events)
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
        events.extend(r.t.final_events(r.job, r.stream, reason))
        self._active.remove(r)
        self._release(r, reason)

    def _fail(self, r: RunningT, exc: EdgedError, events: list[Event]) -> None:
        events.append(Failed(r.job.request_id, type(exc).__name__, str(exc)))
        self._active.remove(r)
        self._release(r, "failed")

    def _fail_all(self, exc: EdgedError, events: list[Event]) -> None:
        for r in list(self._active):
            self._fail(r, exc, events)
