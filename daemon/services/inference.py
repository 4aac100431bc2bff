"""edged.v1.Inference: one-shot streaming generation.

:meth:`InferenceService.generate` is the service itself, for every door (the
HTTP dialects call it with the GenerateRequest they translated); ``Generate``
is its gRPC binding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from edged.backends.base import Job
from edged.backends.chat_template import validate_messages
from edged.common.errors import InvalidArgument
from edged.daemon import controls
from edged.daemon.app import App
from edged.daemon.request_ids import next_request_id
from edged.daemon.services import _errors
from edged.daemon.services.generation import (
    job_controls,
    resolve_request,
    stream_generation,
    stream_interval_s,
)
from edged.daemon.wire import check_text, messages_from, sampling_from, with_system_prompt
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg


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
        job = Job(
            next_request_id(),
            sampling_from(request.sampling, model.sampling_defaults, model.stop_defaults),
            deadline=deadline,
            stream_interval_s=stream_interval_s(self.app, request),
            **text,
            **job_controls(request),
        )
        async for chunk in stream_generation(self.app, model, job, options=options):
            yield chunk

    # gRPC binding: errors become status codes (services/_errors.py)
    Generate = _errors.stream_of("generate")
