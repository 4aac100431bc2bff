"""The three backends side by side on smollm2, all through the daemon.

    .venv/bin/python -m bench.backends [--runs 3] [--tokens 128] [--threads 2] [--streams 4]

Starts a private daemon, pulls smollm2 and converts it to ONNX (Models.Convert),
then, backend by backend (llama.cpp and OpenVINO run the GGUF, ONNX Runtime the
int4 ONNX variant), loads it (first request timed) and runs the same raw
prompt, greedy, the same max tokens: one stream (decode tokens/s, time to first
token) and ``--streams`` concurrent streams (aggregate tokens/s). Backends run
in blocks, not alternated: the daemon keeps one worker per model variant, and
llama.cpp and OpenVINO share the GGUF variant. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from typing import Any

from bench._common import private_daemon, timed
from bench.sessions import med
from edged.backends.registry import BACKENDS, is_installed
from edged.v1 import edged_pb2 as pb

PROMPT = "Once upon a time"


def run(d: Any, backend: str, tokens: int) -> Any:
    req = pb.GenerateRequest(
        model="smollm2",
        prompt=PROMPT,
        backend=backend,
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    return timed(d.inference.Generate(req, timeout=600))


def aggregate(d: Any, backend: str, tokens: int, streams: int) -> float:
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        got = list(pool.map(lambda _i: run(d, backend, tokens), range(streams)))
    return sum(g.tokens for g in got) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, default=4)
    ns = ap.parse_args(argv)
    backends = [b.name for b in BACKENDS if is_installed(b)]
    out: dict[str, Any] = {
        "benchmark": "backends",
        "model": "smollm2:135m-q4_1 (GGUF; int4 ONNX variant for onnxruntime)",
        "threads": ns.threads,
        "max_tokens": ns.tokens,
        "runs": ns.runs,
        "streams": ns.streams,
        "backends": backends,
    }
    with private_daemon(ns.threads, EDGED_PARALLEL=str(max(4, ns.streams))) as (d, _gguf):
        if "onnxruntime" in backends:
            t0 = time.perf_counter()
            for _ in d.models.Convert(pb.ConvertRequest(model="smollm2", to="onnx"), timeout=1800):
                pass
            out["onnx_convert_s"] = time.perf_counter() - t0
        # One block per backend (load, then its runs): the scheduler keeps one
        # worker per model variant, so llama.cpp and OpenVINO (both on the GGUF)
        # would reload each other if runs alternated between them.
        load: dict[str, float] = {}
        single: dict[str, list[Any]] = {b: [] for b in backends}
        multi: dict[str, list[float]] = {b: [] for b in backends}
        for b in backends:
            t0 = time.perf_counter()
            run(d, b, 8)  # the first request loads the worker (and warms it)
            load[b] = time.perf_counter() - t0
            for _ in range(ns.runs):
                single[b].append(run(d, b, ns.tokens))
                multi[b].append(aggregate(d, b, ns.tokens, ns.streams))
            assert all(r.stats.backend == b for r in single[b])
        out["first_request_s"] = load
        out["results"] = {
            b: {
                "decode_tps": med([r.decode_tps for r in single[b]]),
                "ttft_ms": med([r.ttft_ms for r in single[b]]),
                "tokens": single[b][-1].tokens,
                f"aggregate_tps_{ns.streams}_streams": med(multi[b]),
            }
            for b in backends
        }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
