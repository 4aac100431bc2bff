"""edged.v1.Models: the registry and the loaded models."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil

from edged.backends.base import Capabilities
from edged.backends.registry import BACKENDS
from edged.daemon.app import App, variant_digest
from edged.daemon.errors import InvalidArgument
from edged.daemon.services import _errors
from edged.models_registry.convert import convert_to_onnx
from edged.models_registry.gguf import read_gguf_info
from edged.models_registry.manifest import Manifest, Variant
from edged.models_registry.names import ModelRef
from edged.models_registry.progress import ProgressFn, PullProgress
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


def _caps(c: Capabilities) -> pb.BackendCapabilities:
    return pb.BackendCapabilities(
        formats=c.formats,
        context_length=c.context_length,
        max_sequences=c.max_sequences,
        batching=c.batching,
        session_kv=c.session_kv,
        kv_tiers=c.kv_tiers,
        fork=c.fork,
        grammar=c.grammar,
        sampling=c.sampling,
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
        async for item in self._in_thread(
            lambda progress, cancel: pull(
                self.app.store,
                source,
                name=request.name or None,
                digest=request.digest or None,
                progress=progress,
                cancel=cancel,
            )
        ):
            yield item

    async def _in_thread(
        self, work: Callable[[ProgressFn, threading.Event], tuple[ModelRef, Manifest]]
    ) -> AsyncIterator[pb.PullProgress]:
        """Run blocking registry work in a thread, streaming its progress."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def progress(p: PullProgress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, p)

        def run() -> tuple[ModelRef, Manifest]:
            try:
                return work(progress, cancel)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        task = loop.run_in_executor(None, run)
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
            cancel.set()  # no-op when finished; stops the work if the client left
        yield pb.PullProgress(status="success", model=model_info(ref.name, ref.tag, manifest))

    @_errors.unary
    async def List(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        items = self.app.store.list_manifests()
        return pb.ListModelsResponse(models=[model_info(r.name, r.tag, m) for r, m in items])

    @_errors.unary
    async def Show(self, request: pb.ModelRef, context: Any) -> pb.ShowModelResponse:
        ref, manifest = self.app.store.resolve(request.model)
        gguf = manifest.variant("gguf")
        template, metadata = "", {}
        if gguf is not None:
            info = await asyncio.to_thread(
                read_gguf_info, self.app.store.blob_path(gguf.main.digest)
            )
            template, metadata = info.chat_template, info.metadata
        return pb.ShowModelResponse(
            model=model_info(ref.name, ref.tag, manifest),
            chat_template=template,
            metadata=metadata,
            system_prompt=manifest.system_prompt,
            sampling_defaults=dict(manifest.sampling),
            variants=[self._variant(v) for v in manifest.variants],
        )

    def _variant(self, v: Variant) -> pb.ModelVariant:
        runs = [b.name for b in BACKENDS if v.format in b.formats and b.name in self.app.installed]
        return pb.ModelVariant(
            name=v.name,
            format=v.format,
            quantization=v.quantization,
            size_bytes=v.size,
            backends=runs,
            source=v.source,
        )

    @_errors.unary
    async def Delete(self, request: pb.ModelRef, context: Any) -> pb.DeleteModelResponse:
        ref, manifest = self.app.store.resolve(request.model)
        others = {
            variant_digest(v)
            for r, m in self.app.store.list_manifests()
            if r != ref
            for v in m.variants
        }
        for v in manifest.variants:
            if variant_digest(v) not in others:
                await self.app.scheduler.unload(variant_digest(v))
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
                    capabilities=_caps(caps) if caps else None,
                )
            )
        return pb.ListLoadedResponse(models=out)

    @_errors.unary
    async def Unload(self, request: pb.ModelRef, context: Any) -> pb.UnloadResponse:
        _, manifest = self.app.store.resolve(request.model)
        for v in manifest.variants:
            await self.app.scheduler.unload(variant_digest(v))
        return pb.UnloadResponse()

    @_errors.stream
    async def Convert(
        self, request: pb.ConvertRequest, context: Any
    ) -> AsyncIterator[pb.PullProgress]:
        if request.to != "onnx":
            raise InvalidArgument(f"cannot convert to {request.to!r}; supported: onnx")
        self.app.store.resolve(request.model)  # NOT_FOUND / INVALID_ARGUMENT early
        async for item in self._in_thread(
            lambda progress, cancel: convert_to_onnx(
                self.app.store, request.model, progress=progress, cancel=cancel
            )
        ):
            yield item
