"""The OpenVINO backend: through the daemon vs openvino-genai in-process, and load times.

    .venv/bin/python -m bench.openvino [--runs 3] [--tokens 128] [--threads 2] [--loads 3]

Starts a private daemon and pulls smollm2 (GGUF). Then alternates, run by run:
(a) Inference.Generate with backend=openvino, (b) openvino-genai's
ContinuousBatchingPipeline (what the engine uses) driven in-process, (c) its
LLMPipeline with a streamer, all on the same GGUF with the same threads, the
same raw prompt, greedy, the same max tokens. Load times are measured in fresh
child processes (as a worker loads): cold = an empty OpenVINO cache dir, cached
= the dir the cold load filled; both include the engine's one-token warm-up,
and the pipeline construction alone is reported beside it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import private_daemon, timed
from bench.sessions import med
from edged.v1 import edged_pb2 as pb

PROMPT = "Once upon a time"

_LOAD_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from edged.backends.base import LoadSpec
from edged.backends.openvino.engine import OpenVinoEngine
t_import = time.perf_counter() - t0
spec = LoadSpec(model_path=sys.argv[1], model_digest="bench", context_length=2048,
                threads=int(sys.argv[2]), cache_dir=sys.argv[3] or None)
e = OpenVinoEngine(spec)
print(json.dumps({"import_s": t_import, "engine_load_s": e.load_seconds,
                  "pipeline_s": e.pipeline_seconds}))
"""


def daemon_run(d: Any, tokens: int) -> Any:
    req = pb.GenerateRequest(
        model="smollm2",
        prompt=PROMPT,
        backend="openvino",
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    return timed(d.inference.Generate(req, timeout=600))


def cb_run(pipe: Any, ids: Any, tokens: int, request_id: int) -> dict[str, float]:
    """The continuous-batching pipeline's own step loop, in-process."""
    t0 = time.perf_counter()
    cfg = pipe.get_config()
    cfg.max_new_tokens = tokens
    cfg.do_sample = False
    handle = pipe.add_request(request_id, ids, cfg)
    first = None
    n = 0
    while pipe.has_non_finished_requests():
        pipe.step()
        if handle.can_read():
            for out in handle.read().values():
                n += len(out.generated_ids)
            if first is None and n:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return {"ttft_ms": (first - t0) * 1000, "decode_tps": (n - 1) / (end - first), "tokens": n}


def llm_run(pipe: Any, tokens: int) -> dict[str, float]:
    """LLMPipeline.generate with a streamer (first token time from the streamer)."""
    import openvino_genai as og

    first: list[float] = []

    def streamer(_text: str) -> og.StreamingStatus:
        if not first:
            first.append(time.perf_counter())
        return og.StreamingStatus.RUNNING

    cfg = og.GenerationConfig(max_new_tokens=tokens, do_sample=False)
    t0 = time.perf_counter()
    res = pipe.generate([PROMPT], cfg, streamer)
    end = time.perf_counter()
    n = int(res.perf_metrics.get_num_generated_tokens())
    f = first[0] if first else end
    return {"ttft_ms": (f - t0) * 1000, "decode_tps": (n - 1) / (end - f), "tokens": n}


def load_times(gguf: Path, threads: int, loads: int) -> dict[str, Any]:
    """Engine loads in fresh processes: cold (empty cache dir) and cached."""
    rows: dict[str, list[dict[str, float]]] = {"cold": [], "cached": [], "no_cache_dir": []}
    env = dict(os.environ)
    for _ in range(loads):
        with tempfile.TemporaryDirectory(prefix="edged-ov-cache-") as cache:
            for kind, cache_dir in (("cold", cache), ("cached", cache), ("no_cache_dir", "")):
                out = subprocess.run(
                    [sys.executable, "-c", _LOAD_CHILD, str(gguf), str(threads), cache_dir],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                rows[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        kind: {
            "engine_load_s": med([r["engine_load_s"] for r in got]),
            "pipeline_s": med([r["pipeline_s"] for r in got]),
        }
        for kind, got in rows.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loads", type=int, default=3, help="cold/cached load pairs")
    ns = ap.parse_args(argv)
    import openvino_genai as og

    out: dict[str, Any] = {
        "benchmark": "openvino",
        "model": "smollm2:135m-q4_1 (GGUF, read by openvino-genai)",
        "openvino_genai": og.get_version(),
        "threads": ns.threads,
        "max_tokens": ns.tokens,
        "runs": ns.runs,
    }
    with private_daemon(ns.threads) as (d, blob), tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "smollm2.gguf"  # openvino-genai tells a GGUF by its suffix
        gguf.symlink_to(blob)
        out["load"] = load_times(gguf, ns.threads, ns.loads)
        daemon_run(d, 8)  # loads the worker
        sched = og.SchedulerConfig()
        sched.enable_prefix_caching = True  # as the engine runs it
        sched.cache_size = 1
        props = {"INFERENCE_NUM_THREADS": ns.threads}
        cb = og.ContinuousBatchingPipeline(str(gguf), sched, "CPU", props)
        ids = cb.get_tokenizer().encode(PROMPT, add_special_tokens=True).input_ids
        llm = og.LLMPipeline(str(gguf), "CPU", **props)
        cb_run(cb, ids, 8, 0)  # warm both (their first step is slow)
        llm_run(llm, 8)
        rows: dict[str, list[Any]] = {"daemon": [], "cb": [], "llm": []}
        for i in range(ns.runs):
            rows["daemon"].append(daemon_run(d, ns.tokens))
            rows["cb"].append(cb_run(cb, ids, ns.tokens, i + 1))
            rows["llm"].append(llm_run(llm, ns.tokens))
        dm_tps = med([r.decode_tps for r in rows["daemon"]])
        dm_ttft = med([r.ttft_ms for r in rows["daemon"]])
        cb_tps = med([r["decode_tps"] for r in rows["cb"]])
        cb_ttft = med([r["ttft_ms"] for r in rows["cb"]])
        llm_tps = med([r["decode_tps"] for r in rows["llm"]])
        llm_ttft = med([r["ttft_ms"] for r in rows["llm"]])
        out.update(
            daemon_openvino={
                "decode_tps": dm_tps,
                "ttft_ms": dm_ttft,
                "tokens": rows["daemon"][-1].tokens,
                "prefix_cached_tokens": rows["daemon"][-1].stats.cached_prompt_tokens,
            },
            inprocess_continuous_batching={"decode_tps": cb_tps, "ttft_ms": cb_ttft},
            inprocess_llm_pipeline={"decode_tps": llm_tps, "ttft_ms": llm_ttft},
            ratio_decode_vs_inprocess_cb=dm_tps / cb_tps,
            ratio_ttft_vs_inprocess_cb=dm_ttft / cb_ttft,
            ratio_decode_vs_llm_pipeline=dm_tps / llm_tps,
        )
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
