"""Decode speed and time to first token: the daemon over gRPC vs llama-cpp-python in-process.

    .venv/bin/python -m bench.decode [--runs 3] [--tokens 128] [--threads 2] [--ctx 2048]

Starts a private daemon (temporary data dir, unix socket), pulls smollm2 into
it (or imports --model PATH), then alternates runs of the same raw prompt,
greedy, through (a) the daemon's Inference.Generate stream and (b) the
in-process high-level ``llama_cpp.Llama`` streaming API with the same threads
and context size. Prints one JSON object: medians for both and the ratios
(daemon / in-process; > 1 means the daemon is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edged.v1 import edged_pb2 as pb

PROMPT = "Once upon a time"


def run_daemon(stub: Any, tokens: int) -> dict[str, float]:
    req = pb.GenerateRequest(
        model="smollm2",
        prompt=PROMPT,
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    t0 = time.perf_counter()
    first = None
    stats = None
    for chunk in stub.Generate(req, timeout=300):
        if chunk.HasField("stats"):
            stats = chunk.stats
        elif first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert stats is not None and first is not None
    n = stats.completion_tokens
    return {"ttft_ms": (first - t0) * 1000, "decode_tps": (n - 1) / (end - first), "tokens": n}


def run_inprocess(llm: Any, tokens: int) -> dict[str, float]:
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return {"ttft_ms": (first - t0) * 1000, "decode_tps": (n - 1) / (end - first), "tokens": n}


def median(rows: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--model", type=Path, help="a GGUF to import instead of pulling smollm2")
    ns = ap.parse_args(argv)

    from llama_cpp import Llama

    from harness.daemon import start_daemon

    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
        os.environ["EDGED_TEST_THREADS"] = str(ns.threads)
        d = start_daemon(Path(tmp), EDGED_CONTEXT=str(ns.ctx), EDGED_THREADS=str(ns.threads))
        try:
            source = str(ns.model.resolve()) if ns.model else "smollm2"
            final = None
            for p in d.models.Pull(pb.PullRequest(source=source, name="smollm2"), timeout=900):
                final = p
            assert final is not None
            blob = (
                Path(tmp)
                / "data"
                / "models"
                / "blobs"
                / ("sha256-" + final.model.digest.split(":", 1)[1])
            )
            llm = Llama(
                str(blob),
                n_ctx=ns.ctx,
                n_threads=ns.threads,
                n_threads_batch=ns.threads,
                verbose=False,
            )
            run_daemon(d.inference, 8)  # warm-up: loads the worker
            run_inprocess(llm, 8)
            daemon_rows, inproc_rows = [], []
            for _ in range(ns.runs):
                daemon_rows.append(run_daemon(d.inference, ns.tokens))
                inproc_rows.append(run_inprocess(llm, ns.tokens))
        finally:
            d.stop()
    result = {
        "benchmark": "decode",
        "model": "smollm2:135m-q4_1",
        "prompt": PROMPT,
        "threads": ns.threads,
        "ctx": ns.ctx,
        "max_tokens": ns.tokens,
        "runs": ns.runs,
        "daemon_grpc": {
            "decode_tps": median(daemon_rows, "decode_tps"),
            "ttft_ms": median(daemon_rows, "ttft_ms"),
            "tokens": median(daemon_rows, "tokens"),
        },
        "inprocess_llama_cpp_python": {
            "decode_tps": median(inproc_rows, "decode_tps"),
            "ttft_ms": median(inproc_rows, "ttft_ms"),
            "tokens": median(inproc_rows, "tokens"),
        },
    }
    result["ratio_decode_tps"] = (
        result["daemon_grpc"]["decode_tps"] / result["inprocess_llama_cpp_python"]["decode_tps"]
    )
    result["ratio_ttft"] = (
        result["daemon_grpc"]["ttft_ms"] / result["inprocess_llama_cpp_python"]["ttft_ms"]
    )
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
