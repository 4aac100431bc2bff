"""Manifests: what a model tag consists of, stored as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edged.daemon.errors import EdgedError, FailedPrecondition

from .digest import parse_digest
from .names import ModelRef, validate_name, validate_tag

SCHEMA_VERSION = 1
ROLE_MODEL = "model"
MAX_MANIFEST_BYTES = 1 << 20


class CorruptManifest(FailedPrecondition):
    """A manifest on disk cannot be read back."""


@dataclass(frozen=True)
class ManifestFile:
    role: str
    digest: str
    size: int
    filename: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "digest": self.digest,
            "size": self.size,
            "filename": self.filename,
        }

    @classmethod
    def from_dict(cls, data: object) -> ManifestFile:
        d = _mapping(data, "a file entry")
        size = _get_int(d, "size")
        if size < 0:
            raise CorruptManifest("corrupt manifest: a file has a negative size")
        try:
            digest = parse_digest(_get_str(d, "digest"))
        except EdgedError as exc:
            raise CorruptManifest(f"corrupt manifest: {exc}") from exc
        return cls(_get_str(d, "role"), digest, size, _get_str(d, "filename"))


@dataclass(frozen=True)
class Manifest:
    name: str
    tag: str
    format: str
    files: tuple[ManifestFile, ...]
    source: str
    created_unix_ms: int
    architecture: str = ""
    quantization: str = ""
    parameters: int = 0
    context_length: int = 0
    has_chat_template: bool = False
    # Defaults a request may override (like an Ollama Modelfile's SYSTEM and
    # PARAMETER): the system prompt used when a chat has none, and sampling
    # values keyed by edged.v1.SamplingParams field names.
    system_prompt: str = ""
    sampling: tuple[tuple[str, float], ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.tag)

    @property
    def primary(self) -> ManifestFile:
        """The file with role "model"."""
        for f in self.files:
            if f.role == ROLE_MODEL:
                return f
        raise CorruptManifest(f"manifest of {self.ref} has no model file")

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(f.digest for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "tag": self.tag,
            "format": self.format,
            "files": [f.to_dict() for f in self.files],
            "source": self.source,
            "created_unix_ms": self.created_unix_ms,
            "architecture": self.architecture,
            "quantization": self.quantization,
            "parameters": self.parameters,
            "context_length": self.context_length,
            "has_chat_template": self.has_chat_template,
            "system_prompt": self.system_prompt,
            "sampling": dict(self.sampling),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and validate; raise :class:`CorruptManifest` on any problem."""
        if len(text) > MAX_MANIFEST_BYTES:
            raise CorruptManifest("corrupt manifest: it is too large")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise CorruptManifest("corrupt manifest: it is not valid JSON") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        d = _mapping(data, "the manifest")
        version = _get_int(d, "schema_version")
        if version != SCHEMA_VERSION:
            raise CorruptManifest(
                f"unsupported manifest schema_version {version} (this edged reads "
                f"{SCHEMA_VERSION}); upgrade edged or pull the model again"
            )
        files_raw = d.get("files")
        if not isinstance(files_raw, list) or not files_raw:
            raise CorruptManifest("corrupt manifest: 'files' must be a non-empty list")
        try:
            name = validate_name(_get_str(d, "name"))
            tag = validate_tag(_get_str(d, "tag"))
        except CorruptManifest:
            raise
        except EdgedError as exc:
            raise CorruptManifest(f"corrupt manifest: {exc}") from exc
        manifest = cls(
            name=name,
            tag=tag,
            format=_get_str(d, "format"),
            files=tuple(ManifestFile.from_dict(f) for f in files_raw),
            source=_get_str(d, "source"),
            created_unix_ms=_get_int(d, "created_unix_ms"),
            architecture=_get_str(d, "architecture", ""),
            quantization=_get_str(d, "quantization", ""),
            parameters=_get_int(d, "parameters", 0),
            context_length=_get_int(d, "context_length", 0),
            has_chat_template=_get_bool(d, "has_chat_template", False),
            system_prompt=_get_str(d, "system_prompt", ""),
            sampling=_sampling(d.get("sampling", {})),
        )
        manifest.primary  # noqa: B018 - validates that a model file is present
        return manifest


def _mapping(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CorruptManifest(f"corrupt manifest: {what} is not a JSON object")
    return data


def _get_str(d: dict[str, Any], key: str, default: str | None = None) -> str:
    value = _present(d, key, default)
    if not isinstance(value, str):
        raise CorruptManifest(f"corrupt manifest: '{key}' must be a string")
    return value


def _get_int(d: dict[str, Any], key: str, default: int | None = None) -> int:
    value = _present(d, key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CorruptManifest(f"corrupt manifest: '{key}' must be an integer")
    return value


def _get_bool(d: dict[str, Any], key: str, default: bool | None = None) -> bool:
    value = _present(d, key, default)
    if not isinstance(value, bool):
        raise CorruptManifest(f"corrupt manifest: '{key}' must be true or false")
    return value


def _present(d: dict[str, Any], key: str, default: object) -> object:
    value = d.get(key, default)
    if value is None:
        raise CorruptManifest(f"corrupt manifest: '{key}' is missing")
    return value


SAMPLING_KEYS = frozenset(
    {"max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty"}
)


def _sampling(raw: object) -> tuple[tuple[str, float], ...]:
    d = _mapping(raw, "'sampling'")
    out: list[tuple[str, float]] = []
    for key, value in sorted(d.items()):
        if key not in SAMPLING_KEYS:
            raise CorruptManifest(f"corrupt manifest: unknown sampling default {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CorruptManifest(f"corrupt manifest: sampling default {key!r} is not a number")
        out.append((key, float(value)))
    return tuple(out)
