"""The worker process: hosts one loaded model and runs its step loop.

A native crash here (a segfault in a backend library, an out-of-memory kill)
ends this process only; the daemon sees the pipe close and fails the streams
that were running on it with UNAVAILABLE.

Protocol over a ``multiprocessing`` pipe (pickled tuples):
daemon -> worker: ("submit", Job) | ("cancel", id) | ("drop_session", sid) | ("stop",)
                  | ("call", call_id, method, args)   method in CALLABLE
worker -> daemon: ("ready", ModelDescription) | ("load_failed", error, message)
                  | ("events", [Event, ...]) | ("reply", call_id, ok, value)
"""

from __future__ import annotations

import logging
import select
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from edged.backends.base import Engine, Failed, Job, LoadSpec
from edged.backends.outbox import Outbox
from edged.backends.registry import create_engine
from edged.daemon.errors import EdgedError

log = logging.getLogger("edged.worker")

CALLABLE = frozenset({"fork_session", "kv_locations"})


def worker_main(conn: Connection, backend: str, spec: LoadSpec) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker[%(process)d] %(message)s")
    try:
        engine = create_engine(backend, spec)
    except EdgedError as exc:
        conn.send(("load_failed", type(exc).__name__, str(exc)))
        return
    except Exception as exc:  # a library failure we did not anticipate
        log.exception("loading the model failed")
        conn.send(("load_failed", "Internal", f"the {backend} backend failed to load: {exc}"))
        return
    conn.send(("ready", engine.describe()))
    try:
        _loop(conn, engine)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the daemon went away: nothing left to serve
    finally:
        engine.close()


def _readable(conn: Connection) -> Callable[[float | None], bool]:
    """``conn.poll`` for a loop that asks between every two decode steps.

    ``Connection.poll`` builds and tears down a selector on each call (~40 us
    right after a decode, 0.4% of a single-stream step here); one poll object
    registered once answers the same question with one system call. Where
    ``select.poll`` is missing (Windows) the pipe's own poll is used.
    """
    if not hasattr(select, "poll"):
        return conn.poll
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)

    def readable(timeout: float | None) -> bool:
        return bool(poller.poll(None if timeout is None else timeout * 1000.0))

    return readable


def _loop(conn: Connection, eng: Engine) -> None:
    outbox = Outbox()
    readable = _readable(conn)

    def flush() -> None:
        if outbox:
            conn.send(("events", outbox.take()))

    while True:
        if not eng.has_work():
            flush()
        timeout: float | None = 0.0 if eng.has_work() else None
        while readable(timeout):
            msg = conn.recv()
            timeout = 0.0
            kind = msg[0]
            if kind == "submit":
                job: Job = msg[1]
                outbox.expect(job)
                eng.submit(job)
            elif kind == "cancel":
                eng.cancel(msg[1])
            elif kind == "drop_session":
                eng.drop_session(msg[1])
            elif kind == "call":
                flush()
                conn.send(_call(eng, msg[1], msg[2], msg[3]))
            elif kind == "stop":
                flush()
                return
        try:
            events = list(eng.step())
        except EdgedError as exc:
            log.exception("engine step failed")
            events = [Failed(-1, type(exc).__name__, str(exc))]
        now = time.monotonic()
        if events:
            outbox.add(events, now)
        if outbox.due(now):
            flush()


def _call(eng: Engine, call_id: int, method: str, args: tuple[object, ...]) -> tuple[object, ...]:
    if method not in CALLABLE:
        return ("reply", call_id, False, ("Internal", f"unknown worker call {method!r}"))
    try:
        return ("reply", call_id, True, getattr(eng, method)(*args))
    except EdgedError as exc:
        return ("reply", call_id, False, (type(exc).__name__, str(exc)))
