"""What batch-invariant attention costs: one lone stream's prefill and decode
tokens/s with edged's llama.cpp build at each EDGED_BATCH_INVARIANT level: 0
(stock llama.cpp: split-KV decode and tiled prefill), 1 (the default: no split)
and 2 (no tiles either).

    .venv/bin/python -m bench.batch_invariant [--depths 0,1000,3000] [--tokens 64]
        [--rounds 3] [--threads 2] [--model PATH]

ggml reads the switch once per process, so every measurement is a child
process (this module with ``--child``): it loads the GGUF (default: the
catalog's SmolLM2, pulled into a temporary store), prefills ``depth`` tokens of
text into one sequence in steps of 512, then decodes ``--tokens`` greedy tokens
one step at a time, as a lone stream in the daemon does. The levels rotate
round by round; the output is one JSON object with the median tokens/s per
depth and level and their ratios to level 0 (< 1 is the cost). The split path
only runs for a cache of 512 cells or more and the tiles only for 64 or more
rows in a step, so depth 0 is the control.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import private_daemon

LEVELS = [0, 1, 2]
TEXT = (
    "The river ran past the old mill, where the miller kept a ledger of every sack "
    "of grain he ground, the farmer who brought it and the price he paid. "
)


def child(model_path: str, depth: int, tokens: int, threads: int) -> dict[str, Any]:
    import numpy as np

    from edged.backends.llamacpp.native import (
        NativeContext,
        NativeModel,
        Offload,
        batch_invariance,
    )

    model = NativeModel.load(model_path, offload=Offload(0))
    text = model.tokenize(TEXT * (depth // 30 + 2), add_special=True, parse_special=False)
    prompt = text[: max(depth, 8)]
    ctx = NativeContext(model, n_ctx=depth + tokens + 64, n_seq=1, n_batch=512, threads=threads)
    try:
        t_prefill = time.perf_counter()
        for start in range(0, len(prompt) - 1, 512):
            end = min(len(prompt) - 1, start + 512)
            ctx.decode([(prompt[p], p, 0, False) for p in range(start, end)])
        ctx.decode([(prompt[-1], len(prompt) - 1, 0, True)])
        token = int(np.argmax(ctx.logits(0)))
        prefill_s = time.perf_counter() - t_prefill
        out = [token]
        t0 = time.perf_counter()
        for k in range(tokens - 1):
            ctx.decode([(token, len(prompt) + k, 0, True)])
            token = int(np.argmax(ctx.logits(0)))
            out.append(token)
        elapsed = time.perf_counter() - t0
    finally:
        ctx.free()
        model.free()
    return {
        "level": batch_invariance(),
        "depth": len(prompt),
        "tokens_per_second": (tokens - 1) / elapsed,
        "prefill_tokens_per_second": len(prompt) / prefill_s,
        "tokens": out,
    }


def measure(model: str, depth: int, tokens: int, threads: int, level: int) -> dict[str, Any]:
    env = dict(os.environ, EDGED_BATCH_INVARIANT=str(level))
    cmd = [sys.executable, "-m", "bench.batch_invariant", "--child", model]
    cmd += ["--depths", str(depth), "--tokens", str(tokens), "--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=1800)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if row["level"] != level:
        raise SystemExit(
            "this llama-cpp-python lacks edged's batch-invariant patches "
            "(build it with installer/llama_build.py)"
        )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="0,1000,3000")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, help="a GGUF (default: the catalog's smollm2)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    depths = [int(d) for d in ns.depths.split(",")]
    if ns.child:
        print(json.dumps(child(ns.child, depths[0], ns.tokens, ns.threads)))
        return 0
    with contextlib.ExitStack() as stack:
        if ns.model:
            model = str(ns.model)
        else:  # pulled into a private daemon's store; the daemon stops before timing
            with private_daemon(ns.threads) as (_, gguf):
                model = str(stack.enter_context(tempfile.TemporaryDirectory())) + "/model.gguf"
                shutil.copyfile(gguf, model)
        rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in range(ns.rounds):
            for depth in depths:
                for level in LEVELS[r % 3 :] + LEVELS[: r % 3]:
                    row = measure(model, depth, ns.tokens, ns.threads, level)
                    rows.setdefault((depth, level), []).append(row)
    table = []
    for depth in depths:

        def med(level: int, key: str, depth: int = depth) -> float:
            return float(statistics.median(x[key] for x in rows[(depth, level)]))

        out: dict[str, Any] = {"depth": rows[(depth, 0)][0]["depth"]}
        for level in LEVELS:
            out[f"decode_tps_{level}"] = round(med(level, "tokens_per_second"), 1)
            out[f"prefill_tps_{level}"] = round(med(level, "prefill_tokens_per_second"), 1)
        for level in LEVELS[1:]:
            out[f"decode_ratio_{level}"] = round(
                med(level, "tokens_per_second") / med(0, "tokens_per_second"), 3
            )
            out[f"prefill_ratio_{level}"] = round(
                med(level, "prefill_tokens_per_second") / med(0, "prefill_tokens_per_second"), 3
            )
        out["same_tokens"] = all(
            rows[(depth, level)][0]["tokens"] == rows[(depth, 0)][0]["tokens"] for level in LEVELS
        )
        table.append(out)
    print(json.dumps({"threads": ns.threads, "tokens": ns.tokens, "rows": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
