"""Constrained output against plain decoding, in one run on one daemon.

    .venv/bin/python -m bench.structured [--threads 2] [--rounds 5] [--tokens 128]

Two measures, each a median over ``--rounds`` alternating rounds:

- **single stream**: decode tokens/s of a JSON-schema-constrained reply against
  an unconstrained one (``ratio_constrained``; the grammar's own cost);
- **4 streams mixed**: 2 constrained + 2 plain streams decoding together against
  4 plain ones: the plain streams' decode tokens/s in the mixed batch over the
  same in the all-plain batch (``ratio_plain_in_mixed``: how much a grammar in
  the batch slows the streams that use none), and the constrained streams'
  rate over the plain streams' in the same batch.

Decode rates are the worker's (``GenerationStats.decode_tokens_per_second``), so
replies of different lengths compare. The schema forces a long reply (30
strings), so constrained replies run to ``--tokens``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
from typing import Any

from bench._common import private_daemon, timed
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon

SCHEMA = {
    "type": "object",
    "properties": {
        "fruits": {
            "type": "array",
            "items": {"type": "string", "maxLength": 24},
            "minItems": 30,
            "maxItems": 30,
        }
    },
    "required": ["fruits"],
    "additionalProperties": False,
}
PROMPT = "List thirty fruits."


def request(tokens: int, *, constrained: bool, seed: int) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        model="smollm2",
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=PROMPT)]),
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.8, seed=seed),
    )
    if constrained:
        req.response_format.type = pb.ResponseFormat.TYPE_JSON_SCHEMA
        req.response_format.schema = json.dumps(SCHEMA)
    return req


def decode_tps(d: Daemon, req: pb.GenerateRequest) -> float:
    return float(timed(d.inference.Generate(req, timeout=600)).stats.decode_tokens_per_second)


def batch(d: Daemon, reqs: list[pb.GenerateRequest]) -> list[float]:
    with concurrent.futures.ThreadPoolExecutor(len(reqs)) as pool:
        return list(pool.map(lambda r: decode_tps(d, r), reqs))


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ns = ap.parse_args(argv)
    out: dict[str, Any] = {"benchmark": "structured", "threads": ns.threads, "tokens": ns.tokens}
    with private_daemon(ns.threads, EDGED_PARALLEL="4") as (d, _):
        decode_tps(d, request(8, constrained=True, seed=0))  # load and warm up
        single: dict[str, list[float]] = {"plain": [], "constrained": []}
        plain_alone, plain_mixed, constrained_mixed = [], [], []
        for i in range(ns.rounds):
            single["plain"].append(decode_tps(d, request(ns.tokens, constrained=False, seed=i)))
            single["constrained"].append(
                decode_tps(d, request(ns.tokens, constrained=True, seed=i))
            )
            alone = batch(d, [request(ns.tokens, constrained=False, seed=i + k) for k in range(4)])
            mixed = batch(d, [request(ns.tokens, constrained=k < 2, seed=i + k) for k in range(4)])
            plain_alone.append(median(alone))
            plain_mixed.append(median(mixed[2:]))
            constrained_mixed.append(median(mixed[:2]))
            print(f"round {i + 1}/{ns.rounds} done", file=sys.stderr)
    out["single_stream"] = {
        "plain_tps": median(single["plain"]),
        "constrained_tps": median(single["constrained"]),
        "ratio_constrained": median(single["constrained"]) / median(single["plain"]),
    }
    out["four_streams"] = {
        "plain_alone_tps": median(plain_alone),
        "plain_in_mixed_tps": median(plain_mixed),
        "constrained_in_mixed_tps": median(constrained_mixed),
        "ratio_plain_in_mixed": median(plain_mixed) / median(plain_alone),
        "ratio_constrained_in_mixed": median(constrained_mixed) / median(plain_mixed),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
