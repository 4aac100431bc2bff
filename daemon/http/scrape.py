"""``GET /metrics``: Prometheus text format (see :mod:`edged.daemon.metrics`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edged.daemon.app import App
from edged.daemon.http import door
from edged.daemon.metrics import CONTENT_TYPE, LoadedModel


async def loaded_models(app: App) -> list[LoadedModel]:
    """The scheduler's loaded models as the metrics' state gauges read them."""
    out: list[LoadedModel] = []
    slots = app.config.engine.max_sequences
    for info in app.scheduler.loaded():
        digest = info.model.digest
        inflight = app.scheduler.inflight(digest)
        desc = info.worker.description
        memory = {}
        if info.memory is not None:
            memory = {
                "weights": info.memory.weights_bytes,
                "kv": info.memory.kv_bytes,
                "overhead": info.memory.overhead_bytes,
            }
        out.append(
            LoadedModel(
                name=info.model.name,
                backend=desc.capabilities.backend if desc else info.model.backend,
                device=desc.capabilities.device if desc else info.model.device,
                inflight=inflight,
                queued=max(0, inflight - slots),
                memory=memory,
                kv_bytes=await app.scheduler.kv_bytes(digest),
            )
        )
    return out


@door.route("llama-server", "read")
async def metrics(request: Request) -> Response:
    app = door.services_of(request).app
    app.metrics.set_state(
        models=await loaded_models(app),
        sessions=app.sessions.count(),
        streams=door.services_of(request).limiter.active_streams,
        worker_restarts=app.scheduler.restarts,
    )
    return Response(app.metrics.render(), media_type=CONTENT_TYPE)


ROUTES = [Route("/metrics", metrics, methods=["GET"])]
