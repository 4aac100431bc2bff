"""Speculative decoding: decode tokens/s with speculation on vs off, in one run.

    .venv/bin/python -m bench.speculative [--threads 2] [--rounds 3] [--tokens 320]
        [--mode auto] [--llama-bin DIR]

Two workloads, each as one stream and as four streams at once, greedy:

- ``edit``: a ~300-token code block the model is asked to repeat with one
  identifier renamed, and a document it is asked to quote back (prompt lookup
  drafts these well);
- ``free``: open questions (drafts rarely match: speculation must cost nothing).

Each round runs the same requests with ``speculative=off`` and ``--mode`` side by
side (order alternating); the figure is the paired ratio of decode tokens/s,
on over off (> 1: speculation is faster). Both modes must produce the same
text, which is checked. Decode tokens/s is (tokens - 1) / (last token - first
token) over the streams of one run, measured by the client.

With ``--llama-bin`` (or EDGED_LLAMA_BIN) pointing at a llama-server build that
has ``--spec-type ngram-simple``, the same requests run against llama-server
with and without its own prompt-lookup speculation (paired the same way, its
own ``timings``); otherwise that column is reported as skipped. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import private_daemon
from bench.batching import alternate, llama_server, paired
from edged.v1 import edged_pb2 as pb

CODE = """import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class InventoryItem:
    name: str
    quantity: int = 0
    unit_price: float = 0.0
    tags: list[str] = field(default_factory=list)

    def total_value(self) -> float:
        return self.quantity * self.unit_price


class InventoryStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, InventoryItem] = {}

    def load(self) -> None:
        if not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        for entry in data["items"]:
            item = InventoryItem(**entry)
            self.items[item.name] = item

    def save(self) -> None:
        data = {"items": [vars(item) for item in self.items.values()]}
        self.path.write_text(json.dumps(data, indent=2))

    def add(self, item: InventoryItem) -> None:
        if item.name in self.items:
            self.items[item.name].quantity += item.quantity
        else:
            self.items[item.name] = item

    def total_value(self) -> float:
        return sum(item.total_value() for item in self.items.values())
"""

DOCUMENT = (
    "Opening hours and visitor rules. The reading room of the city library opens at "
    "nine in the morning and closes at six in the evening from Monday to Friday, and "
    "at one in the afternoon on Saturdays. It is closed on Sundays and on public "
    "holidays. Visitors must show a valid library card at the front desk, and bags "
    "larger than a laptop case must be left in the lockers on the ground floor. Food "
    "is not allowed in the reading room, but water in a closed bottle is welcome. "
    "Rare books may only be read at the tables near the window, with the pencils the "
    "staff provide, and never taken out of the room. Each visitor may reserve up to "
    "three books a day through the online catalogue; reserved books are kept at the "
    "desk for two days. Quiet is expected at all times, and phone calls must be made "
    "in the hall outside. Group visits for schools can be booked a week in advance by "
    "writing to the librarian in charge of education."
)

EDIT = [
    f"Repeat this code exactly, with InventoryStore renamed to StockStore:\n\n{CODE}",
    f"Quote the following document back word for word:\n\n{DOCUMENT}",
    f"Repeat this code exactly, with total_value renamed to worth:\n\n{CODE}",
    f"Copy this text exactly as it is:\n\n{DOCUMENT}",
]
FREE = [
    "Explain how a rainbow forms, in a few paragraphs.",
    "What are the main causes of the French Revolution?",
    "Describe a good morning routine and why it helps.",
    "How does a refrigerator keep food cold?",
]
WORKLOADS = {"edit": EDIT, "free": FREE}


def request(prompt: str, tokens: int, mode: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="smollm2",
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=prompt)]),
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0, speculative=mode),
        stream_interval_ms=0,
    )


def one_stream(stub: Any, req: pb.GenerateRequest) -> dict[str, Any]:
    first = end = 0.0
    text: list[str] = []
    stats = None
    for chunk in stub.Generate(req, timeout=900):
        now = time.perf_counter()
        if chunk.HasField("stats"):
            stats = chunk.stats
            continue
        first = first or now
        end = now
        text.append(chunk.text)
    assert stats is not None
    return {
        "first": first,
        "end": end,
        "tokens": stats.completion_tokens,
        "drafted": stats.drafted_tokens,
        "accepted": stats.accepted_tokens,
        "text": "".join(text),
    }


def edged_run(stub: Any, prompts: list[str], tokens: int, mode: str) -> dict[str, Any]:
    """All ``prompts`` at once; decode tokens/s over the run."""
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        rows = list(pool.map(lambda p: one_stream(stub, request(p, tokens, mode)), prompts))
    decoded = sum(r["tokens"] - 1 for r in rows)
    span = max(r["end"] for r in rows) - min(r["first"] for r in rows)
    return {
        "decode_tps": decoded / span if span > 0 else 0.0,
        "tokens": sum(r["tokens"] for r in rows),
        "drafted": sum(r["drafted"] for r in rows),
        "accepted": sum(r["accepted"] for r in rows),
        "texts": [r["text"] for r in rows],
    }


def server_run(port: int, prompts: list[str], tokens: int) -> dict[str, Any]:
    """The same chats against llama-server: decode tokens/s from its own timings
    (one stream), or generated tokens over the batch's decode span (four)."""

    def one(p: str) -> dict[str, Any]:
        body = {
            "messages": [{"role": "user", "content": p}],
            "max_tokens": tokens,
            "temperature": 0.0,
            "cache_prompt": True,
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        start = time.perf_counter()
        with urllib.request.urlopen(req, timeout=900) as resp:
            out = json.load(resp)
        end = time.perf_counter()
        t = out.get("timings", {})
        prompt_s = float(t.get("prompt_ms", 0.0)) / 1000.0
        return {
            "first": start + prompt_s,
            "end": end,
            "tokens": int(t.get("predicted_n", 0)),
            "drafted": int(t.get("draft_n", 0)),
            "accepted": int(t.get("draft_n_accepted", 0)),
            "text": out["choices"][0]["message"]["content"],
        }

    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        rows = list(pool.map(one, prompts))
    decoded = sum(r["tokens"] - 1 for r in rows)
    span = max(r["end"] for r in rows) - min(r["first"] for r in rows)
    return {
        "decode_tps": decoded / span if span > 0 else 0.0,
        "tokens": sum(r["tokens"] for r in rows),
        "drafted": sum(r["drafted"] for r in rows),
        "accepted": sum(r["accepted"] for r in rows),
        "texts": [r["text"] for r in rows],
    }


def compare(
    rounds: int, off: Callable[[], dict[str, Any]], on: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Paired on/off runs: the ratio of decode tokens/s, acceptance, same text."""
    ratios: list[float] = []
    same = True
    last_on: dict[str, Any] = {}
    last_off: dict[str, Any] = {}
    for i in range(rounds):
        last_off, last_on = alternate(i, off, on)
        ratios.append(last_on["decode_tps"] / last_off["decode_tps"])
        same = same and last_on["texts"] == last_off["texts"]
    return {
        "ratio_on_over_off": paired(ratios),
        "off_decode_tps": last_off["decode_tps"],
        "on_decode_tps": last_on["decode_tps"],
        "tokens": last_on["tokens"],
        "drafted": last_on["drafted"],
        "accepted": last_on["accepted"],
        "same_text": same,
    }


def spec_supported(bin_dir: Path) -> bool:
    """llama-server offers prompt-lookup speculation (``--spec-type ngram-simple``)."""
    try:
        out = subprocess.run(
            [str(bin_dir / "llama-server"), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, LD_LIBRARY_PATH=str(bin_dir)),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "ngram-simple" in out.stdout + out.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="paired on/off rounds")
    ap.add_argument("--tokens", type=int, default=320, help="max_tokens per reply")
    ap.add_argument("--ctx", type=int, default=2048, help="context per sequence/slot")
    ap.add_argument("--mode", default="auto", help="the speculative mode compared with off")
    ap.add_argument("--streams", default="1,4")
    ap.add_argument("--workloads", default="edit,free")
    ap.add_argument("--llama-bin", type=Path, default=os.environ.get("EDGED_LLAMA_BIN"))
    ns = ap.parse_args(argv)
    streams = [int(x) for x in ns.streams.split(",")]
    workloads = ns.workloads.split(",")
    out: dict[str, Any] = {
        "benchmark": "speculative",
        "model": "smollm2:135m-q4_1",
        "threads": ns.threads,
        "rounds": ns.rounds,
        "max_tokens": ns.tokens,
        "mode": ns.mode,
        "edged": {},
    }
    env = {"EDGED_PARALLEL": str(max(streams)), "EDGED_CONTEXT": str(ns.ctx)}
    with private_daemon(ns.threads, **env) as (daemon, model):
        stub = daemon.inference
        one_stream(stub, request("Hi", 4, "off"))  # warm-up: loads the worker
        for w in workloads:
            for n in streams:
                prompts = WORKLOADS[w][:n]
                out["edged"][f"{w}/{n}"] = compare(
                    ns.rounds,
                    lambda p=prompts: edged_run(stub, p, ns.tokens, "off"),
                    lambda p=prompts: edged_run(stub, p, ns.tokens, ns.mode),
                )
                print(f"edged {w}/{n}:", json.dumps(out["edged"][f"{w}/{n}"]), file=sys.stderr)
        daemon.models.Unload(pb.ModelRef(model="smollm2"), timeout=60)
        bin_dir = Path(ns.llama_bin) if ns.llama_bin else None
        if bin_dir is None or not (bin_dir / "llama-server").exists():
            out["llama_server"] = "skipped: no llama-server (--llama-bin / EDGED_LLAMA_BIN)"
        elif not spec_supported(bin_dir):
            out["llama_server"] = "skipped: this llama-server has no --spec-type ngram-simple"
        else:
            out["llama_server"] = {}
            slots = max(streams)
            rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
            for flags, key in (([], "off"), (["--spec-type", "ngram-simple"], "on")):
                with llama_server(bin_dir, model, ns.threads, slots, ns.ctx, flags) as port:
                    for w in workloads:
                        for n in streams:
                            runs = rows.setdefault(f"{w}/{n}", {"off": [], "on": []})[key]
                            for _ in range(ns.rounds):
                                runs.append(server_run(port, WORKLOADS[w][:n], ns.tokens))
            # the two modes run in separate servers (a flag, not a request field):
            # rounds pair in order, not side by side
            for k, r in rows.items():
                out["llama_server"][k] = {
                    "ratio_on_over_off": paired(
                        [
                            a["decode_tps"] / b["decode_tps"]
                            for a, b in zip(r["on"], r["off"], strict=True)
                        ]
                    ),
                    "drafted": r["on"][-1]["drafted"],
                    "accepted": r["on"][-1]["accepted"],
                    "same_text": r["on"][-1]["texts"] == r["off"][-1]["texts"],
                }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
