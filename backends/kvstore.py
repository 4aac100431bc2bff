"""Saved session KV states: a RAM tier and a disk tier, each with a byte budget.

When a session loses its sequence (another needs it), its state is saved here
and restored on its next turn. The RAM tier spills its least recently used
entries to disk; the disk tier drops its oldest. States live under a directory
named by a *key* (model digest, context settings, chat template, KV type), so a state is
never restored into a different model. Pure Python over bytes: the engine does
the llama.cpp calls.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MAGIC = b"EDKV\x01\x00\x00\x00"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOKENS = 1 << 24


@dataclass(frozen=True)
class SavedState:
    tokens: tuple[int, ...]
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data) + 4 * len(self.tokens)


def _check_id(session_id: str) -> str:
    if not _SAFE_ID.match(session_id):
        raise ValueError(f"unsafe session id for the KV store: {session_id[:70]!r}")
    return session_id


def encode(state: SavedState) -> bytes:
    n = len(state.tokens)
    return b"".join(
        [
            _MAGIC,
            struct.pack("<I", n),
            struct.pack(f"<{n}i", *state.tokens),
            struct.pack("<Q", len(state.data)),
            state.data,
        ]
    )


def decode(blob: bytes) -> SavedState:
    """Parse a state file; ValueError on anything malformed (files are untrusted)."""
    if len(blob) < len(_MAGIC) + 12 or not blob.startswith(_MAGIC):
        raise ValueError("not an edged KV state")
    off = len(_MAGIC)
    (n,) = struct.unpack_from("<I", blob, off)
    off += 4
    if n > MAX_TOKENS or off + 4 * n + 8 > len(blob):
        raise ValueError("KV state header is inconsistent")
    tokens = struct.unpack_from(f"<{n}i", blob, off)
    off += 4 * n
    (size,) = struct.unpack_from("<Q", blob, off)
    off += 8
    if off + size != len(blob):
        raise ValueError("KV state is truncated or has trailing bytes")
    return SavedState(tokens=tuple(tokens), data=blob[off:])


def state_key(digest: str, *, context: int, streams: int, template: str, kv_type: str) -> str:
    """The directory name of one loaded model's saved states: a state is only
    restored into the same model, per-sequence context, stream count, chat
    template and KV cache type (a q8_0 state holds q8_0 blocks; restoring it
    into an f16 cache would be refused or misread)."""
    material = "|".join(
        [
            "edged-kv-2",  # 2: per-sequence KV streams
            digest,
            f"ctx={context}",
            f"streams={streams}",
            hashlib.sha256(template.encode()).hexdigest(),
            f"kv={kv_type}",
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


class KVTiers:
    def __init__(
        self, key: str, disk_root: Path | None, *, ram_budget: int, disk_budget: int
    ) -> None:
        self.key = key
        self._ram: OrderedDict[str, SavedState] = OrderedDict()
        self._ram_bytes = 0
        self.ram_budget = ram_budget
        self.disk_budget = disk_budget if disk_root is not None else 0
        self._dir = disk_root / key if disk_root is not None else None
        self._disk: OrderedDict[str, int] = OrderedDict()  # id -> bytes, oldest first
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._scan()

    # ------------------------------------------------------------ queries

    def location(self, session_id: str) -> str | None:
        if session_id in self._ram:
            return "ram"
        if session_id in self._disk:
            return "disk"
        return None

    def entries(self) -> dict[str, str]:
        out = {sid: "disk" for sid in self._disk}
        out.update({sid: "ram" for sid in self._ram})
        return out

    @property
    def ram_bytes(self) -> int:
        return self._ram_bytes

    @property
    def disk_bytes(self) -> int:
        return sum(self._disk.values())

    # ------------------------------------------------------------ updates

    def put(self, session_id: str, state: SavedState) -> str:
        """Store a state; returns where it went: "ram", "disk" or "dropped"."""
        self.drop(_check_id(session_id))
        if state.nbytes <= self.ram_budget:
            self._ram[session_id] = state
            self._ram_bytes += state.nbytes
            self._shrink_ram()
            return self.location(session_id) or "dropped"
        return "disk" if self._to_disk(session_id, state) else "dropped"

    def put_disk(self, session_id: str, state: SavedState) -> bool:
        """Write straight to disk (used at shutdown so sessions survive a restart)."""
        self.drop(_check_id(session_id))
        return self._to_disk(session_id, state)

    def take(self, session_id: str) -> tuple[SavedState, str] | None:
        """Remove and return a saved state (it is becoming resident again)."""
        state = self._ram.pop(session_id, None)
        if state is not None:
            self._ram_bytes -= state.nbytes
            return state, "ram"
        if session_id in self._disk and self._dir is not None:
            path = self._dir / f"{_check_id(session_id)}.kv"
            try:
                loaded = decode(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("dropping unreadable KV state for %s: %s", session_id, exc)
                self.drop(session_id)
                return None
            self.drop(session_id)
            return loaded, "disk"
        return None

    def copy(self, src: str, dst: str) -> bool:
        state = self._ram.get(src)
        if state is None and src in self._disk and self._dir is not None:
            try:
                state = decode((self._dir / f"{_check_id(src)}.kv").read_bytes())
            except (OSError, ValueError):
                return False
        if state is None:
            return False
        return self.put(dst, state) != "dropped"

    def drop(self, session_id: str) -> None:
        state = self._ram.pop(session_id, None)
        if state is not None:
            self._ram_bytes -= state.nbytes
        if self._disk.pop(session_id, None) is not None and self._dir is not None:
            (self._dir / f"{_check_id(session_id)}.kv").unlink(missing_ok=True)

    # ------------------------------------------------------------ internals

    def _shrink_ram(self) -> None:
        while self._ram_bytes > self.ram_budget and self._ram:
            sid, state = self._ram.popitem(last=False)
            self._ram_bytes -= state.nbytes
            self._to_disk(sid, state)

    def _to_disk(self, session_id: str, state: SavedState) -> bool:
        if self._dir is None or state.nbytes > self.disk_budget:
            return False
        blob = encode(state)
        while self._disk and self.disk_bytes + len(blob) > self.disk_budget:
            oldest = next(iter(self._disk))
            self.drop(oldest)
        fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._dir / f"{_check_id(session_id)}.kv")
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            log.warning("could not write KV state for %s: %s", session_id, exc)
            return False
        self._disk[session_id] = len(blob)
        return True

    def _scan(self) -> None:
        assert self._dir is not None
        entries = []
        for path in self._dir.glob("*.kv"):
            sid = path.stem
            if not _SAFE_ID.match(sid):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, sid, st.st_size))
        for _, sid, size in sorted(entries):
            self._disk[sid] = size
        for stale in self._dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
