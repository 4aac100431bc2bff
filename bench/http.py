"""The HTTP door against gRPC: one stream's decode rate and time to first token,
and the aggregate of 8 concurrent streams, on the same prompts in one daemon.

    .venv/bin/python -m bench.http [--threads 2] [--rounds 9] [--tokens 128]
        [--streams 8] [--interval-ms 100]

One private daemon (``EDGED_PARALLEL`` = ``--streams``, so every stream decodes
in the same batch) with SmolLM2. Both doors get the same chat prompts, greedy,
``--tokens`` tokens, and the same ``stream_interval_ms`` (the daemon's default,
``EDGED_STREAM_INTERVAL_MS``, which the HTTP door uses; the gRPC requests set
the same value). Each round runs, in A-B order on even rounds and B-A on odd
ones:

- **single stream**: ``Inference.Generate`` over the unix socket against
  ``POST /v1/chat/completions`` with ``stream: true`` through the ``openai``
  SDK (``stream_options.include_usage`` for the token count). Both timed by the
  client the same way: time to first token is from sending the request to the
  first non-empty text; decode tokens/s is the tokens after the first over the
  time after the first.
- **N concurrent streams**: N simultaneous streams through each door, a thread
  each; aggregate tokens/s is all completion tokens over the wall time.

The single stream is also run through the HTTP door with an edged token
(``http_openai_sdk_token``): a request without one is let in only after the
daemon has looked up which user owns the connecting socket (/proc/net/tcp, see
daemon/peer.py), a per-request cost the gRPC door's unix socket does not have;
the two HTTP figures side by side show what that lookup costs.

The client's own CPU time and the daemon process's (not its worker's) are
recorded per run: on 2 cores, both come out of the decode threads' time.

Prints one JSON object: medians per door, and the paired HTTP/gRPC ratios
(median over the rounds, with quartiles and extremes). Aims: decode and
aggregate ratios >= 0.95; time to first token HTTP/gRPC is reported (lower
is better).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import psutil

from bench._common import private_daemon
from bench.batching import PLACES, alternate, paired
from edged.daemon.tokens import TokenStore
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg

MODEL = "smollm2"
SINGLE = ("grpc", "http", "http_token")


def prompt(i: int) -> str:
    return f"Write a long story about {PLACES[i % len(PLACES)]}."


@dataclass
class Run:
    """One stream, timed by the client."""

    ttft_ms: float
    decode_tps: float
    tokens: int
    text: str


def _run(t0: float, first: float | None, end: float, tokens: int, text: str) -> Run:
    first = first or end
    tps = (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0
    return Run((first - t0) * 1000, tps, tokens, text)


class Doors:
    """The clients of one daemon: a gRPC stub on its unix socket, and the
    ``openai`` SDK on its HTTP listener without a token (a placeholder key, as
    local clients send) and with an edged token."""

    def __init__(
        self, inference: pbg.InferenceStub, http_url: str, token: str, interval_ms: int
    ) -> None:
        self.inference = inference
        self.anonymous = sdk(http_url, "sk-no-key")
        self.token = sdk(http_url, token)
        self.interval_ms = interval_ms

    def grpc(self, i: int, tokens: int) -> Run:
        req = pb.GenerateRequest(
            model=MODEL,
            chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=prompt(i))]),
            sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
            stream_interval_ms=self.interval_ms,
        )
        t0 = time.perf_counter()
        first, n, text = None, 0, []
        for chunk in self.inference.Generate(req, timeout=600):
            if chunk.HasField("stats"):
                n = chunk.stats.completion_tokens
            elif chunk.text:
                if first is None:
                    first = time.perf_counter()
                text.append(chunk.text)
        return _run(t0, first, time.perf_counter(), n, "".join(text))

    def http(self, i: int, tokens: int) -> Run:
        return self._http(self.anonymous, i, tokens)

    def http_token(self, i: int, tokens: int) -> Run:
        return self._http(self.token, i, tokens)

    @staticmethod
    def _http(client: openai.OpenAI, i: int, tokens: int) -> Run:
        t0 = time.perf_counter()
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt(i)}],
            max_tokens=tokens,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        first, n, text = None, 0, []
        for chunk in stream:
            if chunk.usage is not None:
                n = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.perf_counter()
                text.append(chunk.choices[0].delta.content)
        return _run(t0, first, time.perf_counter(), n, "".join(text))

    def close(self) -> None:
        self.anonymous.close()
        self.token.close()


def sdk(http_url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=http_url + "/v1", api_key=api_key, max_retries=0, timeout=600)


class Cpu:
    """CPU time of this process (every client thread) and of the daemon process
    (its worker, a child, is not counted), between two reads. The daemon's is
    summed over its threads' ``schedstat`` (nanoseconds; psutil's figure moves
    in 10 ms ticks), else psutil's."""

    def __init__(self, daemon_pid: int) -> None:
        self.daemon = psutil.Process(daemon_pid)
        self.tasks = Path(f"/proc/{daemon_pid}/task")

    def daemon_s(self) -> float:
        if self.tasks.is_dir():
            total = 0
            for stat in self.tasks.glob("*/schedstat"):
                try:
                    total += int(stat.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    continue  # a thread that just ended
            return total / 1e9
        d = self.daemon.cpu_times()
        return float(d.user + d.system)

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
        c0, d0 = time.process_time(), self.daemon_s()
        result = fn()
        c1, d1 = time.process_time(), self.daemon_s()
        return result, {"client_cpu_ms": (c1 - c0) * 1000, "daemon_cpu_ms": (d1 - d0) * 1000}


def single(doors: Doors, cpu: Cpu, door: str, tokens: int) -> dict[str, Any]:
    run, used = cpu.measure(lambda: getattr(doors, door)(0, tokens))
    return {"ttft_ms": run.ttft_ms, "decode_tps": run.decode_tps, "tokens": run.tokens,
            "text": run.text, **used}  # fmt: skip


def aggregate(
    doors: Doors,
    cpu: Cpu,
    pool: concurrent.futures.ThreadPoolExecutor,
    door: str,
    streams: int,
    tokens: int,
) -> dict[str, float]:
    fn = getattr(doors, door)

    def all_streams() -> tuple[list[Run], float]:
        t0 = time.perf_counter()
        runs = list(pool.map(lambda i: fn(i, tokens), range(streams)))
        return runs, time.perf_counter() - t0

    (runs, wall), used = cpu.measure(all_streams)
    total = sum(r.tokens for r in runs)
    return {
        "tokens": total,
        "wall_s": wall,
        "aggregate_tps": total / wall,
        "mean_stream_decode_tps": sum(r.decode_tps for r in runs) / streams,
        "max_ttft_ms": max(r.ttft_ms for r in runs),
        **used,
    }


def medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float)]
    return {k: float(statistics.median(r[k] for r in rows)) for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9, help="rounds of side-by-side runs")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--streams", type=int, default=8, help="concurrent streams (EDGED_PARALLEL)")
    ap.add_argument("--interval-ms", type=int, default=100, help="stream_interval_ms, both doors")
    ns = ap.parse_args(argv)
    out: dict[str, Any] = {
        "benchmark": "http",
        "model": "smollm2:135m-q4_1",
        "threads": ns.threads,
        "max_tokens": ns.tokens,
        "streams": ns.streams,
        "stream_interval_ms": ns.interval_ms,
        "rounds": ns.rounds,
    }
    env = {"EDGED_PARALLEL": str(ns.streams), "EDGED_STREAM_INTERVAL_MS": str(ns.interval_ms)}
    with (
        private_daemon(ns.threads, **env) as (d, _),
        concurrent.futures.ThreadPoolExecutor(ns.streams) as pool,
    ):
        token = TokenStore(Path(d.env["EDGED_TOKENS_FILE"])).create("bench", ["generate"])
        doors = Doors(d.inference, d.http_url, token, ns.interval_ms)
        cpu = Cpu(d.proc.pid)
        for door in SINGLE:  # load the worker, open the connections, fill the pool
            aggregate(doors, cpu, pool, door, ns.streams, 8)
        one: dict[str, list[dict[str, Any]]] = {door: [] for door in SINGLE}
        many: dict[str, list[dict[str, float]]] = {"grpc": [], "http": []}
        for i in range(ns.rounds):
            # gRPC, HTTP, HTTP with a token; the other way round on odd rounds
            for door in SINGLE if i % 2 == 0 else SINGLE[::-1]:
                one[door].append(single(doors, cpu, door, ns.tokens))
            g, h = alternate(
                i,
                lambda: aggregate(doors, cpu, pool, "grpc", ns.streams, ns.tokens),
                lambda: aggregate(doors, cpu, pool, "http", ns.streams, ns.tokens),
            )
            many["grpc"].append(g)
            many["http"].append(h)
            print(f"round {i + 1}/{ns.rounds} done", file=sys.stderr)
        doors.close()
    pairs = list(zip(one["grpc"], one["http"], strict=True))
    with_token = list(zip(one["grpc"], one["http_token"], strict=True))
    out["single_stream"] = {
        "grpc": medians(one["grpc"]),
        "http_openai_sdk": medians(one["http"]),
        "http_openai_sdk_token": medians(one["http_token"]),
        "same_text": sum(g["text"] == h["text"] for g, h in pairs) / len(pairs),
        "ratio_decode_tps": paired([h["decode_tps"] / g["decode_tps"] for g, h in pairs]),
        "ratio_ttft": paired([h["ttft_ms"] / g["ttft_ms"] for g, h in pairs]),
        "ratio_ttft_token": paired([h["ttft_ms"] / g["ttft_ms"] for g, h in with_token]),
    }
    agg = list(zip(many["grpc"], many["http"], strict=True))
    out[f"streams_{ns.streams}"] = {
        "grpc": medians(many["grpc"]),
        "http_openai_sdk": medians(many["http"]),
        "ratio_aggregate_tps": paired([h["aggregate_tps"] / g["aggregate_tps"] for g, h in agg]),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
