"""Fidelity of a KV cache type or a GGUF variant against a reference, on llama.cpp.

    .venv/bin/python -m bench.fidelity --model PATH [--kv-type q8_0 [q4_0 ...]]
        [--candidate PATH] [--candidate-onnx FOLDER ...] [--reference-kv-type f16]
        [--tokens N] [--window 512] [--threads 2]

Teacher-forced over edged's evaluation text (``edged.backends.fidelity``:
prose, code and chat turns written for the project), in windows of
``--window`` tokens: for each candidate, the top-1 next-token agreement with
the reference, the mean KL divergence KL(reference || candidate) in nats, and
the perplexity of both. The reference is ``--model`` with the
``--reference-kv-type`` KV cache; each candidate is ``--candidate`` (default:
``--model``) with one ``--kv-type`` (default: q8_0), and each
``--candidate-onnx`` folder (an ONNX Runtime GenAI model converted from the same
GGUF, e.g. ``edged convert MODEL --to onnx``: its variant's folder under the
store's ``models/views/``) run by onnxruntime. Both run in this process, one
after the other a batch at a time.

Prints one JSON object: the reference, the tokens compared and one entry per
candidate KV type (with the seconds it took).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from edged.backends import fidelity
from edged.backends.base import KV_TYPES
from edged.backends.fidelity import Fidelity, eval_text
from edged.backends.llamacpp.fidelity import LlamaTeacherForced, Side, measure, tokenize


def measure_onnx(
    reference: Side, folder: str, tokens: list[int], *, window: int, threads: int
) -> Fidelity:
    """``folder`` (an ONNX Runtime GenAI model) against ``reference`` on llama.cpp."""
    from edged.backends.onnx.fidelity import OnnxTeacherForced

    batch = min(512, window)
    ref = LlamaTeacherForced(reference, window=window, batch=batch, threads=threads)
    try:
        cand = OnnxTeacherForced(folder, window=window, batch=batch, threads=threads)
        try:
            return fidelity.measure(ref, cand, tokens, window=window, batch=batch)
        finally:
            cand.close()
    finally:
        ref.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    tokens = tokenize(args.model, eval_text())
    if args.tokens:
        tokens = tokens[: args.tokens]
    reference = Side(args.model, args.reference_kv_type)
    out: dict[str, Any] = {
        "reference": {"model": args.model, "kv_type": args.reference_kv_type},
        "eval_tokens": len(tokens),
        "window": args.window,
        "candidates": [],
    }
    for folder in args.candidate_onnx or []:
        t0 = time.perf_counter()
        got = measure_onnx(reference, folder, tokens, window=args.window, threads=args.threads)
        out["candidates"].append(
            {
                "model": folder,
                "backend": "onnxruntime",
                **got.to_json(),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    for kv in args.kv_type or ([] if args.candidate_onnx else ["q8_0"]):
        t0 = time.perf_counter()
        got = measure(
            reference,
            Side(args.candidate or args.model, kv),
            tokens,
            window=args.window,
            threads=args.threads,
        )
        out["candidates"].append(
            {
                "model": args.candidate or args.model,
                "kv_type": kv,
                **got.to_json(),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the reference GGUF")
    p.add_argument("--candidate", help="another GGUF of the same model (default: --model)")
    p.add_argument("--kv-type", nargs="+", choices=KV_TYPES, help="candidate KV types")
    p.add_argument(
        "--candidate-onnx",
        nargs="+",
        metavar="FOLDER",
        help="ONNX Runtime GenAI folders converted from --model (run by onnxruntime)",
    )
    p.add_argument("--reference-kv-type", default="f16", choices=KV_TYPES)
    p.add_argument("--tokens", type=int, default=0, help="compare the first N tokens only")
    p.add_argument("--window", type=int, default=512, help="tokens per teacher-forced window")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    json.dump(run(args), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
