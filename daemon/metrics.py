"""What the daemon counts, for ``GET /metrics`` (Prometheus text format).

Counters and histograms are updated where things happen: every door's
generations pass through :func:`edged.daemon.services.generation.stream_generation`
(tokens, TTFT, time per token) and every HTTP request through the door's
``route`` (requests by API, endpoint and status). What is a state rather than an
event (queue depth, loaded models and their memory, session KV per tier, worker
restarts) is read when scraped: :meth:`Metrics.render` asks the scheduler first.

One registry per daemon (not prometheus_client's global one), so tests that run
several daemons in one process do not share counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edged.v1 import edged_pb2 as pb

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the output and say little
# first-token times on a laptop CPU run from ~10 ms (cached prompt) to seconds
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0, 600.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edged_http_requests",
            "HTTP requests by API dialect, endpoint and status",
            ["api", "endpoint", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "edged_http_request_duration_seconds",
            "HTTP request time until its response began (a stream: its first item)",
            ["api", "endpoint"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "edged_prompt_tokens", "Prompt tokens requests needed", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "edged_cached_prompt_tokens",
            "Prompt tokens that were already in the KV cache",
            ["model"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "edged_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.drafted_tokens = Counter(
            "edged_speculative_drafted_tokens",
            "Speculative draft tokens verified",
            ["model"],
            registry=r,
        )
        self.accepted_tokens = Counter(
            "edged_speculative_accepted_tokens",
            "Speculative draft tokens kept (each saved a decode step)",
            ["model"],
            registry=r,
        )
        self.generations = Counter(
            "edged_generations",
            "Finished generations by finish reason",
            ["model", "finish_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "edged_time_to_first_token_seconds",
            "From the daemon accepting a request to its first token",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.token_latency = Histogram(
            "edged_time_per_output_token_seconds",
            "Mean decode time per generated token after the first (one observation a request)",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "edged_queue_depth",
            "Requests waiting for a free sequence slot, by model",
            ["model"],
            registry=r,
        )
        self.inflight = Gauge(
            "edged_requests_in_flight",
            "Requests running or queued, by model",
            ["model"],
            registry=r,
        )
        self.loaded = Gauge("edged_loaded_models", "Models loaded in workers", registry=r)
        self.model_memory = Gauge(
            "edged_model_memory_bytes",
            "Estimated memory of each loaded model (weights, KV cache, overhead)",
            ["model", "backend", "device", "part"],
            registry=r,
        )
        self.session_kv = Gauge(
            "edged_session_kv_bytes",
            "Saved session KV by model and tier (resident in the worker, ram, disk)",
            ["model", "tier"],
            registry=r,
        )
        self.sessions = Gauge("edged_sessions", "Sessions the daemon keeps", registry=r)
        self.streams = Gauge(
            "edged_streams_active",
            "Streaming calls running on every door (the EDGED_MAX_STREAMS count)",
            registry=r,
        )
        self.worker_restarts = Gauge(
            "edged_worker_restarts",
            "Workers started again after their predecessor crashed (since the daemon started)",
            registry=r,
        )

    # ------------------------------------------------------------ events

    def http_request(self, api: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(api, endpoint, str(status)).inc()
        self.request_seconds.labels(api, endpoint).observe(seconds)

    def generation(self, model: str, stats: pb.GenerationStats) -> None:
        self.prompt_tokens.labels(model).inc(stats.prompt_tokens)
        self.cached_tokens.labels(model).inc(stats.cached_prompt_tokens)
        self.generated_tokens.labels(model).inc(stats.completion_tokens)
        self.drafted_tokens.labels(model).inc(stats.drafted_tokens)
        self.accepted_tokens.labels(model).inc(stats.accepted_tokens)
        reason = pb.FinishReason.Name(stats.finish_reason).removeprefix("FINISH_REASON_").lower()
        self.generations.labels(model, reason).inc()
        if stats.completion_tokens:
            self.ttft.labels(model).observe(stats.time_to_first_token_ms / 1000.0)
        if stats.completion_tokens > 1 and stats.decode_tokens_per_second > 0:
            self.token_latency.labels(model).observe(1.0 / stats.decode_tokens_per_second)

    def ended_early(self, model: str, reason: str, tokens: int) -> None:
        """A generation that ended without its stats: "cancelled" (the client left,
        its deadline passed) or "error"; ``tokens`` it had generated."""
        self.generated_tokens.labels(model).inc(tokens)
        self.generations.labels(model, reason).inc()

    # ------------------------------------------------------------ state, set at scrape

    def set_state(
        self,
        *,
        models: Iterable[LoadedModel],
        sessions: int,
        streams: int,
        worker_restarts: int,
    ) -> None:
        for gauge in (self.queue_depth, self.inflight, self.model_memory, self.session_kv):
            gauge.clear()  # an unloaded model leaves the output
        count = 0
        for m in models:
            count += 1
            self.queue_depth.labels(m.name).set(m.queued)
            self.inflight.labels(m.name).set(m.inflight)
            for part, value in m.memory.items():
                self.model_memory.labels(m.name, m.backend, m.device, part).set(value)
            for tier, value in m.kv_bytes.items():
                self.session_kv.labels(m.name, tier).set(value)
        self.loaded.set(count)
        self.sessions.set(sessions)
        self.streams.set(streams)
        self.worker_restarts.set(worker_restarts)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model's state as the scheduler reports it for a scrape."""

    name: str
    backend: str
    device: str
    inflight: int
    queued: int
    memory: dict[str, int]  # part ("weights", "kv", "overhead") -> bytes
    kv_bytes: dict[str, int]  # tier -> bytes of saved session KV
