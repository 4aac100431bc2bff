"""Sessions: conversations the daemon keeps, so clients send only the new turn.

The history is stored as one JSON file per session under the data dir,
replaced atomically after every completed turn, so sessions survive a daemon
restart. The KV cache for a session lives in the model's worker and is an
optimisation only: a worker that lost it rebuilds it from this history.
A turn that is cancelled or fails is not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edged.backends.base import Message, ToolCall
from edged.common.errors import InvalidArgument, SessionNotFound

log = logging.getLogger(__name__)

_ID = re.compile(r"^s_[0-9a-f]{24}$")
MAX_SYSTEM_PROMPT = 64 * 1024


def check_session_id(session_id: str) -> str:
    if not _ID.match(session_id):
        raise InvalidArgument(f"{session_id[:40]!r} is not a session id (like s_0123...)")
    return session_id


@dataclass
class SessionRecord:
    id: str
    model: str
    model_digest: str
    system_prompt: str
    created_unix_ms: int
    updated_unix_ms: int
    history: list[Message] = field(default_factory=list)
    token_count: int = 0
    backend: str = ""  # requested at creation; "" = auto
    device: str = ""  # requested at creation; "" = auto

    def messages(self, added: Sequence[Message] = ()) -> tuple[Message, ...]:
        """The conversation as the model sees it: system prompt, history, then
        ``added`` (this turn's user message and/or tool results)."""
        out: list[Message] = []
        if self.system_prompt:
            out.append(Message("system", self.system_prompt))
        out.extend(self.history)
        out.extend(added)
        return tuple(out)

    @property
    def turns(self) -> int:
        return sum(1 for m in self.history if m.role == "assistant")

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> SessionRecord:
        data = json.loads(text)
        data["history"] = [_message(m) for m in data.get("history", [])]
        return cls(**data)


def _message(m: Any) -> Message:
    """A stored message (a malformed one raises KeyError/TypeError: the file is skipped)."""
    calls = m.get("tool_calls") or ()
    return Message(
        role=str(m["role"]),
        content=str(m["content"]),
        tool_calls=tuple(
            ToolCall(str(c["id"]), str(c["name"]), str(c["arguments"])) for c in calls
        ),
        tool_call_id=str(m.get("tool_call_id", "")),
        name=str(m.get("name", "")),
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


class SessionStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cache: dict[str, SessionRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._load_all()

    def _path(self, session_id: str) -> Path:
        return self.root / f"{check_session_id(session_id)}.json"

    def _load_all(self) -> None:
        for path in sorted(self.root.glob("s_*.json")):
            try:
                rec = SessionRecord.from_json(path.read_text(encoding="utf-8"))
                check_session_id(rec.id)
            except (OSError, ValueError, TypeError, KeyError, InvalidArgument):
                log.warning("skipping unreadable session file %s", path.name)
                continue
            self._cache[rec.id] = rec

    def _write(self, rec: SessionRecord) -> None:
        path = self._path(rec.id)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(rec.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create(
        self,
        model: str,
        model_digest: str,
        system_prompt: str,
        backend: str = "",
        device: str = "",
        *,
        history: Sequence[Message] = (),
    ) -> SessionRecord:
        if len(system_prompt) > MAX_SYSTEM_PROMPT:
            raise InvalidArgument(f"the system prompt is over {MAX_SYSTEM_PROMPT} characters")
        now = _now_ms()
        rec = SessionRecord(
            id="s_" + secrets.token_hex(12),
            model=model,
            model_digest=model_digest,
            system_prompt=system_prompt,
            created_unix_ms=now,
            updated_unix_ms=now,
            backend=backend,
            device=device,
            history=list(history),
        )
        self._write(rec)
        self._cache[rec.id] = rec
        return rec

    def get(self, session_id: str) -> SessionRecord:
        rec = self._cache.get(check_session_id(session_id))
        if rec is None:
            raise SessionNotFound(f"session {session_id} not found (list them with ListSessions)")
        return rec

    def count(self) -> int:
        return len(self._cache)

    def list(self) -> list[SessionRecord]:
        return sorted(self._cache.values(), key=lambda r: r.updated_unix_ms, reverse=True)

    def lock(self, session_id: str) -> asyncio.Lock:
        return self._locks.setdefault(session_id, asyncio.Lock())

    def append_turn(
        self, rec: SessionRecord, added: Sequence[Message], reply: Message, token_count: int
    ) -> None:
        """Record a completed turn: what the client sent and the assistant's reply."""
        rec.history.extend([*added, reply])
        rec.token_count = token_count
        rec.updated_unix_ms = _now_ms()
        self._write(rec)

    def fork(self, parent: SessionRecord) -> SessionRecord:
        child = self.create(
            parent.model, parent.model_digest, parent.system_prompt, parent.backend, parent.device
        )
        child.history = list(parent.history)
        child.token_count = parent.token_count
        self._write(child)
        return child

    def rewind(self, rec: SessionRecord, turns: int) -> None:
        if turns > rec.turns:
            raise InvalidArgument(f"the session has {rec.turns} turns; cannot keep {turns}")
        kept: list[Message] = []
        done = 0
        for m in rec.history:
            if done == turns:
                break
            kept.append(m)
            if m.role == "assistant":
                done += 1
        rec.history = kept
        rec.token_count = 0  # unknown until the next turn measures it
        rec.updated_unix_ms = _now_ms()
        self._write(rec)

    def delete(self, session_id: str) -> SessionRecord:
        rec = self.get(session_id)
        self._path(session_id).unlink(missing_ok=True)
        self._cache.pop(session_id, None)
        self._locks.pop(session_id, None)
        return rec
