"""edged.v1.Sessions: conversations kept by the daemon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from edged.backends.base import Job, Message
from edged.common.errors import InvalidArgument
from edged.daemon.app import App
from edged.daemon.request_ids import next_request_id
from edged.daemon.services import _errors
from edged.daemon.services.generation import (
    Outcome,
    check_device,
    job_controls,
    load_options,
    stream_generation,
    stream_interval_s,
    with_draft,
    with_speculative,
)
from edged.daemon.sessions import SessionRecord
from edged.daemon.wire import check_text, message_from, message_to, messages_from, sampling_from
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg


def session_to(rec: SessionRecord, *, kv: str = "none") -> pb.Session:
    return pb.Session(
        id=rec.id,
        model=rec.model,
        model_digest=rec.model_digest,
        system_prompt=rec.system_prompt,
        created_unix_ms=rec.created_unix_ms,
        updated_unix_ms=rec.updated_unix_ms,
        turns=rec.turns,
        token_count=rec.token_count,
        kv_location=kv,
        backend=rec.backend,
    )


class SessionsService(pbg.SessionsServicer):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self.app = app

    async def _kv(self, records: list[SessionRecord]) -> dict[str, str]:
        """Ask each loaded worker where its sessions' KV lives."""
        out: dict[str, str] = {}
        for digest in {r.model_digest for r in records}:
            out.update(await self.app.scheduler.kv_locations(digest))
        return out

    async def create(self, request: pb.CreateSessionRequest) -> pb.Session:
        if not request.model:
            raise InvalidArgument("model is required (for example: smollm2)")
        device = check_device(request.device)
        model = await asyncio.to_thread(
            self.app.selection.resolve, request.model, request.backend, device
        )
        system = check_text("the system prompt", request.system_prompt) or model.system_prompt
        history = messages_from(pb.ChatMessages(messages=request.history))
        if any(m.role not in ("user", "assistant", "tool") for m in history):
            raise InvalidArgument(
                "history holds user, assistant and tool messages (system_prompt is a field)"
            )
        rec = self.app.sessions.create(
            model.name, model.digest, system, request.backend, device, history=history
        )
        return session_to(rec)

    async def send(
        self, request: pb.SendRequest, *, deadline: float | None = None
    ) -> AsyncIterator[pb.GenerateChunk]:
        content = check_text("the message", request.content)
        results = [message_from(m) for m in request.tool_results]
        if any(m.role != "tool" for m in results):
            raise InvalidArgument('tool_results hold role "tool" messages only')
        if not content.strip() and not results:
            raise InvalidArgument("the message is empty")
        interval = stream_interval_s(self.app, request)
        rec = self.app.sessions.get(request.session_id)
        async with self.app.sessions.lock(rec.id):
            model = await asyncio.to_thread(
                self.app.selection.resolve, rec.model, rec.backend, rec.device
            )
            options = load_options(
                self.app.selection.model_settings(model.name),
                keep_alive_s=request.keep_alive_s if request.HasField("keep_alive_s") else None,
                backend=rec.backend,
                device=rec.device,
            )
            sampling = with_speculative(
                self.app,
                model.name,
                sampling_from(request.sampling, model.sampling_defaults, model.stop_defaults),
            )
            options = await with_draft(self.app, model, sampling, options)
            if model.digest != rec.model_digest:
                # the name now points at other weights: the old KV is meaningless
                self.app.scheduler.drop_session(rec.model_digest, rec.id)
                rec.model_digest = model.digest
            added = [*results, *([Message("user", content)] if content else [])]
            job = Job(
                next_request_id(),
                sampling,
                messages=rec.messages(added),
                session_id=rec.id,
                deadline=deadline,
                stream_interval_s=interval,
                **job_controls(request),
            )
            outcome = Outcome()
            async for chunk in stream_generation(self.app, model, job, outcome, options):
                yield chunk
            done = outcome.done
            if done is not None and done.stats.finish_reason != "cancelled":
                reply = Message("assistant", "".join(outcome.text), outcome.tool_calls())
                self.app.sessions.append_turn(
                    rec, added, reply, done.stats.prompt_tokens + done.stats.completion_tokens
                )

    async def list_sessions(self, request: pb.ListSessionsRequest) -> pb.ListSessionsResponse:
        records = self.app.sessions.list()
        kv = await self._kv(records)
        return pb.ListSessionsResponse(
            sessions=[session_to(r, kv=kv.get(r.id, "none")) for r in records]
        )

    async def get(self, request: pb.SessionRef) -> pb.GetSessionResponse:
        rec = self.app.sessions.get(request.session_id)
        kv = await self._kv([rec])
        return pb.GetSessionResponse(
            session=session_to(rec, kv=kv.get(rec.id, "none")),
            history=[message_to(m) for m in rec.history],
        )

    async def delete(self, request: pb.SessionRef) -> pb.DeleteSessionResponse:
        rec = self.app.sessions.delete(request.session_id)
        self.app.scheduler.drop_session(rec.model_digest, rec.id)
        return pb.DeleteSessionResponse()

    async def fork(self, request: pb.SessionRef) -> pb.Session:
        parent = self.app.sessions.get(request.session_id)
        async with self.app.sessions.lock(parent.id):
            child = self.app.sessions.fork(parent)
            where = await self.app.scheduler.fork_session(parent.model_digest, parent.id, child.id)
            return session_to(child, kv=where)

    async def rewind(self, request: pb.RewindRequest) -> pb.Session:
        rec = self.app.sessions.get(request.session_id)
        async with self.app.sessions.lock(rec.id):
            self.app.sessions.rewind(rec, request.turns)
            kv = await self._kv([rec])
            return session_to(rec, kv=kv.get(rec.id, "none"))

    # gRPC bindings: errors become status codes (services/_errors.py)
    Create = _errors.unary_of("create")
    Send = _errors.stream_of("send")
    List = _errors.unary_of("list_sessions")
    Get = _errors.unary_of("get")
    Delete = _errors.unary_of("delete")
    Fork = _errors.unary_of("fork")
    Rewind = _errors.unary_of("rewind")
