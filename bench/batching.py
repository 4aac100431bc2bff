"""Continuous batching: aggregate tokens/s with 1, 4 and 8 concurrent streams,
against llama.cpp's own llama-server (same slots, threads, context, model), plus
single-stream decode against llama-bench tg128 and llama-batched-bench.

    .venv/bin/python -m bench.batching [--threads 2] [--streams 1,4,8] [--tokens 128]
        [--llama-bin DIR]   # llama-server / llama-bench / llama-batched-bench
        [--kv per-slot|unified]   # llama.cpp's KV layout (edged: per-slot)

The llama.cpp binaries are not part of edged and are not built by CI: build them
from the sources the llama-cpp-python sdist carries (bench/README.md says how)
and point --llama-bin (or EDGED_LLAMA_BIN) at the folder. Without them the
comparisons are reported as skipped. Prints one JSON object.

``--kv per-slot`` (the default) runs llama-server and llama-batched-bench with
one KV stream per slot, as edged does and as llama-server does by default for
an explicit ``-np``; ``--kv unified`` passes ``-kvu`` (one shared cache).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench._common import Timed, private_daemon, timed_async
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg

PLACES = [
    "a small village",
    "a distant planet",
    "an old castle",
    "a busy harbour",
    "a quiet forest",
    "a desert town",
    "a mountain pass",
    "a frozen lake",
]


def prompt(i: int) -> str:
    return f"Once upon a time, in {PLACES[i % len(PLACES)]}, there lived"


class StreamClient:
    """edged's concurrent streams, read from one asyncio loop (grpc.aio).

    On these 2 cores the client's CPU comes out of the decode threads' time. A
    blocking stub with a thread per stream cost twice the client CPU of one
    event loop (61 vs 31 ms per round of 8 streams of 128 tokens, measured),
    so the bench uses the loop; llama-server's side reads whole responses,
    which costs its client almost nothing while tokens are generated.
    """

    def __init__(self, socket: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._channel, self._stub = self._loop.run_until_complete(self._connect(socket))

    @staticmethod
    async def _connect(socket: Path) -> tuple[Any, Any]:
        channel = grpc.aio.insecure_channel(f"unix:{socket}")
        return channel, pbg.InferenceStub(channel)

    def generate(self, requests: list[Any]) -> list[Timed]:
        async def run_all() -> list[Timed]:
            return list(
                await asyncio.gather(
                    *(timed_async(self._stub.Generate(r, timeout=600)) for r in requests)
                )
            )

        return self._loop.run_until_complete(run_all())

    def close(self) -> None:
        self._loop.run_until_complete(self._channel.close())
        self._loop.close()


def generate_request(i: int, tokens: int) -> Any:
    return pb.GenerateRequest(
        model="smollm2",
        prompt=prompt(i),
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
    )


def edged_aggregate(client: StreamClient, n: int, tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    results = client.generate([generate_request(i, tokens) for i in range(n)])
    wall = time.perf_counter() - t0
    total = sum(r.tokens for r in results)
    return {
        "streams": n,
        "tokens": total,
        "wall_s": wall,
        "aggregate_tps": total / wall,
        "mean_stream_decode_tps": sum(r.decode_tps for r in results) / n,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_aggregate(port: int, n: int, tokens: int) -> dict[str, float]:
    def one(i: int) -> int:
        body = json.dumps(
            {"prompt": prompt(i), "n_predict": tokens, "temperature": 0.0, "cache_prompt": True}
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=600) as resp:
            return int(json.load(resp)["tokens_predicted"])

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        counts = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    return {
        "streams": n,
        "tokens": sum(counts),
        "wall_s": wall,
        "aggregate_tps": sum(counts) / wall,
    }


@contextmanager
def llama_server(
    bin_dir: Path, model: Path, threads: int, slots: int, ctx: int, kv_flags: list[str]
) -> Iterator[int]:
    port = free_port()
    env = dict(os.environ, LD_LIBRARY_PATH=str(bin_dir))
    proc = subprocess.Popen(
        [
            str(bin_dir / "llama-server"),
            "-m",
            str(model),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-np",
            str(slots),
            "-c",
            str(ctx * slots),
            *kv_flags,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-webui",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("llama-server did not start")
            time.sleep(0.2)
        server_aggregate(port, 1, 8)  # warm-up
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def single_stream(client: StreamClient, tokens: int) -> Timed:
    return client.generate([generate_request(0, tokens)])[0]


def run_tool(bin_dir: Path, tool: str, *args: object, timeout: int = 900) -> str:
    """Run one of the llama.cpp binaries (its shared libraries beside it); stdout."""
    out = subprocess.run(
        [str(bin_dir / tool), *(str(a) for a in args)],
        env=dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)),
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return out.stdout


def llama_bench_tg(bin_dir: Path, model: Path, threads: int, tokens: int) -> float:
    text = run_tool(bin_dir, "llama-bench", "-m", model, "-t", threads, "-p", 0, "-n", tokens,
                    "-r", 1, "-o", "json", timeout=600)  # fmt: skip
    return float(json.loads(text)[0]["avg_ts"])


def batched_bench(
    bin_dir: Path,
    model: Path,
    threads: int,
    ctx: int,
    streams: list[int],
    tokens: int,
    kv_flags: list[str],
) -> list[dict[str, float]]:
    npl = ",".join(str(n) for n in streams)
    text = run_tool(bin_dir, "llama-batched-bench", "-m", model, "-t", threads, "-tb", threads,
                    "-c", ctx * max(streams), "-b", 2048, "-ub", 512, "-npp", 16, "-ntg", tokens,
                    "-npl", npl, *kv_flags, "--output-format", "jsonl")  # fmt: skip
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [
        {"streams": r["pl"], "decode_aggregate_tps": r["speed_tg"], "total_tps": r["speed"]}
        for r in rows
    ]


def paired(ratios: list[float]) -> dict[str, float]:
    """The spread of per-round ratios: each compares two runs taken side by side."""
    qs = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "median": statistics.median(ratios),
        "q1": qs[0],
        "q3": qs[2],
        "min": min(ratios),
        "max": max(ratios),
        "rounds": len(ratios),
    }


def alternate(round_: int, a: Any, b: Any) -> tuple[Any, Any]:
    """Run ``a`` and ``b`` in A-B order on even rounds and B-A on odd ones, so a
    steady drift in the machine's background load favours neither."""
    if round_ % 2 == 0:
        ra = a()
        rb = b()
    else:
        rb = b()
        ra = a()
    return ra, rb


def single_vs_tg(
    client: StreamClient, bin_dir: Path, model: Path, threads: int, tokens: int, runs: int
) -> dict[str, Any]:
    """Single-stream decode through the daemon against llama-bench tg, paired."""
    pairs = [
        alternate(
            i,
            lambda: single_stream(client, tokens),
            lambda: llama_bench_tg(bin_dir, model, threads, tokens),
        )
        for i in range(runs)
    ]
    return {
        "client_decode_tps": statistics.median(s.decode_tps for s, _ in pairs),
        "worker_decode_tps": statistics.median(s.stats.decode_tokens_per_second for s, _ in pairs),
        "llama_bench_tg": statistics.median(tg for _, tg in pairs),
        "ratio_client": paired([s.decode_tps / tg for s, tg in pairs]),
        "ratio_worker": paired([s.stats.decode_tokens_per_second / tg for s, tg in pairs]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=2048, help="context per sequence/slot")
    ap.add_argument("--runs", type=int, default=9, help="rounds of side-by-side runs")
    ap.add_argument("--llama-bin", type=Path, default=os.environ.get("EDGED_LLAMA_BIN"))
    ap.add_argument(
        "--kv",
        choices=("per-slot", "unified"),
        default="per-slot",
        help="llama.cpp's KV layout: one stream per slot (as edged) or -kvu",
    )
    ns = ap.parse_args(argv)
    kv_flags = ["-kvu"] if ns.kv == "unified" else []
    streams = [int(x) for x in ns.streams.split(",")]
    slots = max(streams)
    out: dict[str, Any] = {
        "benchmark": "batching",
        "model": "smollm2:135m-q4_1",
        "threads": ns.threads,
        "slots": slots,
        "ctx_per_slot": ns.ctx,
        "max_tokens": ns.tokens,
        "rounds": ns.runs,
        "llama_cpp_kv": ns.kv,
    }
    with private_daemon(ns.threads, EDGED_PARALLEL=str(slots), EDGED_CONTEXT=str(ns.ctx)) as (
        daemon,
        model,
    ):
        client = StreamClient(daemon.socket)
        edged_aggregate(client, 1, 8)  # warm-up: loads the worker
        bin_dir = Path(ns.llama_bin) if ns.llama_bin else None
        if bin_dir is None or not (bin_dir / "llama-server").exists():
            out["edged"] = [
                median_row([edged_aggregate(client, n, ns.tokens) for _ in range(ns.runs)])
                for n in streams
            ]
            out["llama_cpp"] = "skipped: no llama.cpp binaries (--llama-bin / EDGED_LLAMA_BIN)"
        else:
            # Single stream against llama-bench tg, first on a fresh KV cache
            # (llama-bench's own condition).
            out["single_stream_fresh"] = single_vs_tg(
                client, bin_dir, model, ns.threads, ns.tokens, ns.runs
            )
            # The machine's background load drifts by more than the gaps being
            # measured, so every figure that counts is a ratio of two runs taken
            # side by side (order alternating), summarised over the rounds.
            with llama_server(bin_dir, model, ns.threads, slots, ns.ctx, kv_flags) as port:
                rows_e: dict[int, list[dict[str, float]]] = {n: [] for n in streams}
                rows_s: dict[int, list[dict[str, float]]] = {n: [] for n in streams}
                for i in range(ns.runs):
                    for n in streams:
                        e, s = alternate(
                            i,
                            lambda n=n: edged_aggregate(client, n, ns.tokens),
                            lambda n=n: server_aggregate(port, n, ns.tokens),
                        )
                        rows_e[n].append(e)
                        rows_s[n].append(s)
            out["edged"] = [median_row(rows_e[n]) for n in streams]
            out["llama_server"] = [median_row(rows_s[n]) for n in streams]
            out["ratio_vs_llama_server"] = {
                str(n): paired(
                    [
                        e["aggregate_tps"] / s["aggregate_tps"]
                        for e, s in zip(rows_e[n], rows_s[n], strict=True)
                    ]
                )
                for n in streams
            }
            # Again after the many-stream runs: the idle sequences still hold
            # their prompts and replies (kept for prefix reuse).
            out["single_stream_after_load"] = single_vs_tg(
                client, bin_dir, model, ns.threads, ns.tokens, ns.runs
            )
            daemon.models.Unload(pb.ModelRef(model="smollm2"), timeout=60)
            out["llama_batched_bench"] = batched_bench(
                bin_dir, model, ns.threads, ns.ctx, streams, ns.tokens, kv_flags
            )
        client.close()
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
