"""Shared streaming of one generation to the wire (used by Inference and Sessions)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from edged.backends.base import DRAFT_PREFIX, Chunk, Done, Job, Sampling, ToolCall, ToolCallDelta
from edged.common.errors import InvalidArgument
from edged.daemon import controls
from edged.daemon.app import App
from edged.daemon.config import MAX_STREAM_INTERVAL_MS
from edged.daemon.scheduler import LoadOptions, ResolvedModel
from edged.daemon.wire import chunk_to, stats_to
from edged.models_registry.settings import MAX_CONTEXT, MIN_CONTEXT, check_keep_alive
from edged.models_registry.settings import ModelSettings as Settings
from edged.v1 import edged_pb2 as pb


def deadline_of(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.time() + float(remaining)


def check_device(device: str) -> str:
    """A request's device string, validated for shape (selection checks it exists)."""
    if device:
        Settings(device=device)  # raises InvalidArgument naming the valid forms
    return device


def stream_interval_s(app: App, request: Any) -> float:
    """A request's ``stream_interval_ms`` (else the daemon's default) in seconds."""
    if not request.HasField("stream_interval_ms"):
        return app.config.engine.stream_interval_ms / 1000.0
    ms = int(request.stream_interval_ms)
    if ms > MAX_STREAM_INTERVAL_MS:
        raise InvalidArgument(
            f"stream_interval_ms must be at most {MAX_STREAM_INTERVAL_MS} (10 s), got {ms}; "
            "0 sends every token at once"
        )
    return ms / 1000.0


def load_options(
    s: Settings,
    *,
    keep_alive_s: float | None = None,
    context_length: int = 0,
    backend: str = "",
    device: str = "",
    pin: bool | None = None,
) -> LoadOptions:
    """What a request asks of its model's worker: the request's own values, else
    the model's settings (Models.Configure), else the daemon's defaults."""
    if keep_alive_s is not None:
        check_keep_alive(keep_alive_s)
    if context_length and not MIN_CONTEXT <= context_length <= MAX_CONTEXT:
        raise InvalidArgument(
            f"context_length must be 0 (the default) or between {MIN_CONTEXT} and "
            f"{MAX_CONTEXT}, got {context_length}"
        )
    return LoadOptions(
        context_length=context_length or s.context_length,
        keep_alive_s=keep_alive_s if keep_alive_s is not None else s.keep_alive_s,
        pinned=s.pinned,
        pin=pin,
        exact=bool(backend or device or s.backend or s.device),
        kv_type=s.kv_type,
        rpc=s.rpc,
    )


def with_speculative(app: App, model: str, sampling: Sampling) -> Sampling:
    """A request's speculative mode: its own, else the model's setting, else
    EDGED_SPECULATIVE (the worker always gets a concrete mode)."""
    mode = (
        sampling.speculative
        or app.selection.model_settings(model).speculative
        or app.config.engine.speculative
    )
    return replace(sampling, speculative=mode)


async def with_draft(
    app: App, model: ResolvedModel, sampling: Sampling, options: LoadOptions
) -> LoadOptions:
    """``options`` asking for the draft model a greedy ``draft:NAME`` request
    speculates with (its worker loads it beside the target)."""
    mode = sampling.speculative
    if not mode.startswith(DRAFT_PREFIX) or sampling.temperature > 0.0:
        return options
    path, name = await asyncio.to_thread(
        app.selection.draft_for, model.name, mode.removeprefix(DRAFT_PREFIX)
    )
    return replace(options, draft_path=path, draft_name=name)


def job_controls(request: Any) -> dict[str, Any]:
    """The controls of a GenerateRequest or SendRequest (the same fields) as Job
    keyword arguments, checked (see :mod:`edged.daemon.controls`)."""
    tools = controls.tools_from(request.tools)
    return {
        "constraint": controls.constraint_from(request.response_format),
        "tools": tools,
        "tool_choice": controls.tool_choice_from(request.tool_choice, tools),
        "parallel_tool_calls": (
            request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
        ),
        "logprobs": controls.logprobs_from(request),
    }


@dataclass
class Outcome:
    """What a finished generation produced (sessions record it as the turn)."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, list[ToolCallDelta]] = field(default_factory=dict)
    done: Done | None = None

    def add(self, chunk: Chunk) -> None:
        self.text.append(chunk.text)
        for d in chunk.tool_calls:
            self.calls.setdefault(d.index, []).append(d)

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The reply's tool calls, their streamed parts joined."""
        out = []
        for index in sorted(self.calls):
            parts = self.calls[index]
            call_id = next((p.id for p in parts if p.id), "")
            name = next((p.name for p in parts if p.name), "")
            out.append(ToolCall(call_id, name, "".join(p.arguments for p in parts)))
        return tuple(out)


async def resolve_request(
    app: App, request: Any, *, pin: bool | None = None
) -> tuple[ResolvedModel, LoadOptions]:
    """The model a GenerateRequest or LoadRequest names, and what it asks of its
    worker (both carry model, backend, device, keep_alive_s, context_length)."""
    return await resolve_model(
        app,
        request.model,
        backend=request.backend,
        device=request.device,
        keep_alive_s=request.keep_alive_s if request.HasField("keep_alive_s") else None,
        context_length=request.context_length,
        pin=pin,
    )


async def resolve_model(
    app: App,
    name: str,
    *,
    backend: str = "",
    device: str = "",
    keep_alive_s: float | None = None,
    context_length: int = 0,
    pin: bool | None = None,
) -> tuple[ResolvedModel, LoadOptions]:
    """A model name (and optional backend/device) resolved for a request."""
    if not name:
        raise InvalidArgument("model is required (for example: smollm2)")
    device = check_device(device)
    model = await asyncio.to_thread(app.selection.resolve, name, backend, device)
    options = load_options(
        app.selection.model_settings(model.name),
        keep_alive_s=keep_alive_s,
        context_length=context_length,
        backend=backend,
        device=device,
        pin=pin,
    )
    return model, options


async def stream_generation(
    app: App,
    model: ResolvedModel,
    job: Job,
    outcome: Outcome | None = None,
    options: LoadOptions | None = None,
) -> AsyncIterator[pb.GenerateChunk]:
    accepted = time.perf_counter()
    first: float | None = None
    emitted = 0
    finished = False
    try:
        # closed at once when the client goes away (not when the collector finds it):
        # the worker's finally cancels the generation, a remote one closes the upstream
        async with contextlib.aclosing(app.scheduler.generate(model, job, options)) as events:
            async for event in events:
                if isinstance(event, Chunk):
                    if first is None:
                        first = time.perf_counter()
                    if outcome is not None:
                        outcome.add(event)
                    emitted += event.tokens
                    yield chunk_to(event)
                    continue
                stats = stats_to(event.stats, **_backend_device(app, model))
                if first is not None:
                    # measured here: from the daemon accepting the request to the first text
                    stats.time_to_first_token_ms = (first - accepted) * 1000.0
                stats.total_ms = (time.perf_counter() - accepted) * 1000.0
                if outcome is not None:
                    outcome.done = event
                finished = True
                app.metrics.generation(model.name, stats)
                yield pb.GenerateChunk(stats=stats)
    except (asyncio.CancelledError, GeneratorExit):
        if not finished:  # the client went away (or its deadline passed)
            app.metrics.ended_early(model.name, "cancelled", emitted)
        raise
    except Exception:
        if not finished:
            app.metrics.ended_early(model.name, "error", emitted)
        raise


def _backend_device(app: App, model: ResolvedModel) -> dict[str, str]:
    desc = app.scheduler.describe(model)
    if desc is None:
        return {"backend": "", "device": ""}
    return {"backend": desc.capabilities.backend, "device": desc.capabilities.device}
