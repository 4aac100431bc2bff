"""Typed configuration. Environment variables are read here and only here.

Every path comes from platformdirs and can be overridden by one environment
variable (and, for ``edged serve``, one flag of the same name):

=====================  ==========================================  ===============
variable               meaning                                     default
=====================  ==========================================  ===============
EDGED_DATA_DIR         registry (blobs, manifests) and sessions    user data dir
EDGED_CACHE_DIR        caches (session KV on disk, downloads)      user cache dir
EDGED_LOG_DIR          daemon log files                            user log dir
EDGED_RUNTIME_DIR      the unix socket's directory (made 0700)     user runtime dir
EDGED_SOCKET           the unix socket path                        RUNTIME/edged.sock
EDGED_TCP              also listen on loopback ``HOST:PORT``       off
EDGED_TOKEN_FILE       bearer token for TCP (0600)                 config dir/token
EDGED_TOKENS_FILE      scoped tokens (hashed; edged token ...)      config dir/tokens.json
EDGED_HTTP             HTTP listener HOST:PORT, or "off"           127.0.0.1:11435
EDGED_ORIGINS          browser origins allowed to call the HTTP    none
                       API (comma-separated, e.g. http://x:3000)
EDGED_HTTP_ANON        scopes of anonymous HTTP requests from this generate,read
                       user's own processes ("none": a token is
                       always needed)
EDGED_THREADS          decode threads per worker                   physical cores
EDGED_CONTEXT          context length (tokens) per loaded model    4096
EDGED_KEEP_ALIVE       seconds an idle model stays loaded          300
                       (-1: until stopped; 0: unload when idle)
EDGED_MAX_LOADED       models loaded at once; loading one more     3
                       unloads the least recently used idle one
EDGED_MEMORY_LIMIT_MB  cap on the estimated memory of all loaded   none (only free
                       models (MiB); 0 = no cap                    memory counts)
EDGED_BACKEND          backend for every model unless a request    choose by hardware
                       or the model's settings name one
                       (llama.cpp, onnxruntime, openvino)
EDGED_DEVICE           device likewise (cpu, cuda:0, gpu, gpu.1,   best for the backend
                       npu; "gpu" also matches CUDA devices)
EDGED_QUEUE_SIZE       waiting requests per model before refusing  64
EDGED_PARALLEL         sequences per model (sessions resident,     4
                       streams decoded together)
EDGED_STREAM_INTERVAL_MS
                       longest a request's text is held to be     100
                       sent with what follows (0: every token)
EDGED_KV_TYPE          KV cache element type: f16, q8_0 (about     f16
                       half the bytes) or q4_0 (a quarter); on a
                       backend without it, its own KV (the model
                       setting kv_type is strict instead)
EDGED_RPC              llama.cpp RPC workers (`edged rpc-worker`)   none (local only)
                       whose devices take part of each llama.cpp
                       model: HOST:PORT[,HOST:PORT...]
EDGED_RPC_LAYERS       layers of a model placed on the RPC         -1 (all)
                       workers (split by their free memory); the
                       rest stay on this machine's CPU
EDGED_SPECULATIVE      speculative decoding for greedy requests    auto
                       that do not say: auto (prompt-lookup
                       drafts, only as long as they pay),
                       ngram (always), off, or draft:MODEL (a
                       draft model sharing the target's vocab)
EDGED_BATCH_INVARIANT  llama.cpp on the CPU (edged's build): 1 =     1
                       up to 63 rows of a sequence in a step give
                       the logits one-token decodes give, at any
                       position (speculation exact everywhere);
                       0 = stock (a lone stream's decode splits
                       its KV across threads: faster with many
                       cores and long contexts; speculation only
                       below position 256); 2 = any number of
                       rows too (slower long-prompt prefill)
EDGED_KV_RAM_MB        saved session KV kept in RAM (MiB)          10% of free RAM, <= 2048
EDGED_KV_DISK_MB       saved session KV kept on disk (MiB)         10% of free disk, <= 8192
EDGED_MAX_MESSAGE_MB   largest gRPC message accepted or sent       16
EDGED_MAX_STREAMS      streaming calls (generate, pull) at once,   64
                       all clients together
EDGED_MAX_PROMPT_BYTES prompt/chat text per request (bytes)        4194304
EDGED_MAX_TOKENS       largest max_tokens a request may ask for    32768
EDGED_MAX_SESSIONS     sessions stored                             10000
EDGED_GC_GRACE_S       age (s, by mtime) before gc removes an      3600
                       unused blob or a temp/partial file
EDGED_LLAMA_CONVERTER  folder with llama.cpp's convert_hf_to_gguf  the installer's
                       .py, conversion/ and gguf-py/ for           ~/.cache/edged/
                       `edged convert --to gguf` (read when a      llama.cpp-convert/
                       conversion starts: convert_gguf.py)         VERSION
=====================  ==========================================  ===============
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import platformdirs

from edged.backends.base import DEFAULT_SPECULATIVE, KV_TYPES, check_speculative
from edged.common.endpoints import endpoints as rpc_endpoints
from edged.common.errors import InvalidArgument

APP = "edged"
MAX_STREAM_INTERVAL_MS = 10_000


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    cache_dir: Path
    log_dir: Path
    runtime_dir: Path
    socket: Path
    token_file: Path
    tokens_file: Path = Path("tokens.json")  # scoped tokens (daemon/tokens.py)

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "sessions"


@dataclass(frozen=True)
class EngineConfig:
    threads: int
    context_length: int = 4096
    keep_alive_s: float = 300.0
    queue_size: int = 64
    max_sequences: int = 4
    kv_dir: Path | None = None  # disk tier for saved session KV
    kv_ram_budget: int = 512 << 20
    kv_disk_budget: int = 2 << 30
    max_loaded: int = 3  # models loaded at once
    cache_dir: Path | None = None  # backends' own caches go in <cache_dir>/<backend>
    memory_limit: int = 0  # bytes of estimated model memory in all; 0 = no cap
    stream_interval_ms: int = 100  # default for a request's stream_interval_ms
    kv_type: str = "f16"  # KV cache element type where the backend offers it
    rpc_servers: tuple[str, ...] = ()  # EDGED_RPC: llama.cpp RPC workers (host:port)
    rpc_layers: int = -1  # EDGED_RPC_LAYERS: layers on those workers (-1: all)
    speculative: str = DEFAULT_SPECULATIVE  # for requests and models that do not say
    # EDGED_BATCH_INVARIANT (0-2): llama.cpp's workers read it from the environment
    # they inherit (native.batch_invariance); checked here so a bad value stops
    # the start
    batch_invariance: int = 1


@dataclass(frozen=True)
class Limits:
    """What one request, and all clients together, may ask of the daemon."""

    max_message_bytes: int = 16 << 20
    max_streams: int = 64
    max_prompt_bytes: int = 4 << 20
    max_tokens: int = 32768
    max_sessions: int = 10_000


@dataclass(frozen=True)
class SelectionConfig:
    """Global backend/device overrides (EDGED_BACKEND, EDGED_DEVICE)."""

    backend: str = ""
    device: str = ""


def load_selection(env: Mapping[str, str] | None = None) -> SelectionConfig:
    env = os.environ if env is None else env
    backend = env.get("EDGED_BACKEND", "").strip()
    device = env.get("EDGED_DEVICE", "").strip().lower()
    for name, value in (("EDGED_BACKEND", backend), ("EDGED_DEVICE", device)):
        if len(value) > 32 or not all(c.isalnum() or c in "._:-" for c in value):
            raise ValueError(f"{name} is not a backend/device name: {value[:40]!r}")
    return SelectionConfig(backend=backend, device=device)


SCOPES = ("generate", "read", "models", "admin")
DEFAULT_HTTP = "127.0.0.1:11435"


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP listener (OpenAI, Ollama, Anthropic, llama-server dialects)."""

    address: str | None = DEFAULT_HTTP  # HOST:PORT; None = off
    origins: tuple[str, ...] = ()  # browser origins allowed (CORS); none by default
    anonymous_scopes: frozenset[str] = frozenset({"generate", "read"})


def parse_scopes(raw: str, name: str = "scopes") -> frozenset[str]:
    """ "generate,read" -> its scopes; "" or "none" -> none; anything else is an error."""
    words = [w.strip() for w in raw.split(",") if w.strip()]
    if words in ([], ["none"]):
        return frozenset()
    unknown = [w for w in words if w not in SCOPES]
    if unknown:
        raise ValueError(f"{name}: unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    return frozenset(words)


def load_http(env: Mapping[str, str] | None = None) -> HttpConfig:
    env = os.environ if env is None else env
    raw = env.get("EDGED_HTTP", DEFAULT_HTTP).strip()
    origins = tuple(
        o.strip().rstrip("/") for o in env.get("EDGED_ORIGINS", "").split(",") if o.strip()
    )
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or len(origin) > 256:
            raise ValueError(
                f"EDGED_ORIGINS: {origin[:60]!r} is not an origin (http(s)://host[:port])"
            )
    return HttpConfig(
        address=None if raw.lower() in ("off", "") else raw,
        origins=origins,
        anonymous_scopes=parse_scopes(
            env.get("EDGED_HTTP_ANON", "generate,read"), "EDGED_HTTP_ANON"
        ),
    )


@dataclass(frozen=True)
class ServerConfig:
    paths: Paths
    engine: EngineConfig
    limits: Limits = field(default_factory=Limits)
    tcp: str | None = None  # "127.0.0.1:PORT" when enabled
    grace_s: float = 10.0
    extra: Mapping[str, str] = field(default_factory=dict)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    http: HttpConfig = field(default_factory=HttpConfig)


def _default_runtime_dir() -> Path:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset and falls back to
        # /tmp/runtime-UID; we accept that and enforce 0700/ownership ourselves.
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir(APP))


def _physical_cores() -> int:
    import psutil

    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def load_paths(env: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if env is None else env

    def pick(name: str, default: Path) -> Path:
        raw = env.get(name)
        return Path(raw).expanduser().absolute() if raw else default

    runtime = pick("EDGED_RUNTIME_DIR", _default_runtime_dir())
    return Paths(
        data_dir=pick("EDGED_DATA_DIR", Path(platformdirs.user_data_dir(APP))),
        cache_dir=pick("EDGED_CACHE_DIR", Path(platformdirs.user_cache_dir(APP))),
        log_dir=pick("EDGED_LOG_DIR", Path(platformdirs.user_log_dir(APP))),
        runtime_dir=runtime,
        socket=pick("EDGED_SOCKET", runtime / "edged.sock"),
        token_file=pick("EDGED_TOKEN_FILE", Path(platformdirs.user_config_dir(APP)) / "token"),
        tokens_file=pick(
            "EDGED_TOKENS_FILE", Path(platformdirs.user_config_dir(APP)) / "tokens.json"
        ),
    )


def _default_budgets(cache_dir: Path) -> tuple[int, int]:
    """Saved-KV budgets from what is free now: 10% of RAM and of disk, capped."""
    import shutil

    import psutil

    ram = min(2048 << 20, psutil.virtual_memory().available // 10)
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        disk = min(8192 << 20, shutil.disk_usage(probe).free // 10)
    except OSError:
        disk = 0
    return max(ram, 0), max(disk, 0)


def load_engine(
    env: Mapping[str, str] | None = None, cache_dir: Path | None = None
) -> EngineConfig:
    env = os.environ if env is None else env
    cache = cache_dir if cache_dir is not None else load_paths(env).cache_dir
    ram, disk = _default_budgets(cache)
    return EngineConfig(
        threads=_int(env, "EDGED_THREADS", _physical_cores(), 1, 512),
        context_length=_int(env, "EDGED_CONTEXT", 4096, 256, 1 << 20),
        keep_alive_s=float(_int(env, "EDGED_KEEP_ALIVE", 300, -1, 7 * 24 * 3600)),
        queue_size=_int(env, "EDGED_QUEUE_SIZE", 64, 1, 100_000),
        max_sequences=_int(env, "EDGED_PARALLEL", 4, 1, 256),
        kv_dir=cache / "kv",
        cache_dir=cache,
        kv_ram_budget=_int(env, "EDGED_KV_RAM_MB", ram >> 20, 0, 1 << 24) << 20,
        kv_disk_budget=_int(env, "EDGED_KV_DISK_MB", disk >> 20, 0, 1 << 28) << 20,
        max_loaded=_int(env, "EDGED_MAX_LOADED", 3, 1, 64),
        memory_limit=_int(env, "EDGED_MEMORY_LIMIT_MB", 0, 0, 1 << 30) << 20,
        stream_interval_ms=_int(env, "EDGED_STREAM_INTERVAL_MS", 100, 0, MAX_STREAM_INTERVAL_MS),
        kv_type=_kv_type(env),
        rpc_servers=_rpc(env),
        rpc_layers=_int(env, "EDGED_RPC_LAYERS", -1, -1, 100_000),
        speculative=_speculative(env),
        batch_invariance=_int(env, "EDGED_BATCH_INVARIANT", 1, 0, 2),
    )


def _rpc(env: Mapping[str, str]) -> tuple[str, ...]:
    try:
        return rpc_endpoints(env.get("EDGED_RPC", ""))
    except InvalidArgument as exc:
        raise ValueError(f"EDGED_RPC: {exc}") from None


def _speculative(env: Mapping[str, str]) -> str:
    raw = (env.get("EDGED_SPECULATIVE") or DEFAULT_SPECULATIVE).strip()
    try:
        return check_speculative(raw)
    except InvalidArgument as exc:
        raise ValueError(f"EDGED_SPECULATIVE: {exc}") from None


def _kv_type(env: Mapping[str, str]) -> str:
    raw = (env.get("EDGED_KV_TYPE") or "f16").strip().lower()
    if raw not in KV_TYPES:
        raise ValueError(f"EDGED_KV_TYPE must be one of {', '.join(KV_TYPES)}, got {raw!r}")
    return raw


def load_limits(env: Mapping[str, str] | None = None) -> Limits:
    env = os.environ if env is None else env
    d = Limits()
    return Limits(
        max_message_bytes=_int(env, "EDGED_MAX_MESSAGE_MB", d.max_message_bytes >> 20, 1, 1024)
        << 20,
        max_streams=_int(env, "EDGED_MAX_STREAMS", d.max_streams, 1, 100_000),
        max_prompt_bytes=_int(env, "EDGED_MAX_PROMPT_BYTES", d.max_prompt_bytes, 1, 1 << 30),
        max_tokens=_int(env, "EDGED_MAX_TOKENS", d.max_tokens, 1, 1 << 20),
        max_sessions=_int(env, "EDGED_MAX_SESSIONS", d.max_sessions, 1, 10_000_000),
    )


def load_gc_grace(env: Mapping[str, str] | None = None) -> float:
    """EDGED_GC_GRACE_S: seconds an unused blob or temp/partial file is kept."""
    env = os.environ if env is None else env
    return float(_int(env, "EDGED_GC_GRACE_S", 3600, 0, 10 * 365 * 24 * 3600))


def load_server(env: Mapping[str, str] | None = None, **overrides: object) -> ServerConfig:
    env = os.environ if env is None else env
    cfg = ServerConfig(
        paths=load_paths(env),
        engine=load_engine(env),
        limits=load_limits(env),
        tcp=env.get("EDGED_TCP") or None,
        selection=load_selection(env),
        http=load_http(env),
    )
    return replace(cfg, **overrides)  # type: ignore[arg-type]
