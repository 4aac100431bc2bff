"""Per-model settings: overrides kept next to the manifests (``settings.json``).

One JSON file for the whole registry, ``{"version": 1, "models": {"name:tag":
{...}}}``, replaced atomically on every change. Reading never crashes the
daemon: an unreadable or malformed file, or one malformed entry, is logged
with what is wrong and reads as defaults (:attr:`SettingsStore.problem` keeps
the message); the next change rewrites the file and sets the bad one aside
as ``settings.json.bad``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edged.common.endpoints import endpoints as rpc_endpoints
from edged.common.errors import InvalidArgument

from .fsutil import atomic_write, storage_error

log = logging.getLogger(__name__)

FILE_NAME = "settings.json"
VERSION = 1
MIN_CONTEXT = 256
MAX_CONTEXT = 1 << 20
MAX_KEEP_ALIVE_S = 365 * 24 * 3600.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
# KV cache element types (edged.backends.base.KV_TYPES; the registry imports
# no backend code)
KV_TYPES = ("f16", "q8_0", "q4_0")
# speculative decoding modes (edged.backends.base.SPECULATIVE_MODES) and draft:MODEL
SPECULATIVE_MODES = ("auto", "ngram", "off")
_DRAFT = re.compile(r"^draft:[A-Za-z0-9][A-Za-z0-9._:/+-]{0,199}$")
_DEVICE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,15}([:.][0-9]{1,3})?$")


RPC_LOCAL = "local"  # a model's rpc setting: no RPC workers, whatever EDGED_RPC says


@dataclass(frozen=True)
class ModelSettings:
    """Overrides for one model; the defaults mean "use the daemon's"."""

    backend: str = ""  # "" = choose by hardware
    device: str = ""  # "" = the backend's best device
    keep_alive_s: float | None = None  # None = EDGED_KEEP_ALIVE; < 0 = forever
    pinned: bool = False  # never unloaded for idleness or to make room
    context_length: int = 0  # 0 = EDGED_CONTEXT
    kv_type: str = ""  # "" = EDGED_KV_TYPE; else the backend must offer it
    # llama.cpp RPC workers for this model: "" = EDGED_RPC, "local" = none,
    # else HOST:PORT[,HOST:PORT...]
    rpc: str = ""
    speculative: str = ""  # "" = EDGED_SPECULATIVE; auto | ngram | off | draft:MODEL

    def __post_init__(self) -> None:
        if self.backend and not _NAME.match(self.backend):
            raise InvalidArgument(f"{self.backend[:40]!r} is not a backend name")
        if self.device and not _DEVICE.match(self.device):
            raise InvalidArgument(
                f"{self.device[:40]!r} is not a device (use cpu, cuda:0, gpu, gpu.1 or npu)"
            )
        if self.keep_alive_s is not None:
            check_keep_alive(self.keep_alive_s)
        if self.context_length and not MIN_CONTEXT <= self.context_length <= MAX_CONTEXT:
            raise InvalidArgument(
                f"context length must be 0 (the default) or between {MIN_CONTEXT} and "
                f"{MAX_CONTEXT}, got {self.context_length}"
            )
        if self.rpc and self.rpc != RPC_LOCAL:
            rpc_endpoints(self.rpc)  # InvalidArgument naming the bad endpoint
        if self.kv_type and self.kv_type not in KV_TYPES:
            raise InvalidArgument(
                f"KV cache type must be one of {', '.join(KV_TYPES)} (or empty for the "
                f"default), got {self.kv_type[:20]!r}"
            )
        sp = self.speculative
        if sp and sp not in SPECULATIVE_MODES and not _DRAFT.match(sp):
            raise InvalidArgument(
                f"speculative must be one of {', '.join(SPECULATIVE_MODES)} or draft:MODEL "
                f"(or empty for the default), got {sp[:40]!r}"
            )

    @property
    def is_default(self) -> bool:
        return self == ModelSettings()

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v != getattr(_DEFAULT, k)}

    @classmethod
    def from_json(cls, data: object) -> ModelSettings:
        """Validate one stored entry; raises InvalidArgument saying what is wrong."""
        if not isinstance(data, dict):
            raise InvalidArgument("an entry must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(f"unknown field(s): {', '.join(sorted(unknown))}")
        types: dict[str, tuple[type, ...]] = {
            "backend": (str,),
            "device": (str,),
            "keep_alive_s": (int, float, type(None)),
            "pinned": (bool,),
            "context_length": (int,),
            "kv_type": (str,),
            "rpc": (str,),
            "speculative": (str,),
        }
        for key, value in data.items():
            ok = isinstance(value, types[key])
            if ok and key in ("context_length", "keep_alive_s") and isinstance(value, bool):
                ok = False  # bool is an int in Python, not in JSON
            if not ok:
                raise InvalidArgument(f"{key} has the wrong type ({type(value).__name__})")
        if data.get("keep_alive_s") is not None:
            data = {**data, "keep_alive_s": float(data["keep_alive_s"])}
        return cls(**data)


_DEFAULT = ModelSettings()


def check_keep_alive(seconds: float) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidArgument("keep-alive must be a finite number of seconds (negative: forever)")
    if seconds > MAX_KEEP_ALIVE_S:
        raise InvalidArgument(
            f"keep-alive must be at most {MAX_KEEP_ALIVE_S:.0f} s (a year); "
            "use a negative value to keep the model loaded until it is stopped"
        )
    return seconds


class SettingsStore:
    """The settings file of one registry. Safe to use from several threads."""

    def __init__(self, registry_root: Path) -> None:
        self.path = registry_root / FILE_NAME
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int], dict[str, ModelSettings]] | None = None
        self.problem = ""  # why the file (or an entry) was ignored, for logs and clients

    def get(self, model: str) -> ModelSettings:
        """The settings of ``model`` ("name:tag"); defaults when none are stored."""
        with self._lock:
            return self._read().get(model, _DEFAULT)

    def all(self) -> dict[str, ModelSettings]:
        with self._lock:
            return dict(self._read())

    def put(self, model: str, settings: ModelSettings) -> ModelSettings:
        """Replace ``model``'s settings (defaults remove its entry)."""
        with self._lock:
            current = dict(self._read())
            if settings.is_default:
                current.pop(model, None)
            else:
                current[model] = settings
            self._write(current)
            return settings

    def remove(self, model: str) -> None:
        with self._lock:
            current = dict(self._read())
            if current.pop(model, None) is not None:
                self._write(current)

    # ------------------------------------------------------------ file

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._complain(f"cannot read {FILE_NAME}: {exc.strerror or exc}")
            return None
        return (st.st_mtime_ns, st.st_size)

    def _read(self) -> dict[str, ModelSettings]:
        stamp = self._stamp()
        if stamp is None:
            self._cache = None
            return {}
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        self.problem = ""
        models = self._parse()
        self._cache = (stamp, models)
        return models

    def _parse(self) -> dict[str, ModelSettings]:
        try:
            raw = self.path.read_bytes()
            data = json.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self._complain(f"{FILE_NAME} is not valid JSON ({type(exc).__name__})")
            return {}
        if (
            not isinstance(data, dict)
            or data.get("version") != VERSION
            or not isinstance(data.get("models"), dict)
        ):
            self._complain(f'{FILE_NAME} is not a version {VERSION} settings file ({{"models"}})')
            return {}
        out: dict[str, ModelSettings] = {}
        for name, entry in data["models"].items():
            try:
                out[str(name)] = ModelSettings.from_json(entry)
            except (InvalidArgument, TypeError) as exc:
                self._complain(f"the settings of {str(name)[:80]!r} are ignored: {exc}")
        return out

    def _complain(self, message: str) -> None:
        full = (
            f"{message}; using defaults for what it holds "
            "(`edged config MODEL ...` rewrites it, or delete the file)"
        )
        self.problem = full
        log.warning("%s (%s)", full, self.path)

    def _write(self, models: dict[str, ModelSettings]) -> None:
        if self.problem and self.path.exists():
            # keep what could not be read for the user to look at
            try:
                os.replace(self.path, self.path.with_name(FILE_NAME + ".bad"))
            except OSError as exc:
                raise storage_error(exc, "setting aside the unreadable settings file") from exc
        body = {
            "version": VERSION,
            "models": {k: models[k].to_json() for k in sorted(models)},
        }
        data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data, self.path.parent)
        except OSError as exc:
            raise storage_error(exc, "saving the model settings") from exc
        self.problem = ""
        self._cache = None
