"""``edged serve``: the gRPC server process.

Listens on a unix socket (0600, in a 0700 directory) and, optionally, on a
loopback TCP port that requires a bearer token. Serves edged.v1, grpc.health.v1
and server reflection. SIGTERM/SIGINT: health goes NOT_SERVING, new calls are
refused, running streams get ``grace_s`` to finish, then workers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import signal
import socket
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edged.backends.base import LoadSpec
from edged.backends.registry import installed_names
from edged.common.errors import EdgedError, FailedPrecondition
from edged.daemon import calibration
from edged.daemon.app import App
from edged.daemon.auth import BearerTokenInterceptor
from edged.daemon.calibrator import Calibrator
from edged.daemon.config import HttpConfig, ServerConfig, load_gc_grace
from edged.daemon.hardware import HardwareMonitor
from edged.daemon.http import app as http_app
from edged.daemon.http.door import Services
from edged.daemon.http.listener import HttpListener
from edged.daemon.limits import Limiter, LimitsInterceptor, server_options
from edged.daemon.remote.worker import BACKEND as REMOTE_BACKEND
from edged.daemon.remote.worker import RemoteWorker
from edged.daemon.scheduler import Scheduler, Worker
from edged.daemon.security import (
    ensure_private_dir,
    is_loopback_ip,
    load_or_create_token,
    parse_address,
    parse_loopback,
)
from edged.daemon.selection import Selection
from edged.daemon.services import _errors
from edged.daemon.services.inference import InferenceService
from edged.daemon.services.models import ModelsService
from edged.daemon.services.sessions import SessionsService
from edged.daemon.services.system import SystemService, edged_version
from edged.daemon.sessions import SessionStore
from edged.daemon.tokens import TokenStore
from edged.daemon.workers import WorkerHandle
from edged.models_registry.settings import SettingsStore
from edged.models_registry.store import Store
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg

log = logging.getLogger("edged")

SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[n].full_name
    for n in ("Inference", "Sessions", "Models", "System")
)


def setup_logging(log_dir: Path) -> None:
    ensure_private_dir(log_dir)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.handlers.RotatingFileHandler(
        log_dir / "edged.log", maxBytes=10 << 20, backupCount=3
    )
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    if sys.stderr.isatty():
        stream = logging.StreamHandler()
        stream.setFormatter(fmt)
        root.addHandler(stream)


def _socket_in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def _prepare_socket(path: Path) -> None:
    ensure_private_dir(path.parent)
    if path.exists() or path.is_symlink():
        if _socket_in_use(path):
            raise FailedPrecondition(f"another edged is already listening on {path}")
        path.unlink()  # stale socket from a daemon that died


def make_worker(backend: str, spec: LoadSpec, label: str) -> Worker:
    """A worker process for a local model; an upstream client for a remote one."""
    if backend == REMOTE_BACKEND:
        return RemoteWorker(backend, spec, label)
    return WorkerHandle(backend, spec, label)


def build_app(cfg: ServerConfig) -> App:
    # The optional hardware probes (child processes) run in the background;
    # the first selection waits for them.
    monitor = HardwareMonitor().start()
    scheduler = Scheduler(cfg.engine, make_worker)
    ensure_private_dir(cfg.paths.data_dir)
    store = Store(cfg.paths.registry_dir, gc_grace_s=load_gc_grace())
    selection = Selection(
        config=cfg,
        store=store,
        monitor=monitor,
        installed=installed_names(),
        settings=SettingsStore(store.root),
        calibrations=calibration.CalibrationCache(cfg.paths.cache_dir),
    )
    return App(
        config=cfg,
        store=store,
        scheduler=scheduler,
        sessions=SessionStore(cfg.paths.sessions_dir),
        selection=selection,
        calibrator=Calibrator(selection, scheduler),
    )


def _collect_garbage(store: Store) -> None:
    try:
        removed = store.gc()
    except (EdgedError, OSError) as exc:  # the store is unreadable: say so, serve on
        log.info("start-up garbage collection skipped: %s", exc)
        return
    if removed:
        log.info("start-up garbage collection removed %d unreferenced blob(s)", len(removed))


def _add_services(server: grpc.aio.Server, services: Services, health_servicer: object) -> None:
    pbg.add_InferenceServicer_to_server(services.inference, server)
    pbg.add_SessionsServicer_to_server(services.sessions, server)
    pbg.add_ModelsServicer_to_server(services.models, server)
    pbg.add_SystemServicer_to_server(services.system, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )


async def serve(cfg: ServerConfig, *, ready: asyncio.Event | None = None) -> None:
    # validate everything that can be wrong before listening anywhere
    tcp_addr = parse_loopback(cfg.tcp) if cfg.tcp else None
    http_addr = _http_address(cfg.http)
    token = load_or_create_token(cfg.paths.token_file) if tcp_addr else ""
    app = build_app(cfg)
    health_servicer = health.aio.HealthServicer()
    servers: list[grpc.aio.Server] = []
    options = server_options(cfg.limits)
    # One of each service and one limiter for every door (unix and TCP gRPC,
    # HTTP): the same request gets the same answer, and the stream limit counts
    # all clients.
    limiter = Limiter(cfg.limits, app.sessions.count)
    services = Services(
        app=app,
        inference=InferenceService(app),
        sessions=SessionsService(app),
        models=ModelsService(app),
        system=SystemService(app),
        limiter=limiter,
        max_body_bytes=cfg.limits.max_message_bytes,
    )
    limits = LimitsInterceptor(limiter)
    tokens = TokenStore(cfg.paths.tokens_file)
    _errors.allow_paths_under(cfg.paths.data_dir, cfg.paths.cache_dir)

    unix = grpc.aio.server(options=options, interceptors=[limits])
    _add_services(unix, services, health_servicer)
    _prepare_socket(cfg.paths.socket)
    old = os.umask(0o177)  # the socket is born 0600: no window where it is looser
    try:
        unix.add_insecure_port(f"unix:{cfg.paths.socket}")
        await unix.start()
    finally:
        os.umask(old)
    os.chmod(cfg.paths.socket, 0o600)
    servers.append(unix)
    log.info("edged %s listening on unix:%s", edged_version(), cfg.paths.socket)

    if tcp_addr:
        host, port = tcp_addr
        auth = BearerTokenInterceptor(token, tokens)
        tcp = grpc.aio.server(options=options, interceptors=[auth, limits])
        _add_services(tcp, services, health_servicer)
        bound = tcp.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        await tcp.start()
        servers.append(tcp)
        log.info("also listening on %s:%d (bearer or scoped token required)", host, bound)

    http: HttpListener | None = None
    if http_addr:
        host, port = http_addr
        door = http_app.build(services, cfg.http, tokens, bound_host=host)
        http = HttpListener(door, host, port, grace_s=cfg.grace_s)
        try:
            bound_host, bound_port = await http.start()
        except (OSError, SystemExit) as exc:  # uvicorn exits when it cannot bind
            for s in servers:
                await s.stop(0)
            raise FailedPrecondition(
                f"cannot listen for HTTP on {cfg.http.address}: {exc or 'address in use?'} "
                "(EDGED_HTTP / --http; off turns it off)"
            ) from None
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        app.http_url = f"http://{shown}:{bound_port}"
        log.info("HTTP API (OpenAI, Ollama, Anthropic, llama-server) on %s", app.http_url)

    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    app.scheduler.start_reaper()
    # Leftovers of pulls that a crash or a kill interrupted (older than the
    # grace period, unreferenced) go now rather than at the next `edged rm`.
    gc_task = asyncio.get_running_loop().run_in_executor(None, _collect_garbage, app.store)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: health NOT_SERVING, draining streams (%.0fs grace)", cfg.grace_s)
        await health_servicer.enter_graceful_shutdown()
        stopping = [s.stop(cfg.grace_s) for s in servers]
        await asyncio.gather(*stopping, *([http.stop()] if http else []))
        await app.scheduler.close()
        with contextlib.suppress(Exception):
            await gc_task
        with contextlib.suppress(FileNotFoundError):
            cfg.paths.socket.unlink()
        log.info("stopped")


def _http_address(cfg: HttpConfig) -> tuple[str, int] | None:
    """The HTTP listener's address; refused on a non-loopback address while
    requests without a token are served (EDGED_HTTP_ANON)."""
    if not cfg.address:
        return None
    host, port = parse_address(cfg.address, "EDGED_HTTP")
    if not is_loopback_ip(host) and cfg.anonymous_scopes:
        raise FailedPrecondition(
            f"refusing to serve HTTP on {cfg.address}, a non-loopback address, while requests "
            f"without a token get {','.join(sorted(cfg.anonymous_scopes))} (EDGED_HTTP_ANON): "
            "set EDGED_HTTP_ANON=none so every request needs a token (edged token create), "
            "or listen on 127.0.0.1"
        )
    return host, port


def run_server(cfg: ServerConfig) -> int:
    try:
        setup_logging(cfg.paths.log_dir)
        asyncio.run(serve(cfg))
    except EdgedError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return 1
    return 0
