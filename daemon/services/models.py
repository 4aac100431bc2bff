"""edged.v1.Models: the registry and the loaded models."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil

from edged.backends import registry
from edged.backends.base import DRAFT_PREFIX, Capabilities, Job, Sampling
from edged.backends.chat_template import ChatTemplate
from edged.common.errors import InvalidArgument
from edged.common.gguf import read_gguf_info
from edged.common.model_facts import is_embedding_metadata
from edged.daemon import controls
from edged.daemon.app import App
from edged.daemon.hardware.report import memory_pb, ranking_fields
from edged.daemon.scheduler import LoadedInfo, Scheduler
from edged.daemon.selection import Selection, variant_digest
from edged.daemon.services import _errors
from edged.daemon.services.generation import resolve_model, resolve_request
from edged.daemon.wire import check_text, messages_from, with_system_prompt
from edged.models_registry import model_params, remote
from edged.models_registry.convert import convert_to_onnx
from edged.models_registry.convert_gguf import check_quant, convert_to_gguf
from edged.models_registry.manifest import Manifest, Variant
from edged.models_registry.names import ModelRef, parse_model_ref
from edged.models_registry.progress import ProgressFn, PullProgress
from edged.models_registry.pull import pull
from edged.models_registry.settings import ModelSettings
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg

_END = object()
log = logging.getLogger(__name__)


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
        response_formats=c.response_formats,
        grammar_syntaxes=c.grammar_syntaxes,
        tools=c.tools,
        infill=c.infill,
        max_logprobs=c.max_logprobs,
        tokenize=c.tokenize,
        embeddings=c.embeddings,
        kv_types=list(c.kv_types),
    )


def settings_to(s: ModelSettings) -> pb.ModelSettings:
    msg = pb.ModelSettings(
        backend=s.backend,
        device=s.device,
        pinned=s.pinned,
        context_length=s.context_length,
        kv_type=s.kv_type,
        rpc=s.rpc,
        speculative=s.speculative,
    )
    if s.keep_alive_s is not None:
        msg.keep_alive_s = s.keep_alive_s
    return msg


def settings_from(msg: pb.ModelSettings) -> ModelSettings:
    """Validate wire settings (InvalidArgument says what is wrong)."""
    return ModelSettings(
        backend=registry.check_name(msg.backend),
        device=msg.device,
        keep_alive_s=msg.keep_alive_s if msg.HasField("keep_alive_s") else None,
        pinned=msg.pinned,
        context_length=msg.context_length,
        kv_type=msg.kv_type.strip().lower(),
        rpc=msg.rpc.strip(),
        speculative=msg.speculative.strip(),
    )


# GGUF keys naming fill-in-the-middle tokens (llama.cpp reads both spellings)
FIM_KEYS = (
    ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
)


def model_capabilities(template: str, metadata: dict[str, str]) -> list[str]:
    """What a model's files say it can do: "completion", "chat", "tools", "infill",
    or "embedding" (Ollama's word) for an embedding model, which does nothing else."""
    if is_embedding_metadata(metadata):
        return ["embedding"]
    caps = ["completion"]
    if template:
        caps.append("chat")
        if ChatTemplate(template).knows_tools:
            caps.append("tools")
    if all(any(k in metadata for k in keys) for keys in FIM_KEYS):
        caps.append("infill")
    return caps


def remote_capabilities(spec: remote.RemoteSpec) -> list[str]:
    """A remote model's capabilities as its upstream declared them (or a probe showed)."""
    p = spec.probed
    if p.embeddings and not (p.tools or p.json_output):
        return ["embedding"]
    return (
        ["completion", "chat"]
        + (["tools"] if p.tools else [])
        + (["embedding"] if p.embeddings else [])
    )


def show_fields(selection: Selection, model: str) -> dict[str, Any]:
    """The ShowModelResponse's ``backends`` (ranked for this machine, every rejected
    option with its reason) and ``memory`` (the estimate for the chosen backend
    and the model's settings). Blocking (reads model headers, may wait for the
    start-up probe): call it in a thread."""
    ranking = selection.rank(model)
    return ranking_fields(ranking.choices, selection.memory_estimate(ranking), ranking.calibrations)


def _rss(pid: int | None) -> int:
    if not pid:
        return 0
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return 0


async def loaded_to(scheduler: Scheduler, info: LoadedInfo) -> pb.LoadedModel:
    model, worker = info.model, info.worker
    caps = worker.description.capabilities if worker.description else None
    return pb.LoadedModel(
        model=model.name,
        digest=model.digest,
        backend=caps.backend if caps else worker.backend,
        device=caps.device if caps else worker.spec.device,
        pid=worker.pid or 0,
        rss_bytes=_rss(worker.pid),
        context_length=caps.context_length if caps else 0,
        active_requests=worker.active,
        loaded_unix_ms=int(worker.loaded_at * 1000),
        capabilities=_caps(caps) if caps else None,
        memory=memory_pb(info.memory),
        # how many sessions' KV the worker holds (resident or in its saved tiers)
        sessions=len(await scheduler.kv_locations(model.digest)),
        keep_alive_s=info.keep_alive_s,
        expires_unix_ms=int(info.expires_at * 1000) if info.expires_at is not None else 0,
        pinned=info.pinned,
        gpu_layers=max(0, caps.gpu_layers) if caps else 0,
        kv_type=worker.spec.kv_type,
    )


class ModelsService(pbg.ModelsServicer):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self.app = app

    async def pull(
        self, request: pb.PullRequest, *, deadline: float | None = None
    ) -> AsyncIterator[pb.PullProgress]:
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

    async def list_models(self, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
        items = self.app.store.list_manifests()
        return pb.ListModelsResponse(models=[model_info(r.name, r.tag, m) for r, m in items])

    async def show(self, request: pb.ModelRef) -> pb.ShowModelResponse:
        ref, manifest = self.app.store.resolve(request.model)
        gguf = manifest.variant("gguf")
        template, metadata = "", {}
        caps: list[str] | None = None
        if remote.remote_variant(manifest) is not None:
            spec = remote.read_spec(self.app.store, manifest)
            metadata = {"remote.url": spec.url, "remote.model": spec.model}
            caps = remote_capabilities(spec)
        if gguf is not None:
            info = await asyncio.to_thread(
                read_gguf_info, self.app.store.blob_path(gguf.main.digest)
            )
            template, metadata = info.chat_template, info.metadata
        return pb.ShowModelResponse(
            model=model_info(ref.name, ref.tag, manifest),
            capabilities=caps if caps is not None else model_capabilities(template, metadata),
            chat_template=template,
            metadata=metadata,
            system_prompt=manifest.system_prompt,
            sampling_defaults=dict(manifest.sampling),
            stop_defaults=manifest.stop,
            variants=[self._variant(v) for v in manifest.variants],
            settings=settings_to(self.app.selection.model_settings(str(ref))),
            **await asyncio.to_thread(show_fields, self.app.selection, str(ref)),
        )

    def _variant(self, v: Variant) -> pb.ModelVariant:
        installed = self.app.selection.installed
        runs = [b.name for b in registry.for_format(v.format) if b.name in installed]
        if v.format == remote.FORMAT_REMOTE:
            runs = [remote.REMOTE_BACKEND]  # the upstream client, always there
        return pb.ModelVariant(
            name=v.name,
            format=v.format,
            quantization=v.quantization,
            size_bytes=v.size,
            backends=runs,
            source=v.source,
        )

    async def delete(self, request: pb.ModelRef) -> pb.DeleteModelResponse:
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
        self.app.selection.settings.remove(str(ref))
        return pb.DeleteModelResponse()

    async def copy(self, request: pb.CopyModelRequest) -> pb.ModelInfo:
        """``source`` stored as ``destination`` too, with the source's settings; a
        replaced model's variants no other model uses are unloaded."""
        store = self.app.store
        source, _ = store.resolve(request.source)
        destination = parse_model_ref(request.destination)
        manifest, replaced = await asyncio.to_thread(
            store.copy, source, destination, replace=request.replace
        )
        if replaced is not None:
            await self._unload_unused(replaced)
        if source != destination:
            settings = self.app.selection.settings
            await asyncio.to_thread(settings.put, str(destination), settings.get(str(source)))
        return model_info(destination.name, destination.tag, manifest)

    async def create(self, request: pb.CreateModelRequest) -> pb.CreateModelResponse:
        """``name`` shares ``source``'s files with its own defaults (Ollama's create
        FROM a model): the system prompt replaces the source's when given, the
        parameters are laid over its defaults, ``num_ctx`` becomes the context
        setting. Parameters edged has no use for are named in the notes."""
        store = self.app.store
        if not request.source:
            raise InvalidArgument("create needs a model to start from (FROM)")
        source, _ = store.resolve(request.source)
        destination = parse_model_ref(request.name)
        params = model_params.from_pairs([(p.key, p.value) for p in request.parameters])
        system = (
            check_text("the system prompt", request.system_prompt)
            if request.HasField("system_prompt")
            else None
        )

        def with_defaults(m: Manifest) -> Manifest:
            sampling = {**dict(m.sampling), **dict(params.sampling)}
            return dataclasses.replace(
                m,
                system_prompt=m.system_prompt if system is None else system,
                sampling=tuple(sorted(sampling.items())),
                stop=params.stop or m.stop,
            )

        manifest, replaced = await asyncio.to_thread(
            store.copy, source, destination, replace=request.replace, edit=with_defaults
        )
        if replaced is not None:
            await self._unload_unused(replaced)
        settings = self.app.selection.settings
        chosen = settings.get(str(source))
        if params.context_length:
            chosen = dataclasses.replace(chosen, context_length=params.context_length)
        await asyncio.to_thread(settings.put, str(destination), chosen)
        notes = [
            f"ignored parameter {name!r}: edged has no such setting" for name in params.ignored
        ]
        return pb.CreateModelResponse(
            model=model_info(destination.name, destination.tag, manifest), notes=notes
        )

    async def _unload_unused(self, manifest: Manifest) -> None:
        """Unload the variants of ``manifest`` that no stored model uses."""
        used = {variant_digest(v) for _, m in self.app.store.list_manifests() for v in m.variants}
        for v in manifest.variants:
            if variant_digest(v) not in used:
                await self.app.scheduler.unload(variant_digest(v))

    async def list_loaded(self, request: pb.ListLoadedRequest) -> pb.ListLoadedResponse:
        infos = self.app.scheduler.loaded()
        scheduler = self.app.scheduler
        loaded = await asyncio.gather(*(loaded_to(scheduler, i) for i in infos))
        return pb.ListLoadedResponse(models=loaded)

    async def load(self, request: pb.LoadRequest) -> pb.LoadedModel:
        model, options = await resolve_request(self.app, request, pin=request.pin)
        started = time.monotonic()
        info = await self.app.scheduler.load(model, options)
        log.info("Load %s: ready in %.1f s", model.name, time.monotonic() - started)
        return await loaded_to(self.app.scheduler, info)

    async def configure(self, request: pb.ConfigureModelRequest) -> pb.ModelSettings:
        ref, manifest = self.app.store.resolve(request.model)
        settings = settings_from(request.settings)
        if settings.speculative.startswith(DRAFT_PREFIX):  # refused now, not at a request
            draft = settings.speculative.removeprefix(DRAFT_PREFIX)
            await asyncio.to_thread(self.app.selection.draft_for, str(ref), draft)
        await asyncio.to_thread(self.app.selection.settings.put, str(ref), settings)
        for v in manifest.variants:  # a loaded model's pin and keep-alive change now
            self.app.scheduler.apply_settings(
                variant_digest(v), pinned=settings.pinned, keep_alive_s=settings.keep_alive_s
            )
        return settings_to(settings)

    async def unload(self, request: pb.ModelRef) -> pb.UnloadResponse:
        _, manifest = self.app.store.resolve(request.model)
        for v in manifest.variants:
            await self.app.scheduler.unload(variant_digest(v))
        return pb.UnloadResponse()

    async def convert(
        self, request: pb.ConvertRequest, *, deadline: float | None = None
    ) -> AsyncIterator[pb.PullProgress]:
        if request.to not in ("onnx", "gguf"):
            raise InvalidArgument(f"cannot convert to {request.to!r}; supported: onnx, gguf")
        if request.to == "onnx" and request.quant:
            raise InvalidArgument("--quant applies to a conversion to gguf")
        quant = check_quant(request.quant) if request.to == "gguf" else ""
        self.app.store.resolve(request.model)  # NOT_FOUND / INVALID_ARGUMENT early

        def run(progress: ProgressFn, cancel: threading.Event) -> tuple[ModelRef, Manifest]:
            if request.to == "gguf":
                return convert_to_gguf(
                    self.app.store, request.model, quant, progress=progress, cancel=cancel
                )
            return convert_to_onnx(self.app.store, request.model, progress=progress, cancel=cancel)

        async for item in self._in_thread(run):
            yield item

    async def tokenize(self, request: pb.TokenizeRequest) -> pb.TokenizeResponse:
        model, options = await resolve_model(self.app, request.model, backend=request.backend)
        which = request.WhichOneof("input")
        if which == "text":
            tokens, pieces = await self.app.scheduler.tokenize(
                model,
                options,
                text=check_text("the text", request.text),
                add_special=request.add_special,
                parse_special=request.parse_special,
            )
        elif which == "chat":
            messages = messages_from(request.chat)
            tools = controls.tools_from(request.tools)
            job = Job(
                0,
                Sampling(),
                messages=with_system_prompt(messages, model.system_prompt),
                tools=tools,
            )
            tokens, pieces = await self.app.scheduler.tokenize(model, options, job=job)
        elif which == "infill":
            job = Job(0, Sampling(), infill=controls.infill_from(request.infill))
            tokens, pieces = await self.app.scheduler.tokenize(model, options, job=job)
        else:
            raise InvalidArgument("set text, chat or infill")
        return pb.TokenizeResponse(tokens=tokens, pieces=pieces, count=len(tokens))

    async def detokenize(self, request: pb.DetokenizeRequest) -> pb.DetokenizeResponse:
        if len(request.tokens) > MAX_DETOKENIZE:
            raise InvalidArgument(f"at most {MAX_DETOKENIZE} tokens per request")
        model, options = await resolve_model(self.app, request.model, backend=request.backend)
        pieces = await self.app.scheduler.detokenize(
            model, list(request.tokens), special=request.special, options=options
        )
        return pb.DetokenizeResponse(text=b"".join(pieces).decode("utf-8", errors="replace"))

    # gRPC bindings: errors become status codes (services/_errors.py)
    Pull = _errors.stream_of("pull")
    List = _errors.unary_of("list_models")
    Show = _errors.unary_of("show")
    Delete = _errors.unary_of("delete")
    ListLoaded = _errors.unary_of("list_loaded")
    Load = _errors.unary_of("load")
    Configure = _errors.unary_of("configure")
    Unload = _errors.unary_of("unload")
    Convert = _errors.stream_of("convert")
    Tokenize = _errors.unary_of("tokenize")
    Detokenize = _errors.unary_of("detokenize")
    Copy = _errors.unary_of("copy")
    Create = _errors.unary_of("create")


MAX_DETOKENIZE = 1 << 20
