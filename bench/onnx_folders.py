"""Decode speed of ONNX Runtime GenAI folders, side by side in one process.

    .venv/bin/python -m bench.onnx_folders FOLDER [FOLDER ...] [--runs 3]
        [--tokens 96] [--threads 2]

Loads every folder with onnxruntime-genai (the threads as the ONNX engine sets
them), then alternates, run by run, a greedy generation of ``--tokens`` tokens
after the same raw prompt in each: a moment of load elsewhere hits all of them
alike. Prints one JSON object: per folder the best and median decode tokens/s,
and each folder's best as a ratio of the first folder's.

To compare the conversion's transcoded GGUF blocks with the model builder's own
requantized int4 weights, make the second folder with the converter itself::

    python -m edged.models_registry.convert_worker --gguf MODEL.gguf --work W \\
        --out BUILDER --hf-architecture LlamaForCausalLM --no-transcode
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

PROMPT = "The history of the printing press begins"


def decode_rate(model: Any, tokenizer: Any, tokens: int) -> float:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    # at least a sliding window's cache (Gemma 3: 512)
    params.set_search_options(max_length=tokens + 600, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode(PROMPT))
    n = 0
    t0 = time.perf_counter()
    while n < tokens and not generator.is_done():
        generator.generate_next_token()
        n += 1
    return n / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime_genai as og

    options = {"intra_op_num_threads": args.threads, "inter_op_num_threads": 1}
    loaded = []
    for folder in args.folders:
        config = og.Config(folder)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        model = og.Model(config)
        loaded.append((model, og.Tokenizer(model)))
    rates: list[list[float]] = [[] for _ in loaded]
    for _ in range(args.runs):
        for i, (model, tokenizer) in enumerate(loaded):
            rates[i].append(decode_rate(model, tokenizer, args.tokens))
    best = [max(r) for r in rates]
    return {
        "tokens": args.tokens,
        "threads": args.threads,
        "runs": args.runs,
        "folders": [
            {
                "folder": folder,
                "best_tokens_per_s": round(b, 1),
                "median_tokens_per_s": round(statistics.median(r), 1),
                "ratio_to_first": round(b / best[0], 3),
            }
            for folder, r, b in zip(args.folders, rates, best, strict=True)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.onnx_folders", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="ONNX Runtime GenAI model folders")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    json.dump(run(p.parse_args(argv)), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
