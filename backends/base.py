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

from edged.common.errors import FailedPrecondition, InvalidArgument

MAX_STOP_STRINGS = 16
MAX_STOP_LEN = 256

# KV cache element types (EDGED_KV_TYPE, the per-model kv_type): f16 is exact;
# q8_0 and q4_0 are llama.cpp's block quantizations (about 1/2 and 1/4 the bytes)
KV_TYPES = ("f16", "q8_0", "q4_0")
DEFAULT_KV_TYPE = "f16"


# Speculative decoding (EDGED_SPECULATIVE, the per-model and per-request
# setting): auto = prompt-lookup drafts that pause where they do not pay;
# ngram = always draft when the text repeats; off; draft:MODEL = a draft model
# sharing the target's vocabulary. Only greedy requests speculate.
SPECULATIVE_MODES = ("auto", "ngram", "off")
DEFAULT_SPECULATIVE = "auto"
DRAFT_PREFIX = "draft:"


def check_speculative(mode: str) -> str:
    """``mode`` if it is a speculative mode; else InvalidArgument listing them."""
    if mode in SPECULATIVE_MODES:
        return mode
    if mode.startswith(DRAFT_PREFIX) and 0 < len(mode) - len(DRAFT_PREFIX) <= 200:
        return mode
    raise InvalidArgument(
        f"speculative must be one of {', '.join(SPECULATIVE_MODES)} or draft:MODEL, "
        f"got {mode[:40]!r}"
    )


def kv_type_offered(preferred: str, offered: tuple[str, ...]) -> str:
    """The KV cache type a load gets when ``preferred`` is a preference (EDGED_KV_TYPE,
    a model's setting as the ranking reads it): it where the backend offers it, else
    the backend's own (f16)."""
    return preferred if preferred in offered else DEFAULT_KV_TYPE


def check_kv_type(kv_type: str) -> str:
    """``kv_type`` if it is one edged knows; else InvalidArgument listing them."""
    if kv_type not in KV_TYPES:
        raise InvalidArgument(f"KV cache type {kv_type[:20]!r} is not one of {', '.join(KV_TYPES)}")
    return kv_type


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
    # Constraint kinds honoured (json_object, json_schema, grammar, regex) and the
    # grammar syntaxes; a request asking for another is refused, naming the backend
    response_formats: tuple[str, ...] = ()
    grammar_syntaxes: tuple[str, ...] = ()
    tools: bool = False  # tool calls, the required/named ones constrained
    infill: bool = False  # fill-in-the-middle (the model has FIM tokens)
    infill_refusal: str = ""  # why not, when the backend could but this model cannot
    max_logprobs: int = 0  # 0: no logprobs; else the most alternatives per token
    tokenize: bool = False  # tokenize/detokenize calls
    # An embedding model: Engine.embed answers, generation is refused. Its vectors
    # are ``embedding_dimensions`` long, pooled as ``pooling`` (mean | cls | last).
    embeddings: bool = False
    embedding_dimensions: int = 0
    pooling: str = ""
    kv_types: tuple[str, ...] = (DEFAULT_KV_TYPE,)  # KV cache element types it can hold
    kv_type: str = DEFAULT_KV_TYPE  # the one this loaded model uses

    @property
    def grammar(self) -> bool:
        """Some constrained output is supported (the proto's ``grammar`` flag)."""
        return bool(self.response_formats)


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
    kv_type: str = DEFAULT_KV_TYPE  # KV cache element type (one of KV_TYPES)
    # llama.cpp RPC workers ("host:port") whose devices take part of the model
    # (EDGED_RPC); ``rpc_layers`` of its layers go to them (-1: all), the rest
    # stay on this machine
    rpc_servers: tuple[str, ...] = ()
    rpc_layers: int = -1
    speculative: str = DEFAULT_SPECULATIVE  # for requests that do not say
    # speculative "draft:NAME": the draft model's file (sharing the target's vocabulary)
    draft_model_path: str = ""
    draft_model_name: str = ""


def refuse_kv_type(backend: str, kv_types: tuple[str, ...], kv_type: str) -> None:
    """FailedPrecondition when a backend offering ``kv_types`` is asked for another."""
    if check_kv_type(kv_type) not in kv_types:
        raise FailedPrecondition(
            f"{backend} cannot hold a {kv_type} KV cache (it offers {', '.join(kv_types)}); "
            "use another backend or the f16 KV cache"
        )


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
    speculative: str = ""  # "" = the model's or the daemon's (SPECULATIVE_MODES)

    def __post_init__(self) -> None:
        if self.speculative:
            check_speculative(self.speculative)
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
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as JSON text


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant: the calls it made
    tool_call_id: str = ""  # tool: the call this result answers
    name: str = ""  # tool: the tool's name


@dataclass(frozen=True)
class Constraint:
    """What a reply must be (see ResponseFormat in the proto)."""

    kind: str  # json_object | json_schema | grammar | regex
    text: str = ""  # the schema (JSON text), the grammar or the regex
    syntax: str = ""  # the grammar's syntax: gbnf | ebnf | lark


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: str = ""  # a JSON schema, as JSON text ("" = no arguments)


@dataclass(frozen=True)
class ToolChoice:
    mode: str = "auto"  # auto | none | required | function
    function: str = ""  # mode "function": the tool to call


@dataclass(frozen=True)
class Infill:
    """Fill-in-the-middle: the text between ``prefix`` and ``suffix``."""

    prefix: str
    suffix: str
    prompt: str = ""  # already typed text of the middle
    extra: tuple[tuple[str, str], ...] = ()  # (filename, text) of other files
    n_indent: int = 0  # stop at a later line indented less than this
    t_max_predict_ms: int = 0  # stop this long after the first token once a newline came


@dataclass(frozen=True)
class Job:
    """One generation request as the engine sees it.

    Exactly one of ``prompt`` (raw text, no template), ``messages`` (chat,
    formatted with the model's template) and ``infill`` is set. ``session_id``
    lets the engine keep and reuse this conversation's KV between turns; the
    daemon always sends the full history, so an engine that lost the KV
    rebuilds it. The controls (``constraint``, ``tools``, ``logprobs``) are
    checked against the engine's :class:`Capabilities` before the job starts.
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
    constraint: Constraint | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True
    logprobs: int | None = None  # None: off; N: the chosen token's and N alternatives
    infill: Infill | None = None


@dataclass(frozen=True)
class Stats:
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_ms: float = 0.0
    decode_tokens_per_second: float = 0.0
    prefill_tokens_per_second: float = 0.0
    total_ms: float = 0.0
    # stop | stop_sequence | length | context_full | cancelled | tool_calls | time_limit
    finish_reason: str = "stop"
    kv_source: str = "none"  # none | resident | rebuilt
    stop_sequence: str = ""
    drafted_tokens: int = 0  # speculative draft tokens verified
    accepted_tokens: int = 0  # of those, kept (each saved a decode step)


@dataclass(frozen=True)
class ToolCallDelta:
    """A part of a streamed tool call: the first part of call ``index`` carries
    its id and name, later parts more of its arguments' JSON text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class TokenLogprob:
    id: int
    piece: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()  # (id, piece, logprob), likeliest first


@dataclass(frozen=True)
class Chunk:
    request_id: int
    text: str
    tokens: int
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


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


# One input to embed: text (the model's special tokens added, as its tokenizer
# does), or token ids used as given.
EmbedInput = str | tuple[int, ...]


@dataclass(frozen=True)
class Embeddings:
    """What :meth:`Engine.embed` returns for a batch of inputs.

    ``vectors`` is ``len(inputs) * dimensions`` little-endian float32 values,
    row by row (compact over the worker pipe; the daemon turns rows into lists).
    """

    vectors: bytes
    dimensions: int
    prompt_tokens: int  # tokens read, after truncation
    truncated: tuple[int, ...] = ()  # indices of the inputs cut to the context

    @property
    def count(self) -> int:
        return len(self.vectors) // (4 * self.dimensions) if self.dimensions else 0


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

    def kv_bytes(self) -> dict[str, int]:
        """Bytes of session KV in each tier ("resident", "ram", "disk") it keeps."""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        """Tokens of raw text."""

    def tokenize_job(self, job: Job) -> list[int]:
        """The tokens a chat or infill job's prompt is (what it will cost)."""

    def pieces(self, tokens: list[int], *, special: bool) -> list[bytes]:
        """Each token's bytes (``special``: control tokens as their text)."""

    def embed(self, inputs: Sequence[EmbedInput], *, truncate: bool, normalize: bool) -> Embeddings:
        """Pooled vectors of a batch of inputs (an embedding model only).

        ``truncate``: an input longer than the context is cut to it (its index
        is reported); else it is InvalidArgument naming the index.
        ``normalize``: each vector scaled to unit (L2) length.
        """

    def has_work(self) -> bool: ...

    def step(self) -> Sequence[Event]:
        """Run one scheduling/decode step and return what it produced."""

    def close(self) -> None: ...
