"""The remote engine's overhead: a stream through edged's remote model against
the same stream straight from the upstream.

    .venv/bin/python -m bench.remote [--threads 2] [--rounds 9] [--tokens 128]

Two private daemons: the upstream (SmolLM2 pulled, its OpenAI door) and the
front, where ``edged remote add far URL --model smollm2:135m-q4_1`` registers
the upstream's model. Each round runs the same greedy chat prompt through the
``openai`` SDK twice, in A-B order on even rounds and B-A on odd ones:

- **direct**: ``POST /v1/chat/completions`` on the upstream;
- **remote**: the same on the front, model ``far`` (front -> httpx -> upstream).

Both are timed by the client the same way: time to first token from sending
the request to the first non-empty text; decode tokens/s is the tokens after
the first over the time after the first. Prints one JSON object: medians per
path and the paired figures (median over rounds, quartiles, extremes): the
decode ratio remote/direct (aim >= 0.95) and the time-to-first-token overhead
remote - direct in ms (aim <= 5 ms). Both daemons and the client share this
machine's CPUs; the upstream's decode uses ``--threads`` of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from bench._common import private_daemon
from bench.batching import alternate, paired
from harness.daemon import start_daemon

UPSTREAM_MODEL = "smollm2:135m-q4_1"
PROMPT = "Write a long story about a lighthouse keeper."


def stream(client: openai.OpenAI, model: str, tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    chunks = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=tokens,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    first, n, text = None, 0, []
    for chunk in chunks:
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    end = time.perf_counter()
    first = first or end
    tps = (n - 1) / (end - first) if n > 1 and end > first else 0.0
    return {"ttft_ms": (first - t0) * 1000.0, "decode_tps": tps, "tokens": n,
            "text": "".join(text)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=128)
    ns = ap.parse_args(argv)
    out: dict[str, Any] = {
        "benchmark": "remote",
        "model": UPSTREAM_MODEL,
        "threads": ns.threads,
        "max_tokens": ns.tokens,
        "rounds": ns.rounds,
    }
    with private_daemon(ns.threads) as (up, _), tempfile.TemporaryDirectory() as tmp:
        front = start_daemon(Path(tmp))
        try:
            url = up.http_url + "/v1"
            cli = [sys.executable, "-m", "edged.daemon.cli.main", "--no-autostart"]
            add = ["remote", "add", "far", url, "--model", UPSTREAM_MODEL]
            added = subprocess.run(
                cli + add, env=front.env, capture_output=True, text=True, check=False
            )
            if added.returncode != 0:
                raise SystemExit(f"edged remote add failed: {added.stderr}")
            direct = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)
            via = openai.OpenAI(
                base_url=front.http_url + "/v1", api_key="x", max_retries=0, timeout=600
            )
            stream(direct, UPSTREAM_MODEL, 8)  # load the model, open the connections
            stream(via, "far", 8)
            rows: dict[str, list[dict[str, Any]]] = {"direct": [], "remote": []}
            for i in range(ns.rounds):
                d, r = alternate(
                    i,
                    lambda: stream(direct, UPSTREAM_MODEL, ns.tokens),
                    lambda: stream(via, "far", ns.tokens),
                )
                rows["direct"].append(d)
                rows["remote"].append(r)
                print(f"round {i + 1}/{ns.rounds} done", file=sys.stderr)
            direct.close()
            via.close()
        finally:
            front.stop()
    pairs = list(zip(rows["direct"], rows["remote"], strict=True))
    for path, runs in rows.items():
        out[path] = {k: statistics.median(r[k] for r in runs) for k in ("ttft_ms", "decode_tps")}
    out["same_text"] = sum(d["text"] == r["text"] for d, r in pairs) / len(pairs)
    out["ratio_decode_tps"] = paired([r["decode_tps"] / d["decode_tps"] for d, r in pairs])
    out["ttft_overhead_ms"] = paired([r["ttft_ms"] - d["ttft_ms"] for d, r in pairs])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
