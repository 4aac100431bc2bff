"""edged.v1.Models: the registry and the loaded models."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from edged.daemon.app import App
from edged.daemon.errors import InvalidArgument
from edged.daemon.services import _errors
from edged.models_registry.gguf import read_gguf_info
from edged.models_registry.manifest import Manifest
from edged.models_registry.names import ModelRef
from edged.models_registry.progress import PullProgress
from edged.models_registry.pull import pull
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg

_END = object()


def model_info(name: str, tag: str, m: Manifest) -> pb.ModelInfo:
    primary = m.primary
    return pb.ModelInfo(
        name=name,
        tag=tag,
        digest=primary.digest,
        size_bytes=sum(f.size for f in m.files),
        format=m.format,
        architecture=m.architecture,
        quantization=m.quantization,
        parameters=m.parameters,
        context_length=m.context_length,
        modified_unix_ms=m.created_unix_ms,
        source=m.source,
        has_chat_template=m.has_chat_template,
    )


class ModelsService(pbg.ModelsServicer):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self.app = app

    @_errors.stream
    async def Pull(self, request: pb.PullRequest, context: Any) -> AsyncIterator[pb.PullProgress]:
        source = request.source.strip()
        if not source:
            raise InvalidArgument("source is required: a catalog name, a URL or a file path")
        looks_like_path = source.startswith((".", "~")) or "/" in source
        if looks_like_path and "://" not in source and not Path(source).is_absolute():
            raise InvalidArgument("a file path to import must be absolute")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def progress(p: PullProgress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, p)

        def work() -> tuple[ModelRef, Manifest]:
            try:
                return pull(
                    self.app.store,
                    source,
                    name=request.name or None,
                    digest=request.digest or None,
                    progress=progress,
                    cancel=cancel,
                )
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        task = loop.run_in_executor(None, work)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                assert isinstance(item, PullProgress)
                yield pb.PullProgress(
                    status=item.status, completed_bytes=item.completed, total_bytes=item.total
                )
            ref, manifest = await task
        finally:
            cancel.set()  # no-op when finished; stops the download if the client left
        yield pb.PullProgress(status="success", model=model_info(ref.name, ref.tag, manifest))

    @_errors.unary
    async def List(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        items = self.app.store.list_manifests()
        return pb.ListModelsResponse(models=[model_info(r.name, r.tag, m) for r, m in items])

    @_errors.unary
    async def Show(self, request: pb.ModelRef, context: Any) -> pb.ShowModelResponse:
        ref, manifest = self.app.store.resolve(request.model)
        path = self.app.store.blob_path(manifest.primary.digest)
        info = await asyncio.to_thread(read_gguf_info, path)
        return pb.ShowModelResponse(
            model=model_info(ref.name, ref.tag, manifest),
            chat_template=info.chat_template,
            metadata=info.metadata,
            system_prompt=manifest.system_prompt,
            sampling_defaults=dict(manifest.sampling),
        )

    @_errors.unary
    async def Delete(self, request: pb.ModelRef, context: Any) -> pb.DeleteModelResponse:
        ref, manifest = self.app.store.resolve(request.model)
        digest = manifest.primary.digest
        still_used = any(
            m.primary.digest == digest and r != ref for r, m in self.app.store.list_manifests()
        )
        if not still_used:
            await self.app.scheduler.unload(digest)
        self.app.store.delete(ref)
        return pb.DeleteModelResponse()

    @_errors.unary
    async def ListLoaded(
        self, request: pb.ListLoadedRequest, context: Any
    ) -> pb.ListLoadedResponse:
        out = []
        for model, worker in self.app.scheduler.loaded():
            caps = worker.description.capabilities if worker.description else None
            rss = 0
            if worker.pid:
                try:
                    rss = psutil.Process(worker.pid).memory_info().rss
                except psutil.Error:
                    rss = 0
            out.append(
                pb.LoadedModel(
                    model=model.name,
                    digest=model.digest,
                    backend=caps.backend if caps else worker.backend,
                    device=caps.device if caps else worker.spec.device,
                    pid=worker.pid or 0,
                    rss_bytes=rss,
                    context_length=caps.context_length if caps else 0,
                    active_requests=worker.active,
                    loaded_unix_ms=int(worker.loaded_at * 1000),
                )
            )
        return pb.ListLoadedResponse(models=out)

    @_errors.unary
    async def Unload(self, request: pb.ModelRef, context: Any) -> pb.UnloadResponse:
        model = self.app.resolve(request.model)
        await self.app.scheduler.unload(model.digest)
        return pb.UnloadResponse()
