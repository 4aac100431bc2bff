"""Decode and time to first token of a model split over llama.cpp RPC workers
on loopback, against the same model local only.

    .venv/bin/python -m bench.rpc [--threads 2] [--rounds 5] [--tokens 64]

Needs llama-cpp-python with its RPC backend (install.sh builds it unless
``EDGED_LLAMA_RPC=0``). Three ``edged rpc-worker`` processes on 127.0.0.1
(``--threads`` each; a ggml RPC server serves one client at a time, so each
daemon has its own) and three private daemons on the same store: **local** (no
EDGED_RPC), **rpc1** (EDGED_RPC = one worker) and **rpc2** (two other workers),
every layer on the workers (EDGED_RPC_LAYERS=-1). Each round runs the same
greedy raw prompt on the three, in a rotating order, through gRPC. Prints the
medians and the paired ratios rpc1/local and rpc2/local of decode tokens/s and
time to first token, plus whether the greedy text was identical. On one machine
the workers share the daemon's CPUs and every token crosses loopback TCP: this
measures the RPC protocol's cost, not a gain (a gain needs machines with memory
to lend)."""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import private_daemon, timed
from bench.batching import paired
from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon

PROMPT = "Once upon a time, in a lighthouse by the sea,"
SETUPS = ("local", "rpc1", "rpc2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(endpoint: str, threads: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "edged.daemon.cli.main", "rpc-worker", "--listen", endpoint]
    proc = subprocess.Popen([*cmd, "--threads", str(threads)], stdout=subprocess.DEVNULL)
    host, port = endpoint.split(":")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"edged rpc-worker on {endpoint} did not start (built with RPC?)")


def run(d: Daemon, tokens: int) -> dict[str, Any]:
    req = pb.GenerateRequest(
        model="smollm2",
        prompt=PROMPT,
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    text: list[str] = []

    def chunks() -> Any:
        for c in d.inference.Generate(req, timeout=600):
            if not c.HasField("stats"):
                text.append(c.text)
            yield c

    t = timed(chunks())
    return {"ttft_ms": t.ttft_ms, "decode_tps": t.decode_tps, "text": "".join(text)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ns = ap.parse_args(argv)
    out: dict[str, Any] = {
        "benchmark": "rpc",
        "model": "smollm2:135m-q4_1",
        "threads": ns.threads,
        "max_tokens": ns.tokens,
        "rounds": ns.rounds,
    }
    # a ggml RPC server serves one client at a time: each daemon gets its own
    ends = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    workers = [start_worker(e, ns.threads) for e in ends]
    daemons: dict[str, Daemon] = {}
    try:
        with private_daemon(ns.threads) as (local, _), tempfile.TemporaryDirectory() as tmp:
            daemons["local"] = local
            for name, servers in (("rpc1", ends[:1]), ("rpc2", ends[1:])):
                root = Path(tmp) / name
                clone_store(Path(local.env["EDGED_DATA_DIR"]), root / "data")
                daemons[name] = start_daemon(
                    root, EDGED_THREADS=str(ns.threads), EDGED_RPC=",".join(servers)
                )
            for d in daemons.values():
                run(d, 4)  # load the model (and send its layers to the workers)
            rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SETUPS}
            for i in range(ns.rounds):
                order = SETUPS[i % 3 :] + SETUPS[: i % 3]  # rotate who goes first
                for name in order:
                    rows[name].append(run(daemons[name], ns.tokens))
                print(f"round {i + 1}/{ns.rounds} done", file=sys.stderr)
    finally:
        for name in ("rpc1", "rpc2"):  # the local one stops with private_daemon
            if name in daemons:
                daemons[name].stop()
        for w in workers:
            w.kill()
    for name, runs in rows.items():
        out[name] = {k: statistics.median(r[k] for r in runs) for k in ("ttft_ms", "decode_tps")}
    for name in ("rpc1", "rpc2"):
        pairs = list(zip(rows["local"], rows[name], strict=True))
        out[f"{name}_same_text"] = sum(a["text"] == b["text"] for a, b in pairs) / len(pairs)
        out[f"{name}_ratio_decode_tps"] = paired(
            [b["decode_tps"] / a["decode_tps"] for a, b in pairs]
        )
        out[f"{name}_ratio_ttft"] = paired([b["ttft_ms"] / a["ttft_ms"] for a, b in pairs])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
