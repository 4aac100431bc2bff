"""The ONNX Runtime backend: through the daemon vs onnxruntime-genai in-process,
vs the llama.cpp backend, and session turn reuse.

    .venv/bin/python -m bench.onnx [--runs 3] [--tokens 128] [--threads 2]

Starts a private daemon, pulls smollm2 and converts it to ONNX (Models.Convert),
then alternates, run by run: (a) Inference.Generate with backend=onnxruntime,
(b) onnxruntime-genai's own generation loop in-process on the same folder with
the same threads, (c) Inference.Generate with backend=llama.cpp — the same raw
prompt, greedy. Then a session with ~--history tokens: next-turn time to first
token with the generator resident vs the same turn cold. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import private_daemon, timed
from bench.sessions import build_session, med, warm_turn, whole_conversation
from edged.v1 import edged_pb2 as pb

PROMPT = "Once upon a time"


def daemon_run(d: Any, backend: str, tokens: int) -> Any:
    req = pb.GenerateRequest(
        model="smollm2",
        prompt=PROMPT,
        backend=backend,
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    return timed(d.inference.Generate(req, timeout=600))


def inprocess_run(model: Any, tokenizer: Any, tokens: int) -> dict[str, float]:
    import onnxruntime_genai as og

    t0 = time.perf_counter()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=2048, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(tokenizer.encode(PROMPT))
    stream = tokenizer.create_stream()
    first = None
    n = 0
    while not gen.is_done() and n < tokens:
        gen.generate_next_token()
        stream.decode(gen.get_next_tokens()[0])
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return {"ttft_ms": (first - t0) * 1000, "decode_tps": (n - 1) / (end - first), "tokens": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--history", type=int, default=1500)
    ns = ap.parse_args(argv)
    import onnxruntime_genai as og

    out: dict[str, Any] = {
        "benchmark": "onnx",
        "model": "smollm2:135m-q4_1 (int4 ONNX variant)",
        "threads": ns.threads,
        "max_tokens": ns.tokens,
        "runs": ns.runs,
    }
    with private_daemon(ns.threads, EDGED_CONTEXT="4096") as (d, _gguf):
        t0 = time.perf_counter()
        for _ in d.models.Convert(pb.ConvertRequest(model="smollm2", to="onnx"), timeout=1800):
            pass
        out["convert_s"] = time.perf_counter() - t0
        daemon_run(d, "onnxruntime", 8)  # loads the worker (and makes the folder view)
        views = sorted((Path(_gguf).parents[1] / "views").glob("*"))
        folder = next(v for v in views if (v / "genai_config.json").exists())
        config = og.Config(str(folder))
        config.overlay(
            json.dumps(
                {
                    "model": {
                        "decoder": {
                            "session_options": {
                                "intra_op_num_threads": ns.threads,
                                "inter_op_num_threads": 1,
                            }
                        }
                    }
                }
            )
        )
        model = og.Model(config)
        tokenizer = og.Tokenizer(model)
        daemon_run(d, "llama.cpp", 8)
        inprocess_run(model, tokenizer, 8)
        rows: dict[str, list[Any]] = {"onnx": [], "inproc": [], "llama": []}
        for _ in range(ns.runs):
            rows["onnx"].append(daemon_run(d, "onnxruntime", ns.tokens))
            rows["inproc"].append(inprocess_run(model, tokenizer, ns.tokens))
            rows["llama"].append(daemon_run(d, "llama.cpp", ns.tokens))
        onnx_tps = med([r.decode_tps for r in rows["onnx"]])
        onnx_ttft = med([r.ttft_ms for r in rows["onnx"]])
        in_tps = med([r["decode_tps"] for r in rows["inproc"]])
        in_ttft = med([r["ttft_ms"] for r in rows["inproc"]])
        ll_tps = med([r.decode_tps for r in rows["llama"]])
        ll_ttft = med([r.ttft_ms for r in rows["llama"]])
        out.update(
            daemon_onnx={"decode_tps": onnx_tps, "ttft_ms": onnx_ttft},
            inprocess_onnxruntime_genai={"decode_tps": in_tps, "ttft_ms": in_ttft},
            daemon_llama_cpp={"decode_tps": ll_tps, "ttft_ms": ll_ttft},
            ratio_decode_vs_inprocess=onnx_tps / in_tps,
            ratio_ttft_vs_inprocess=onnx_ttft / in_ttft,
            ratio_decode_vs_llama_cpp=onnx_tps / ll_tps,
        )
        # several streams at once: round-robin interleaving, no shared batch
        agg = {}
        for n_streams in (1, 4):
            runs = []
            for _ in range(ns.runs):
                t0 = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(n_streams) as pool:
                    got = list(
                        pool.map(
                            lambda _i: daemon_run(d, "onnxruntime", ns.tokens), range(n_streams)
                        )
                    )
                runs.append(sum(g.tokens for g in got) / (time.perf_counter() - t0))
            agg[str(n_streams)] = med(runs)
        out["onnx_aggregate_tps"] = agg
        sid, n = build_session(d, ns.history, backend="onnxruntime")
        warm, cold = [], []
        for _ in range(ns.runs):
            warm.append(warm_turn(d, sid))
            # one-shot generators start empty: the whole conversation is prefilled
            req = whole_conversation(d, sid, backend="onnxruntime")
            cold.append(timed(d.inference.Generate(req, timeout=600)))
        assert all(t.stats.kv_source == "resident" for t in warm)
        out["session"] = {
            "history_tokens": n,
            "warm_ttft_ms": med([t.ttft_ms for t in warm]),
            "cold_ttft_ms": med([t.ttft_ms for t in cold]),
        }
        out["session"]["ratio_warm_vs_cold"] = (
            out["session"]["warm_ttft_ms"] / out["session"]["cold_ttft_ms"]
        )
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
