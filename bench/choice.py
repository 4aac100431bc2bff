"""Fidelity and speed of every backend / variant / KV type, and the automatic choice.

    .venv/bin/python -m bench.choice [--models smollm2,gemma3:270m] [--threads 2]
        [--streams 4] [--tokens 128] [--runs 3] [--kv-types q8_0,q4_0]
        [--llama-bin DIR]   # llama-bench / llama-server (bench/build_llama_cpp.sh)

One run, per model, in a private daemon:

1. pull it, convert it to ONNX (``Models.Convert``; a model the conversion
   cannot take is noted, not fatal);
2. calibrate (``System.Hardware`` with ``calibrate``, what ``edged hw
   --calibrate`` does): per CPU backend and the variant it runs, decode tokens/s
   at 1 stream and at ``--streams`` together, and fidelity against the
   reference (exact arithmetic: the GGUF's weights in F32 on llama.cpp; top-1
   agreement, KL, perplexity, or greedy agreement where a backend has no
   logits);
3. llama.cpp's own rows against the same exact reference, over the same
   evaluation text (:mod:`edged.backends.llamacpp.fidelity`): the GGUF evaluated
   one token at a time (the path decoding takes; calibration's teacher-forced
   figure is the prefill path), and per extra KV cache type its fidelity
   against the exact reference and against the f16 cache, with the KV bytes
   per token;
4. the automatic choice (no backend asked for) against llama.cpp's own tools on
   the same GGUF, side by side over ``--runs`` rounds: one stream of
   ``--tokens`` against ``llama-bench`` tg, and ``--streams`` streams against
   ``llama-server`` with as many slots.

Prints one JSON object (``table``: one row per model/backend/variant/KV type).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import timed
from bench.batching import (
    alternate,
    llama_bench_tg,
    llama_server,
    paired,
    prompt,
    server_aggregate,
)
from edged.backends import fidelity
from edged.backends.fidelity import Fidelity, eval_text
from edged.backends.llamacpp.exact import write_exact
from edged.backends.llamacpp.fidelity import LlamaTeacherForced, Side, measure, tokenize
from edged.common.model_facts import model_facts
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, start_daemon

FIDELITY_TOKENS = 1024


def pull(d: Daemon, name: str) -> Path:
    final = None
    for p in d.models.Pull(pb.PullRequest(source=name), timeout=1800):
        final = p
    assert final is not None and final.model.digest, f"pulling {name} failed"
    hexd = final.model.digest.split(":", 1)[1]
    return d.root / "data" / "models" / "blobs" / f"sha256-{hexd}"


def convert(d: Daemon, name: str) -> str:
    try:
        last = None
        for p in d.models.Convert(pb.ConvertRequest(model=name, to="onnx"), timeout=3600):
            last = p
        return last.status if last is not None else "no answer"
    except Exception as exc:  # a model the conversion cannot take: noted in the table
        return f"failed: {exc}"


def calibrated_rows(d: Daemon, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reply = d.system.Hardware(pb.HardwareRequest(model=name, calibrate=True), timeout=3600)
    rows = []
    cpu = [b for b in reply.backends if b.available and b.device == "cpu"]
    for b in cpu:
        f = b.fidelity
        rows.append(
            {
                "model": name,
                "backend": b.backend,
                "variant": b.variant,
                "kv_type": "f16",
                "decode_tps_1": round(b.calibrated_tokens_per_second, 1),
                "decode_tps_streams": round(b.aggregate_tokens_per_second, 1),
                "streams": b.streams,  # 0: its calibration failed (see the notes)
                "fidelity_measure": f.measure,
                "top1_agreement": round(f.agreement, 4),
                "mean_kl": round(f.mean_kl, 5),
                "perplexity": round(f.perplexity, 3),
                "perplexity_reference": round(f.perplexity_reference, 3),
                "within_threshold": f.within_threshold,
                "fidelity_error": f.error,
            }
        )
    chosen = cpu[0] if cpu else None
    notes = [n for n in reply.notes if "calibration of" in n]
    return rows, {
        "chosen": f"{chosen.backend} ({chosen.variant})" if chosen else None,
        "calibration_errors": notes,
    }


class OneAtATime:
    """A GGUF on llama.cpp fed one token per decode: the attention path decoding
    takes (teacher-forced batches take the tiled one)."""

    def __init__(self, path: str, window: int, threads: int) -> None:
        self._src = LlamaTeacherForced(Side(path), window=window, batch=1, threads=threads)

    def n_vocab(self) -> int:
        return self._src.n_vocab()

    def logits(self, piece: Any, batch: int) -> Any:
        import numpy as np

        rows = np.concatenate([np.array(x, copy=True) for x in self._src.logits(piece, 1)])
        for off in range(0, len(piece), batch):
            yield rows[off : off + batch]

    def close(self) -> None:
        self._src.close()


def figures(got: Fidelity, prefix: str = "") -> dict[str, Any]:
    return {
        f"{prefix}top1_agreement": round(got.agreement, 4),
        f"{prefix}mean_kl": round(got.mean_kl, 5),
        f"{prefix}perplexity": round(got.perplexity_candidate, 3),
        f"{prefix}perplexity_reference": round(got.perplexity_reference, 3),
    }


def llama_rows(
    name: str, gguf: Path, exact: Path, kv_types: list[str], threads: int
) -> list[dict[str, Any]]:
    facts = model_facts(gguf, "gguf")
    per_token_f16 = facts.n_layer * facts.n_head_kv * (facts.head_dim_k + facts.head_dim_v) * 2
    tokens = tokenize(str(gguf), eval_text())[:FIDELITY_TOKENS]
    window = 512
    base = {"model": name, "backend": "llama.cpp", "variant": "gguf"}
    ref = LlamaTeacherForced(Side(str(exact)), window=window, batch=window, threads=threads)
    cand = OneAtATime(str(gguf), window, threads)
    try:
        decode = fidelity.measure(ref, cand, tokens, window=window, batch=window)
    finally:
        cand.close()
        ref.close()
    rows = [
        {
            **base,
            "kv_type": "f16",
            "path": "one token per decode (as decoding runs)",
            "fidelity_measure": "logits (against exact F32 arithmetic)",
            **figures(decode),
        }
    ]
    for kv in kv_types:
        got = measure(Side(str(exact)), Side(str(gguf), kv), tokens, threads=threads)
        vs_f16 = measure(Side(str(gguf)), Side(str(gguf), kv), tokens, threads=threads)
        scale = {"f16": 1.0, "q8_0": 34 / 64, "q4_0": 18 / 64}[kv]
        rows.append(
            {
                **base,
                "kv_type": kv,
                "kv_bytes_per_token": int(per_token_f16 * scale),
                "kv_bytes_per_token_f16": per_token_f16,
                "fidelity_measure": "logits (against exact F32 arithmetic, and the f16 KV cache)",
                **figures(got),
                **figures(vs_f16, "vs_f16_"),
            }
        )
    return rows


def generate(d: Daemon, name: str, tokens: int, streams: int) -> dict[str, float]:
    """``streams`` greedy requests at once with no backend asked for (the daemon's choice)."""

    def one(i: int) -> Any:
        req = pb.GenerateRequest(
            model=name,
            prompt=prompt(i),  # the prompts llama-server gets
            sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
        )
        return timed(d.inference.Generate(req, timeout=900))

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        got = list(pool.map(one, range(streams)))
    wall = time.perf_counter() - t0
    return {
        "decode_tps": statistics.median(g.decode_tps for g in got),
        "aggregate_tps": sum(g.tokens for g in got) / wall,
        "backend": got[0].stats.backend,
    }


def against_llama_cpp(
    d: Daemon, name: str, gguf: Path, bin_dir: Path, ns: argparse.Namespace
) -> dict[str, Any]:
    generate(d, name, 8, 1)  # loads the chosen backend
    single = [
        alternate(
            i,
            lambda: generate(d, name, ns.tokens, 1),
            lambda: llama_bench_tg(bin_dir, gguf, ns.threads, ns.tokens),
        )
        for i in range(ns.runs)
    ]
    with llama_server(bin_dir, gguf, ns.threads, ns.streams, 1024, []) as port:
        multi = [
            alternate(
                i,
                lambda: generate(d, name, ns.tokens, ns.streams),
                lambda: server_aggregate(port, ns.streams, ns.tokens),
            )
            for i in range(ns.runs)
        ]
    return {
        "single_stream_vs_llama_bench_tg": paired([e["decode_tps"] / tg for e, tg in single]),
        "auto_decode_tps_1": statistics.median(e["decode_tps"] for e, _ in single),
        "llama_bench_tg": statistics.median(tg for _, tg in single),
        f"streams_{ns.streams}_vs_llama_server": paired(
            [e["aggregate_tps"] / s["aggregate_tps"] for e, s in multi]
        ),
        f"auto_aggregate_tps_{ns.streams}": statistics.median(e["aggregate_tps"] for e, _ in multi),
        "llama_server_aggregate_tps": statistics.median(s["aggregate_tps"] for _, s in multi),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.choice", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,gemma3:270m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kv-types", default="q8_0,q4_0")
    ap.add_argument("--llama-bin", type=Path, default=os.environ.get("EDGED_LLAMA_BIN"))
    ns = ap.parse_args(argv)
    out: dict[str, Any] = {
        "benchmark": "choice",
        "threads": ns.threads,
        "streams": ns.streams,
        "tokens": ns.tokens,
        "runs": ns.runs,
        "table": [],
        "models": {},
    }
    bin_dir = ns.llama_bin
    for name in ns.models.split(","):
        with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
            os.environ["EDGED_TEST_THREADS"] = str(ns.threads)
            d = start_daemon(
                Path(tmp),
                EDGED_THREADS=str(ns.threads),
                EDGED_PARALLEL=str(ns.streams),
                EDGED_CONTEXT="1024",
            )
            try:
                gguf = pull(d, name)
                info: dict[str, Any] = {"convert_to_onnx": convert(d, name)}
                rows, chosen = calibrated_rows(d, name)
                info.update(chosen)
                out["table"] += rows
                kvs = [k for k in ns.kv_types.split(",") if k]
                exact = Path(tmp) / "exact.f32.gguf"
                write_exact(str(gguf), str(exact))
                out["table"] += llama_rows(name, gguf, exact, kvs, ns.threads)
                exact.unlink()
                if bin_dir is not None and (Path(bin_dir) / "llama-server").exists():
                    info["auto_vs_llama_cpp"] = against_llama_cpp(d, name, gguf, Path(bin_dir), ns)
                else:
                    info["auto_vs_llama_cpp"] = "skipped: no --llama-bin / EDGED_LLAMA_BIN"
                out["models"][name] = info
            finally:
                d.stop()
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
