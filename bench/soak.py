"""Soak: misbehaving clients for N minutes, then check the daemon is back to baseline.

    python -m bench.soak --minutes 5

Starts a private daemon with smollm2 (``EDGED_PARALLEL`` sequences, default 4)
and runs twice that many client threads. Each loops over a random mix of:
a full stream, a stream cancelled after its first chunk, a client that drops
its connection mid-stream, a request with a 100 ms deadline, and a session turn
(then its deletion). Beside them a prober calls the gRPC health check every
50 ms and records the latency.

After the soak and a short settle, the daemon's threads, open file descriptors
and RSS (daemon and worker) are compared with the baseline taken after warm-up.
Prints one JSON object and exits 1 when a check fails: threads above baseline
+ the size of asyncio's default executor (its threads stay once started) or
still growing in the second half, fds above baseline + 4, RSS above baseline
+ 25%, health p99 >= 100 ms, or any unexpected error status.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._common import private_daemon
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg
from harness.daemon import Daemon

PROMPTS = (
    "Tell me about dolphins.",
    "Write a short poem about a volcano.",
    "What is a saxophone?",
    "Explain what a violin is in two sentences.",
)
EXPECTED = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # queue full is a correct answer under load
}


@dataclass
class Snapshot:
    threads: int
    fds: int
    rss: int
    worker_rss: int
    workers: int


def snapshot(pid: int) -> Snapshot:
    proc = psutil.Process(pid)
    children = proc.children(recursive=True)
    return Snapshot(
        threads=proc.num_threads(),
        fds=proc.num_fds(),
        rss=proc.memory_info().rss,
        worker_rss=sum(c.memory_info().rss for c in children),
        workers=len(children),
    )


def _request(rng: random.Random) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="smollm2",
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=rng.choice(PROMPTS))]),
        sampling=pb.SamplingParams(max_tokens=rng.choice((8, 16, 32)), temperature=0.7),
    )


class Client(threading.Thread):
    def __init__(self, target: str, seed: int, stop: threading.Event, tally: Counter[str]):
        super().__init__(daemon=True)
        self.target, self.rng, self.stop, self.tally = target, random.Random(seed), stop, tally
        self.lock = threading.Lock()

    def count(self, key: str) -> None:
        with self.lock:
            self.tally[key] += 1

    def run(self) -> None:
        while not self.stop.is_set():
            action = self.rng.choice(("full", "cancel", "disconnect", "deadline", "session"))
            channel = grpc.insecure_channel(self.target)
            try:
                getattr(self, f"_{action}")(channel)
                self.count(f"{action}:ok")
            except grpc.RpcError as exc:
                code = exc.code()
                ok = code in EXPECTED or (
                    action == "disconnect" and code == grpc.StatusCode.CANCELLED
                )
                self.count(f"{action}:{code.name}" if ok else f"UNEXPECTED {action}:{code.name}")
            finally:
                channel.close()

    def _full(self, channel: grpc.Channel) -> None:
        for _ in pbg.InferenceStub(channel).Generate(_request(self.rng), timeout=120):
            pass

    def _cancel(self, channel: grpc.Channel) -> None:
        call: Any = pbg.InferenceStub(channel).Generate(_request(self.rng), timeout=120)
        for _ in call:
            call.cancel()
            break

    def _disconnect(self, channel: grpc.Channel) -> None:
        call: Any = pbg.InferenceStub(channel).Generate(_request(self.rng), timeout=120)
        for _ in call:
            break
        channel.close()  # the connection goes away with the stream open

    def _deadline(self, channel: grpc.Channel) -> None:
        for _ in pbg.InferenceStub(channel).Generate(_request(self.rng), timeout=0.1):
            pass

    def _session(self, channel: grpc.Channel) -> None:
        sessions = pbg.SessionsStub(channel)
        s = sessions.Create(pb.CreateSessionRequest(model="smollm2"), timeout=30)
        try:
            turn = pb.SendRequest(
                session_id=s.id,
                content=self.rng.choice(PROMPTS),
                sampling=pb.SamplingParams(max_tokens=8),
            )
            for _ in sessions.Send(turn, timeout=120):
                pass
        finally:
            sessions.Delete(pb.SessionRef(session_id=s.id), timeout=30)


def probe_health(target: str, stop: threading.Event, out: list[float], errors: list[str]) -> None:
    channel = grpc.insecure_channel(target)
    stub = health_pb2_grpc.HealthStub(channel)
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            out.append((time.perf_counter() - t0) * 1000)
        except grpc.RpcError as exc:
            errors.append(exc.code().name)
        time.sleep(0.05)
    channel.close()


def warm_up(d: Daemon) -> None:
    for _ in d.inference.Generate(
        pb.GenerateRequest(
            model="smollm2", prompt="Hello", sampling=pb.SamplingParams(max_tokens=4)
        ),
        timeout=300,
    ):
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--parallel", type=int, default=4, help="EDGED_PARALLEL for the daemon")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds before the final snapshot")
    args = ap.parse_args()

    with private_daemon(args.threads, EDGED_PARALLEL=str(args.parallel)) as (d, _):
        target = f"unix:{d.socket}"
        warm_up(d)
        time.sleep(2)
        base = snapshot(d.proc.pid)
        stop = threading.Event()
        tally: Counter[str] = Counter()
        clients = [Client(target, seed, stop, tally) for seed in range(2 * args.parallel)]
        latencies: list[float] = []
        health_errors: list[str] = []
        prober = threading.Thread(
            target=probe_health, args=(target, stop, latencies, health_errors), daemon=True
        )
        t0 = time.monotonic()
        for c in (*clients, prober):
            c.start()
        peak, mid = base, None
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(5)
            now = snapshot(d.proc.pid)
            peak = max(peak, now, key=lambda s: s.threads + s.fds)
            if mid is None and time.monotonic() - t0 >= args.minutes * 30:
                mid = now
        stop.set()
        for c in clients:
            c.join(180)
        prober.join(10)
        time.sleep(args.settle)
        after = snapshot(d.proc.pid)
        # the model is still loaded and answers
        warm_up(d)

    lat = sorted(latencies)
    p99 = lat[int(0.99 * (len(lat) - 1))] if lat else float("inf")
    unexpected = {k: v for k, v in tally.items() if k.startswith("UNEXPECTED")}
    # The daemon runs blocking work (model resolution, store reads) on asyncio's
    # default executor, whose threads, min(32, cores + 4), stay once started:
    # bounded, not a leak. A leak keeps growing: the second half must not.
    executor = min(32, (os.cpu_count() or 1) + 4)
    mid = mid or after
    checks = {
        "threads_bounded": after.threads <= base.threads + executor,
        "threads_stable_in_second_half": after.threads <= mid.threads,
        "fds_back": after.fds <= base.fds + 4,
        "daemon_rss_back": after.rss <= base.rss * 1.25,
        "worker_rss_back": after.worker_rss <= base.worker_rss * 1.25,
        "health_p99_under_100ms": p99 < 100.0,
        "no_health_errors": not health_errors,
        "no_unexpected_errors": not unexpected,
    }
    report = {
        "minutes": args.minutes,
        "clients": len(clients),
        "parallel": args.parallel,
        "requests": sum(tally.values()),
        "outcomes": dict(sorted(tally.items())),
        "baseline": vars(base),
        "peak": vars(peak),
        "mid": vars(mid),
        "after": vars(after),
        "health_checks": len(lat),
        "health_ms": {
            "p50": round(statistics.median(lat), 2) if lat else None,
            "p99": round(p99, 2),
            "max": round(lat[-1], 2) if lat else None,
        },
        "health_errors": Counter(health_errors),
        "checks": checks,
    }
    print(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
