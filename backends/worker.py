"""The worker process: hosts one loaded model and runs its step loop.

A native crash here (a segfault in a backend library, an out-of-memory kill)
ends this process only; the daemon sees the pipe close and fails the streams
that were running on it with UNAVAILABLE.

The pipe carries the typed messages of :mod:`edged.backends.worker_protocol`.
"""

from __future__ import annotations

import logging
import select
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from edged.backends.base import Engine, LoadSpec
from edged.backends.outbox import Outbox
from edged.backends.registry import create_engine
from edged.backends.worker_protocol import (
    Call,
    CallFailed,
    Cancel,
    Detokenize,
    DropSession,
    Embed,
    Embedded,
    Events,
    Forked,
    ForkSession,
    FromWorker,
    KvLocations,
    ListKv,
    LoadFailed,
    Ready,
    StepFailed,
    Stop,
    Submit,
    Tokenize,
    Tokens,
    ToWorker,
)
from edged.common.errors import EdgedError

log = logging.getLogger("edged.worker")


def worker_main(conn: Connection, backend: str, spec: LoadSpec) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker[%(process)d] %(message)s")
    try:
        engine = create_engine(backend, spec)
    except EdgedError as exc:
        conn.send(LoadFailed(type(exc).__name__, str(exc)))
        return
    except Exception as exc:  # a library failure we did not anticipate
        log.exception("loading the model failed")
        conn.send(LoadFailed("Internal", f"the {backend} backend failed to load: {exc}"))
        return
    conn.send(Ready(engine.describe()))
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

    def send(msg: FromWorker) -> None:
        conn.send(msg)

    def flush() -> None:
        if outbox:
            send(Events(outbox.take()))

    while True:
        if not eng.has_work():
            flush()
        timeout: float | None = 0.0 if eng.has_work() else None
        while readable(timeout):
            msg: ToWorker = conn.recv()
            timeout = 0.0
            match msg:
                case Submit(job=job):
                    outbox.expect(job)
                    eng.submit(job)
                case Cancel(request_id=rid):
                    eng.cancel(rid)
                case DropSession(session_id=sid):
                    eng.drop_session(sid)
                case ForkSession() | ListKv() | Tokenize() | Detokenize() | Embed():
                    flush()
                    send(_answer(eng, msg))
                case Stop():
                    flush()
                    return
                case _:
                    log.error("ignoring an unknown message from the daemon: %r", type(msg))
        try:
            events = list(eng.step())
        except EdgedError as exc:
            log.exception("engine step failed")
            flush()
            send(StepFailed(type(exc).__name__, str(exc)))
            events = []
        now = time.monotonic()
        if events:
            outbox.add(events, now)
        if outbox.due(now):
            flush()


def _answer(eng: Engine, call: Call) -> FromWorker:
    try:
        match call:
            case ForkSession(source_id=src, new_id=new):
                return Forked(call.call_id, eng.fork_session(src, new))
            case ListKv():
                return KvLocations(call.call_id, eng.kv_locations(), eng.kv_bytes())
            case Embed(inputs=inputs, truncate=truncate, normalize=normalize):
                result = eng.embed(inputs, truncate=truncate, normalize=normalize)
                return Embedded(call.call_id, result)
            case Tokenize(job=job) if job is not None:
                tokens = eng.tokenize_job(job)
            case Tokenize(text=text, add_special=add, parse_special=parse):
                tokens = eng.tokenize(text or "", add_special=add, parse_special=parse)
            case Detokenize(tokens=given):
                tokens = list(given)
        return Tokens(call.call_id, tokens, eng.pieces(tokens, special=_special(call)))
    except EdgedError as exc:
        return CallFailed(call.call_id, type(exc).__name__, str(exc))


def _special(call: Call) -> bool:
    """Pieces render control tokens as text when detokenizing with special, and
    always when showing a tokenized prompt (its template spells them)."""
    return call.special if isinstance(call, Detokenize) else True
