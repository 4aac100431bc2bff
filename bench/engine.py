"""The llama.cpp engine alone, in-process (no daemon, no gRPC): aggregate
tokens/s with 1, 4 and 8 concurrent requests, to separate the engine's cost
from the serving path's in bench.batching.

    .venv/bin/python -m bench.engine --model PATH.gguf [--threads 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from bench.batching import prompt
from edged.backends.base import Done, Job, LoadSpec, Sampling
from edged.backends.llamacpp.engine import LlamaEngine


def aggregate(engine: LlamaEngine, n: int, tokens: int, base_id: int) -> float:
    t0 = time.perf_counter()
    done = 0
    for i in range(n):
        engine.submit(
            Job(
                base_id + i,
                Sampling(temperature=0.0, max_tokens=tokens),
                prompt=prompt(i),
            )
        )
    while engine.has_work():
        for ev in engine.step():
            if isinstance(ev, Done):
                done += ev.stats.completion_tokens
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ns = ap.parse_args(argv)
    engine = LlamaEngine(LoadSpec(ns.model, "bench", 2048, ns.threads, 8))
    aggregate(engine, 1, 8, 0)
    out: dict[str, object] = {"benchmark": "engine", "threads": ns.threads}
    for n in (1, 4, 8):
        rows = [aggregate(engine, n, ns.tokens, 1000 * (r + 1) * n) for r in range(ns.runs)]
        out[f"aggregate_tps_{n}"] = statistics.median(rows)
    engine.close()
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
