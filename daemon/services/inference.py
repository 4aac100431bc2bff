"""edged.v1.Inference: one-shot streaming generation, and embeddings.

:meth:`InferenceService.generate` and :meth:`InferenceService.embed` are the
service itself, for every door (the HTTP dialects call them with the request
they translated); ``Generate`` and ``Embed`` are their gRPC bindings.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from edged.backends.base import EmbedInput, Job
from edged.backends.chat_template import validate_messages
from edged.common.errors import InvalidArgument
from edged.daemon import controls
from edged.daemon.app import App
from edged.daemon.request_ids import next_request_id
from edged.daemon.services import _errors
from edged.daemon.services.generation import (
    deadline_of,
    job_controls,
    resolve_model,
    resolve_request,
    stream_generation,
    stream_interval_s,
    with_draft,
    with_speculative,
)
from edged.daemon.wire import check_text, messages_from, sampling_from, with_system_prompt
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg

MAX_EMBED_INPUTS = 2048


def embed_inputs(request: pb.EmbedRequest) -> list[EmbedInput]:
    """An EmbedRequest's texts, then its token inputs, checked (numbered in that order)."""
    count = len(request.inputs) + len(request.token_inputs)
    if count == 0:
        raise InvalidArgument("inputs is empty: give at least one text to embed")
    if count > MAX_EMBED_INPUTS:
        raise InvalidArgument(
            f"{count} inputs in one request; at most {MAX_EMBED_INPUTS} are allowed "
            "(send them in several requests)"
        )
    out: list[EmbedInput] = []
    for text in request.inputs:
        name = f"input {len(out)}"
        if not check_text(name, text):
            raise InvalidArgument(f"{name} is empty")
        out.append(text)
    for ids in request.token_inputs:
        if not ids.ids:
            raise InvalidArgument(f"input {len(out)} is empty (no token ids)")
        out.append(tuple(ids.ids))
    return out


class InferenceService(pbg.InferenceServicer):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self.app = app

    async def generate(
        self, request: pb.GenerateRequest, *, deadline: float | None = None
    ) -> AsyncIterator[pb.GenerateChunk]:
        """Stream one generation; raises EdgedError for anything wrong with it."""
        model, options = await resolve_request(self.app, request)
        which = request.WhichOneof("input")
        if which == "prompt":
            prompt = check_text("the prompt", request.prompt)
            if not prompt.strip():
                raise InvalidArgument("the prompt is empty")
            text: dict[str, Any] = {"prompt": prompt}
        elif which == "chat":
            messages = messages_from(request.chat)
            validate_messages(messages)
            text = {"messages": with_system_prompt(messages, model.system_prompt)}
        elif which == "infill":
            text = {"infill": controls.infill_from(request.infill)}
        else:
            raise InvalidArgument("set one of prompt, chat or infill")
        sampling = with_speculative(
            self.app,
            model.name,
            sampling_from(request.sampling, model.sampling_defaults, model.stop_defaults),
        )
        options = await with_draft(self.app, model, sampling, options)
        job = Job(
            next_request_id(),
            sampling,
            deadline=deadline,
            stream_interval_s=stream_interval_s(self.app, request),
            **text,
            **job_controls(request),
        )
        async for chunk in stream_generation(self.app, model, job, options=options):
            yield chunk

    async def embed(
        self, request: pb.EmbedRequest, *, deadline: float | None = None
    ) -> pb.EmbedResponse:
        """Embeddings of every input, in order; raises EdgedError for anything wrong."""
        accepted = time.perf_counter()
        inputs = embed_inputs(request)
        model, options = await resolve_model(
            self.app,
            request.model,
            backend=request.backend,
            device=request.device,
            keep_alive_s=request.keep_alive_s if request.HasField("keep_alive_s") else None,
            context_length=request.context_length,
        )
        load_ms = 0.0
        if self.app.scheduler.describe(model) is None:  # loading is reported apart
            started = time.perf_counter()
            await self.app.scheduler.load(model, options)
            load_ms = (time.perf_counter() - started) * 1000.0
        result = await self.app.scheduler.embed(
            model,
            inputs,
            truncate=request.truncate if request.HasField("truncate") else True,
            normalize=request.normalize if request.HasField("normalize") else True,
            dimensions=request.dimensions if request.HasField("dimensions") else None,
            options=options,
            deadline=deadline,
        )
        rows = np.frombuffer(result.vectors, dtype="<f4").reshape(-1, result.dimensions)
        desc = self.app.scheduler.describe(model)
        return pb.EmbedResponse(
            model=model.name,
            embeddings=[pb.Embedding(values=row.tolist()) for row in rows],
            prompt_tokens=result.prompt_tokens,
            truncated=result.truncated,
            dimensions=result.dimensions,
            backend=desc.capabilities.backend if desc else "",
            device=desc.capabilities.device if desc else "",
            total_ms=(time.perf_counter() - accepted) * 1000.0,
            load_ms=load_ms,
        )

    # gRPC bindings: errors become status codes (services/_errors.py)
    Generate = _errors.stream_of("generate")

    @_errors.unary
    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        return await self.embed(request, deadline=deadline_of(context))
