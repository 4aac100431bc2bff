"""The backend interface: what the daemon may ask of any inference engine.

An :class:`Engine` lives inside a worker process (one per loaded model) and is
driven one *step* at a time by the worker loop: requests join between steps,
cancellations take effect at the next step, and each step may produce events
for several requests. That is the shape continuous batching needs; an engine
without batching simply runs one request per step.

Nothing here imports a backend library. Library exceptions are translated into
:mod:`edged.common.errors` types at the engine's edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edged.common.errors import InvalidArgument

MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; callers ask this, never a backend's name."""

    backend: str  # e.g. "llama.cpp"
    device: str  # e.g. "cpu"
    formats: tuple[str, ...]  # e.g. ("gguf",)
    context_length: int  # tokens per sequence
    max_sequences: int  # sequences resident at once
    batching: bool  # several requests share a decode step
    session_kv: bool  # keeps a session's KV between turns
    grammar: bool = False
    # SamplingParams fields honoured; a request setting another one is refused
    sampling: tuple[str, ...] = (
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "seed",
    )
    kv_tiers: bool = True  # evicted sessions are saved (RAM/disk), not rebuilt
    fork: bool = True  # Fork copies the KV instead of rebuilding it
    gpu_layers: int = 0  # layers offloaded to a GPU device (0 on the CPU)


@dataclass(frozen=True)
class LoadSpec:
    model_path: str
    model_digest: str
    context_length: int
    threads: int
    max_sequences: int = 4
    device: str = "cpu"
    kv_dir: str | None = None  # disk tier for saved session KV (None: RAM only)
    kv_ram_budget: int = 512 << 20  # bytes of saved session KV kept in RAM
    kv_disk_budget: int = 2 << 30  # bytes of saved session KV kept on disk
    cache_dir: str | None = None  # the backend's own cache (OpenVINO compiled models)
    gpu_layers: int = 0  # layers to offload when ``device`` is a GPU (-1: all)


@dataclass(frozen=True)
class Sampling:
    """Validated sampling settings with edged's defaults filled in."""

    max_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_range("max_tokens", self.max_tokens, 0, 1 << 20)
        _check_float("temperature", self.temperature, 0.0, 100.0)
        _check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _check_range("top_k", self.top_k, 0, 1 << 20)
        _check_float("min_p", self.min_p, 0.0, 1.0)
        _check_float("repeat_penalty", self.repeat_penalty, 0.0, 10.0, lo_open=True)
        if self.seed is not None:
            _check_range("seed", self.seed, 0, (1 << 32) - 2)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        for s in self.stop:
            if not s:
                raise InvalidArgument("stop strings must not be empty")
            if len(s) > MAX_STOP_LEN:
                raise InvalidArgument(f"a stop string is longer than {MAX_STOP_LEN} characters")


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise InvalidArgument(f"{name} must be between {lo} and {hi}, got {value}")


def _check_float(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgument(f"{name} must be a finite number, got {value}")
    below = value <= lo if lo_open else value < lo
    if below or value > hi:
        bracket = "(" if lo_open else "["
        raise InvalidArgument(f"{name} must be in {bracket}{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Job:
    """One generation request as the engine sees it.

    Exactly one of ``prompt`` (raw text, no template) and ``messages`` (chat,
    formatted with the model's template) is set. ``session_id`` lets the engine
    keep and reuse this conversation's KV between turns; the daemon always sends
    the full history, so an engine that lost the KV rebuilds it.
    """

    request_id: int
    sampling: Sampling
    prompt: str | None = None
    messages: tuple[Message, ...] = ()
    session_id: str | None = None
    deadline: float | None = None  # time.time() after which it must not start
    # how long (s) the worker may hold this request's text to send it with what
    # follows (fewer messages); its first text and its end always go at once
    stream_interval_s: float = 0.0


@dataclass(frozen=True)
class Stats:
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_ms: float = 0.0
    decode_tokens_per_second: float = 0.0
    prefill_tokens_per_second: float = 0.0
    total_ms: float = 0.0
    finish_reason: str = "stop"  # stop | stop_sequence | length | context_full | cancelled
    kv_source: str = "none"  # none | resident | rebuilt
    stop_sequence: str = ""


@dataclass(frozen=True)
class Chunk:
    request_id: int
    text: str
    tokens: int


@dataclass(frozen=True)
class Done:
    request_id: int
    stats: Stats


@dataclass(frozen=True)
class Failed:
    request_id: int
    error: str  # an edged.common.errors class name
    message: str


Event = Chunk | Done | Failed


@dataclass(frozen=True)
class ModelDescription:
    capabilities: Capabilities
    chat_template: str
    metadata: dict[str, str] = field(default_factory=dict)


class Engine(Protocol):
    """One loaded model inside a worker process."""

    def describe(self) -> ModelDescription: ...

    def submit(self, job: Job) -> None:
        """Queue a job; it joins the batch at the next step."""

    def cancel(self, request_id: int) -> None:
        """Stop a job; it ends with finish reason ``cancelled`` at the next step."""

    def drop_session(self, session_id: str) -> None:
        """Forget any KV held for a session."""

    def fork_session(self, source_id: str, new_id: str) -> str:
        """Give ``new_id`` a copy of ``source_id``'s KV without re-evaluating it.

        Returns where the copy lives ("resident", "ram", "disk") or "none".
        """

    def kv_locations(self) -> dict[str, str]:
        """Where each known session's KV is: "resident", "ram" or "disk"."""

    def has_work(self) -> bool: ...

    def step(self) -> Sequence[Event]:
        """Run one scheduling/decode step and return what it produced."""

    def close(self) -> None: ...
