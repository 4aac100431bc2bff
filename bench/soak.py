"""Soak: misbehaving clients for N minutes, then check the daemon is back to baseline.

    python -m bench.soak --minutes 5 [--parallel 4] [--http-clients 2]

Starts a private daemon with smollm2 (``EDGED_PARALLEL`` sequences, default 4)
and runs twice that many gRPC client threads. Each loops over a random mix of:
a full stream, a stream cancelled after its first chunk, a client that drops
its connection mid-stream, a request with a 100 ms deadline, and a session turn
(then its deletion). Beside them a prober calls the gRPC health check every
50 ms and records the latency.

``--http-clients`` more threads stream through the HTTP door, OpenAI's SSE
(``/v1/chat/completions``) and Ollama's NDJSON (``/api/chat``) in turn: most
hang up after a few chunks (the socket shut down under the open response),
some wait for a non-streamed reply and hang up before it comes, the rest read
their stream to the end. After the soak, with nothing else running, a few more
streaming hang-ups through each dialect must each add exactly one cancelled
generation to ``GET /metrics`` and leave ``edged_streams_active`` at 0.

After the soak and a short settle, the daemon's threads, open file descriptors
and RSS (daemon and worker) are compared with the baseline taken after warm-up,
and its metrics with theirs. Prints one JSON object and exits 1 when a check
fails: threads above baseline + the size of asyncio's default executor (its
threads stay once started) or still growing in the second half, fds above
baseline + 4, RSS above baseline + 25%, health p99 >= 100 ms, any unexpected
error status, a stream still counted active, fewer new cancelled generations
than the HTTP clients' hang-ups mid-stream, or a hang-up that did not cancel.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

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
HTTP_EXPECTED = {429}  # the HTTP door's RESOURCE_EXHAUSTED
# long enough that a hang-up after a few chunks always lands mid-generation
HANG_UP_TOKENS = 256
_tally_lock = threading.Lock()


def count(tally: Counter[str], key: str) -> None:
    with _tally_lock:
        tally[key] += 1


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

    def count(self, key: str) -> None:
        count(self.tally, key)

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


class HttpStream:
    """One streamed chat request through the HTTP door, in OpenAI's SSE dialect or
    Ollama's NDJSON one, on a plain ``http.client`` connection whose socket it
    keeps: ``hang_up`` shuts that socket down (FIN to the daemon at once), which
    closing the connection object alone does not while the response still holds
    the socket's file."""

    def __init__(self, url: str, dialect: str, content: str, tokens: int, *, stream: bool = True):
        parts = urlsplit(url)
        self.dialect = dialect
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
        self.conn.connect()
        assert self.conn.sock is not None
        self.sock: socket.socket = self.conn.sock
        messages = [{"role": "user", "content": content}]
        if dialect == "openai":
            path = "/v1/chat/completions"
            body: dict[str, Any] = {"model": "smollm2", "messages": messages, "stream": stream,
                                    "max_tokens": tokens, "temperature": 0.7}  # fmt: skip
        else:
            path = "/api/chat"
            body = {"model": "smollm2", "messages": messages, "stream": stream,
                    "options": {"num_predict": tokens, "temperature": 0.7}}  # fmt: skip
        self.conn.request(
            "POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        self.response: http.client.HTTPResponse | None = None

    def start(self) -> int:
        """Wait for the response to begin (the daemon sends it with the first
        chunk); its status."""
        self.response = self.conn.getresponse()
        return self.response.status

    def events(self) -> Iterator[tuple[str, bytes]]:
        """The stream's events: ("text", line), then ("end", line) or ("error", line)."""
        assert self.response is not None
        while True:
            line = self.response.readline()
            if not line:
                return
            line = line.strip()
            if not line:
                continue
            if self.dialect == "openai":
                if not line.startswith(b"data: "):
                    continue  # an SSE comment or event name
                data = line[len(b"data: ") :]
                if data == b"[DONE]":
                    yield "end", line
                    return
                yield ("error" if b'"error"' in data[:12] else "text"), line
            else:
                record = json.loads(line)
                if "error" in record:
                    yield "error", line
                elif record.get("done"):
                    yield "end", line
                    return
                else:
                    yield "text", line

    def hang_up(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.sock.shutdown(socket.SHUT_RDWR)
        self.close()

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        self.conn.close()
        self.sock.close()


class HttpClient(threading.Thread):
    """Streams through the HTTP door, OpenAI and Ollama in turn: a hang-up after
    1-3 chunks (most often), a hang-up while a non-streamed reply is being
    generated, or a stream read to its end."""

    def __init__(self, url: str, seed: int, stop: threading.Event, tally: Counter[str]):
        super().__init__(daemon=True)
        self.url, self.rng, self.stop, self.tally = url, random.Random(seed), stop, tally

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            dialect = ("openai", "ollama")[turn % 2]
            turn += 1
            action = self.rng.choice(("hang_up", "hang_up", "hang_up_waiting", "full"))
            try:
                outcome = getattr(self, f"_{action}")(dialect)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome = f"UNEXPECTED {type(exc).__name__}: {exc}"[:160]
            key = f"http_{action}:{dialect}"
            if outcome.startswith("UNEXPECTED "):
                count(self.tally, f"UNEXPECTED {key}: {outcome.removeprefix('UNEXPECTED ')}")
            else:
                count(self.tally, f"{key}:{outcome}")

    def _open(self, dialect: str, tokens: int, *, stream: bool = True) -> HttpStream:
        return HttpStream(self.url, dialect, self.rng.choice(PROMPTS), tokens, stream=stream)

    def _hang_up(self, dialect: str) -> str:
        return hang_up_mid_stream(self._open(dialect, HANG_UP_TOKENS), self.rng.randint(1, 3))

    def _hang_up_waiting(self, dialect: str) -> str:
        s = self._open(dialect, HANG_UP_TOKENS, stream=False)
        time.sleep(self.rng.uniform(0.05, 0.5))
        s.hang_up()
        return "ok"

    def _full(self, dialect: str) -> str:
        s = self._open(dialect, self.rng.choice((8, 16, 32)))
        try:
            status = s.start()
            if status != 200:
                return status_outcome(status)
            kinds = [kind for kind, _ in s.events()]
            return "ok" if kinds and kinds[-1] == "end" else f"UNEXPECTED ended {kinds[-1:]}"
        finally:
            s.close()


def status_outcome(status: int) -> str:
    return str(status) if status in HTTP_EXPECTED else f"UNEXPECTED {status}"


def hang_up_mid_stream(s: HttpStream, after: int) -> str:
    """Read ``after`` chunks of text, then hang up: "ok" when the stream was still
    running ("finished" when it ended first, so no cancel is owed)."""
    try:
        status = s.start()
        if status != 200:
            return status_outcome(status)
        for seen, (kind, line) in enumerate(s.events(), 1):
            if kind == "error":
                return f"UNEXPECTED error event {line[:120]!r}"
            if kind == "end":
                return "finished"
            if seen >= after:
                return "ok"
        return "UNEXPECTED stream cut"
    finally:
        s.hang_up()


def scrape(url: str) -> dict[str, float]:
    """``GET /metrics``: the streams running and the generations cancelled."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {"streams_active": 0.0, "cancelled": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edged_streams_active":
                out["streams_active"] += sample.value
            elif (
                sample.name == "edged_generations_total"
                and sample.labels.get("finish_reason") == "cancelled"
            ):
                out["cancelled"] += sample.value
    return out


def settled(url: str, timeout: float = 30.0) -> dict[str, float]:
    """The metrics once no stream runs (or after ``timeout``: the check then fails)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(url)
        if m["streams_active"] == 0 or time.monotonic() > deadline:
            return m
        time.sleep(0.2)


def hang_up_probe(url: str, per_dialect: int = 3) -> dict[str, Any]:
    """With nothing else running, streaming hang-ups through each dialect: each
    must add one cancelled generation, and no stream may stay active."""
    rng = random.Random(1)
    before = settled(url)
    outcomes: Counter[str] = Counter()
    for i in range(2 * per_dialect):
        dialect = ("openai", "ollama")[i % 2]
        s = HttpStream(url, dialect, rng.choice(PROMPTS), HANG_UP_TOKENS)
        outcomes[f"{dialect}:{hang_up_mid_stream(s, 2)}"] += 1
    hung_up = sum(v for k, v in outcomes.items() if k.endswith(":ok"))
    deadline = time.monotonic() + 30
    while True:
        after = scrape(url)
        cancelled = after["cancelled"] - before["cancelled"]
        done = cancelled >= hung_up and after["streams_active"] == 0
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {
        "hang_ups": dict(outcomes),
        "cancelled": cancelled,
        "streams_active_after": after["streams_active"],
        "ok": hung_up == 2 * per_dialect and cancelled == hung_up and done,
    }


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--parallel", type=int, default=4, help="EDGED_PARALLEL for the daemon")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--http-clients", type=int, default=2, help="HTTP client threads (0: none)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds before the final snapshot")
    args = ap.parse_args(argv)

    with private_daemon(args.threads, EDGED_PARALLEL=str(args.parallel)) as (d, _):
        target = f"unix:{d.socket}"
        url = d.http_url
        warm_up(d)
        hang_up_probe(url, per_dialect=1)  # the HTTP door's first requests, before the baseline
        time.sleep(2)
        base = snapshot(d.proc.pid)
        metrics_base = settled(url)
        stop = threading.Event()
        tally: Counter[str] = Counter()
        clients: list[threading.Thread] = [
            Client(target, seed, stop, tally) for seed in range(2 * args.parallel)
        ]
        clients += [HttpClient(url, 1000 + seed, stop, tally) for seed in range(args.http_clients)]
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
        metrics_soak = settled(url)
        probe = hang_up_probe(url) if args.http_clients else None
        time.sleep(args.settle)
        after = snapshot(d.proc.pid)
        metrics_after = settled(url)
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
    # each streaming hang-up mid-generation owes a cancelled generation (gRPC's
    # cancels, disconnects and deadlines add theirs on top)
    hung_up = sum(
        v for k, v in tally.items() if k.startswith("http_hang_up:") and k.endswith(":ok")
    )
    cancelled = metrics_soak["cancelled"] - metrics_base["cancelled"]
    checks = {
        "threads_bounded": after.threads <= base.threads + executor,
        "threads_stable_in_second_half": after.threads <= mid.threads,
        "fds_back": after.fds <= base.fds + 4,
        "daemon_rss_back": after.rss <= base.rss * 1.25,
        "worker_rss_back": after.worker_rss <= base.worker_rss * 1.25,
        "health_p99_under_100ms": p99 < 100.0,
        "no_health_errors": not health_errors,
        "no_unexpected_errors": not unexpected,
        "no_streams_active_after": metrics_after["streams_active"] == 0,
        "cancelled_covers_http_hang_ups": cancelled >= hung_up,
    }
    if probe is not None:
        checks["each_http_hang_up_cancels"] = bool(probe["ok"])
    report = {
        "minutes": args.minutes,
        "clients": len(clients) - args.http_clients,
        "http_clients": args.http_clients,
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
        "metrics": {
            "cancelled_during_soak": cancelled,
            "http_hang_ups_mid_stream": hung_up,
            "streams_active_after": metrics_after["streams_active"],
        },
        "http_hang_up_probe": probe,
        "checks": checks,
    }
    print(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
