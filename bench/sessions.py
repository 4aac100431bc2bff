"""Session KV benchmarks: turn reuse and eviction round trips.

    .venv/bin/python -m bench.sessions [--threads 2] [--history 1500] [--runs 3]
        [--kv-type f16|q8_0|q4_0]

1. turn reuse: a session with ~--history tokens of conversation; time to first
   token of its next turn with the KV resident, against the same turn sent cold
   (the model freshly loaded, so the whole conversation is prefilled).
2. eviction: with one sequence, a second session evicts the first to the RAM
   tier (then, in a second daemon with no RAM budget, to disk); the first
   session's next turn restores it. Time to first token against the cold turn.
Prints JSON with medians and ratios (warm / cold: smaller is better).
``--kv-type`` runs every daemon with that KV cache type (EDGED_KV_TYPE).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from bench._common import private_daemon, timed
from edged.backends.base import KV_TYPES
from edged.v1 import edged_pb2 as pb

FILLER = (
    "Here is some background about the project. The team builds a local inference "
    "daemon that keeps each conversation's cache so that the next turn is fast. "
)
QUESTION = "In one sentence, what does the team build?"


def sampling() -> pb.SamplingParams:
    return pb.SamplingParams(temperature=0.0, max_tokens=16)


def build_session(d: Any, history_tokens: int, backend: str = "") -> tuple[str, int]:
    sid = d.sessions.Create(
        pb.CreateSessionRequest(model="smollm2", backend=backend), timeout=30
    ).id
    tokens = 0
    while tokens < history_tokens:
        text = FILLER * 8 + "Please acknowledge."
        st = timed(
            d.sessions.Send(
                pb.SendRequest(session_id=sid, content=text, sampling=sampling()), timeout=600
            )
        ).stats
        tokens = st.prompt_tokens + st.completion_tokens
    return sid, tokens


def warm_turn(d: Any, sid: str) -> Any:
    """The next turn with the KV resident, then rewound so it can be repeated."""
    turns = d.sessions.Get(pb.SessionRef(session_id=sid), timeout=10).session.turns
    t = timed(
        d.sessions.Send(
            pb.SendRequest(session_id=sid, content=QUESTION, sampling=sampling()), timeout=600
        )
    )
    d.sessions.Rewind(pb.RewindRequest(session_id=sid, turns=turns), timeout=10)
    return t


def whole_conversation(d: Any, sid: str, backend: str = "") -> pb.GenerateRequest:
    """A one-shot request carrying the session's history plus QUESTION."""
    got = d.sessions.Get(pb.SessionRef(session_id=sid), timeout=10)
    msgs = [pb.ChatMessage(role="system", content=got.session.system_prompt)]
    msgs += [pb.ChatMessage(role=m.role, content=m.content) for m in got.history]
    msgs.append(pb.ChatMessage(role="user", content=QUESTION))
    return pb.GenerateRequest(
        model="smollm2", backend=backend, chat=pb.ChatMessages(messages=msgs), sampling=sampling()
    )


def cold_turn(d: Any, sid: str) -> Any:
    """The same turn with nothing cached: unload, load with a tiny request, send whole."""
    req = whole_conversation(d, sid)
    d.models.Unload(pb.ModelRef(model="smollm2"), timeout=60)
    list(
        d.inference.Generate(
            pb.GenerateRequest(
                model="smollm2", prompt="Hi", sampling=pb.SamplingParams(max_tokens=1)
            ),
            timeout=120,
        )
    )
    return timed(d.inference.Generate(req, timeout=600))


def evicted_turn(d: Any, sid: str, other: str) -> Any:
    """Make `other` take the only sequence (evicting `sid`), then time `sid`'s turn."""
    turns = d.sessions.Get(pb.SessionRef(session_id=sid), timeout=10).session.turns
    list(
        d.sessions.Send(
            pb.SendRequest(session_id=other, content="Hello.", sampling=sampling()), timeout=120
        )
    )
    t = timed(
        d.sessions.Send(
            pb.SendRequest(session_id=sid, content=QUESTION, sampling=sampling()), timeout=600
        )
    )
    d.sessions.Rewind(pb.RewindRequest(session_id=sid, turns=turns), timeout=10)
    return t


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--history", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kv-type", default="f16", choices=KV_TYPES)
    ns = ap.parse_args(argv)
    out: dict[str, Any] = {
        "benchmark": "sessions",
        "model": "smollm2:135m-q4_1",
        "threads": ns.threads,
        "runs": ns.runs,
        "kv_type": ns.kv_type,
    }
    kv = {"EDGED_KV_TYPE": ns.kv_type}

    with private_daemon(ns.threads, EDGED_PARALLEL="1", EDGED_CONTEXT="4096", **kv) as (d, _):
        sid, n = build_session(d, ns.history)
        other = d.sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30).id
        warm = [warm_turn(d, sid) for _ in range(ns.runs)]
        ram = [evicted_turn(d, sid, other) for _ in range(ns.runs)]
        cold = [cold_turn(d, sid) for _ in range(ns.runs)]
        assert all(t.stats.kv_source == "resident" for t in warm)
        assert all(t.stats.kv_source == "ram" for t in ram), [t.stats.kv_source for t in ram]
        assert all(t.stats.cached_prompt_tokens == 0 for t in cold)
        out["history_tokens"] = n
        out["prompt_tokens"] = warm[0].stats.prompt_tokens
        out["cold_ttft_ms"] = med([t.ttft_ms for t in cold])
        out["warm_ttft_ms"] = med([t.ttft_ms for t in warm])
        out["warm_cached_tokens"] = warm[0].stats.cached_prompt_tokens
        out["ram_restore_ttft_ms"] = med([t.ttft_ms for t in ram])
        out["ratio_warm_vs_cold"] = out["warm_ttft_ms"] / out["cold_ttft_ms"]
        out["ratio_ram_restore_vs_cold"] = out["ram_restore_ttft_ms"] / out["cold_ttft_ms"]

    with private_daemon(
        ns.threads, EDGED_PARALLEL="1", EDGED_CONTEXT="4096", EDGED_KV_RAM_MB="0", **kv
    ) as (d, _):
        sid, _n = build_session(d, ns.history)
        other = d.sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30).id
        disk = [evicted_turn(d, sid, other) for _ in range(ns.runs)]
        assert all(t.stats.kv_source == "disk" for t in disk)
        out["disk_restore_ttft_ms"] = med([t.ttft_ms for t in disk])
        out["ratio_disk_restore_vs_cold"] = out["disk_restore_ttft_ms"] / out["cold_ttft_ms"]
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
