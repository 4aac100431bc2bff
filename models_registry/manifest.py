"""Manifests: what a model tag consists of, stored as JSON.

A model (``name:tag``) has one or more *variants*: the same model in one format,
for example the GGUF file a pull fetched and an ONNX Runtime GenAI folder
converted from it. Each variant lists its files with their digest, size and
relative path inside the variant's folder.

Schema versions: 2 (written) holds ``variants``; 1 (still read) held one GGUF
file in ``files`` and reads as a single variant named ``"gguf"``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

from edged.common.errors import EdgedError, FailedPrecondition, InvalidArgument
from edged.common.model_facts import FORMAT_GGUF, FORMAT_ONNX
from edged.common.onnx_folder import GENAI_CONFIG

from .digest import digest_from_hex, new_hasher, parse_digest
from .names import ModelRef, validate_name, validate_tag
from .relpath import safe_file_name, validate_relative_path, validate_variant_paths

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
ROLE_MODEL = "model"  # a variant's main file: the GGUF file, an ONNX folder's genai_config.json
ROLE_FILE = "file"
GGUF_VARIANT = "gguf"  # the name of the variant a GGUF pull makes
MAX_MANIFEST_BYTES = 1 << 20
MAX_VARIANTS = 32
MAX_FILES_PER_VARIANT = 1024

_T = TypeVar("_T")
_WORD = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class CorruptManifest(FailedPrecondition):
    """A manifest on disk cannot be read back."""


@dataclass(frozen=True)
class ManifestFile:
    """One file of a variant: its role, digest, size and path inside the variant."""

    role: str
    digest: str
    size: int
    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", parse_digest(self.digest))
        if not isinstance(self.role, str) or _WORD.fullmatch(self.role) is None:
            raise InvalidArgument(f"invalid file role {self.role!r} in a model")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise InvalidArgument("a file in a model has an invalid size")
        validate_relative_path(self.path)

    @property
    def filename(self) -> str:
        """The file's name without its folders (for display)."""
        return PurePosixPath(self.path).name

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "digest": self.digest, "size": self.size, "path": self.path}

    @classmethod
    def from_dict(cls, data: object) -> ManifestFile:
        d = _mapping(data, "a file entry")
        return _checked(
            lambda: cls(
                _get_str(d, "role"), _get_str(d, "digest"), _get_int(d, "size"), _get_str(d, "path")
            )
        )


@dataclass(frozen=True)
class Variant:
    """The model in one format: ``name`` ("gguf", "onnx-int4-cpu", ...), ``format``
    ("gguf" or "onnx"), ``quantization``, ``size`` in bytes, its ``files`` and where
    it came from (``source``: the pull source, or "converted from gguf sha256:...").

    A GGUF variant is one file; an ONNX variant is a folder with genai_config.json.
    """

    name: str
    format: str
    quantization: str
    size: int
    files: tuple[ManifestFile, ...]
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        if not isinstance(self.name, str) or _WORD.fullmatch(self.name) is None:
            raise InvalidArgument(
                f"invalid variant name {self.name!r}: use at most 64 of a-z, 0-9, '.', '_', '-'"
            )
        if not isinstance(self.format, str) or _WORD.fullmatch(self.format) is None:
            raise InvalidArgument(f"invalid format {self.format!r} of variant {self.name!r}")
        if not self.files or len(self.files) > MAX_FILES_PER_VARIANT:
            raise InvalidArgument(
                f"variant {self.name!r} must have between 1 and {MAX_FILES_PER_VARIANT} files"
            )
        validate_variant_paths(f.path for f in self.files)
        if self.size != sum(f.size for f in self.files):
            raise InvalidArgument(f"the size of variant {self.name!r} is not the sum of its files")
        if sum(f.role == ROLE_MODEL for f in self.files) != 1:
            raise InvalidArgument(f"variant {self.name!r} must have exactly one main file")
        if self.format == FORMAT_GGUF and len(self.files) != 1:
            raise InvalidArgument(f"the GGUF variant {self.name!r} must be a single file")
        if self.format == FORMAT_ONNX and self.main.path != GENAI_CONFIG:
            raise InvalidArgument(
                f"the ONNX variant {self.name!r} must have genai_config.json as its main file"
            )

    @classmethod
    def of(
        cls,
        name: str,
        format: str,
        files: tuple[ManifestFile, ...] | list[ManifestFile],
        *,
        quantization: str = "",
        source: str = "",
    ) -> Variant:
        """A variant whose ``size`` is the sum of its files' sizes."""
        files = tuple(files)
        return cls(name, format, quantization, sum(f.size for f in files), files, source)

    @property
    def main(self) -> ManifestFile:
        """The file with role "model"."""
        return next(f for f in self.files if f.role == ROLE_MODEL)

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(f.digest for f in self.files)

    @property
    def digest(self) -> str:
        """Identifies the variant's content: a single file's own digest, else the sha256
        of its sorted (path, digest) list. Folder views are named by it."""
        if len(self.files) == 1:
            return self.files[0].digest
        hasher = new_hasher()
        for f in sorted(self.files, key=lambda f: f.path):
            hasher.update(f"{f.path}\0{f.digest}\n".encode())
        return digest_from_hex(hasher.hexdigest())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "quantization": self.quantization,
            "size": self.size,
            "source": self.source,
            "files": [f.to_dict() for f in self.files],
        }

    @classmethod
    def from_dict(cls, data: object) -> Variant:
        d = _mapping(data, "a variant")
        files = tuple(ManifestFile.from_dict(f) for f in _get_list(d, "files"))
        return _checked(
            lambda: cls(
                name=_get_str(d, "name"),
                format=_get_str(d, "format"),
                quantization=_get_str(d, "quantization", ""),
                size=_get_int(d, "size"),
                files=files,
                source=_get_str(d, "source", ""),
            )
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    tag: str
    variants: tuple[Variant, ...]
    source: str  # where the model first came from (each variant has its own too)
    created_unix_ms: int
    architecture: str = ""
    quantization: str = ""  # of the primary file
    parameters: int = 0
    context_length: int = 0
    has_chat_template: bool = False
    # Defaults a request may override (like an Ollama Modelfile's SYSTEM and
    # PARAMETER): the system prompt used when a chat has none, and sampling
    # values keyed by edged.v1.SamplingParams field names.
    system_prompt: str = ""
    sampling: tuple[tuple[str, float], ...] = ()
    stop: tuple[str, ...] = ()  # stop strings used when a request has none

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        if not self.variants or len(self.variants) > MAX_VARIANTS:
            raise InvalidArgument(f"a model must have between 1 and {MAX_VARIANTS} variants")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise InvalidArgument("a model has two variants with the same name")

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.tag)

    @property
    def primary(self) -> ManifestFile:
        """The GGUF model file when there is one, else the first variant's main file."""
        return self._primary_variant.main

    @property
    def format(self) -> str:
        """The format of the primary file's variant."""
        return self._primary_variant.format

    @property
    def files(self) -> tuple[ManifestFile, ...]:
        """Every file of every variant."""
        return tuple(f for v in self.variants for f in v.files)

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(f.digest for f in self.files)

    @property
    def size(self) -> int:
        """Bytes on disk: a blob shared by two variants counts once."""
        return sum({f.digest: f.size for f in self.files}.values())

    def variant(self, format: str) -> Variant | None:
        """The first variant in ``format`` ("gguf", "onnx"), or None."""
        return next((v for v in self.variants if v.format == format), None)

    def variant_named(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def with_variant(self, variant: Variant) -> Manifest:
        """This manifest with ``variant`` added, replacing a variant of the same name."""
        kept = tuple(variant if v.name == variant.name else v for v in self.variants)
        if variant not in kept:
            kept += (variant,)
        return dataclasses.replace(self, variants=kept)

    @property
    def _primary_variant(self) -> Variant:
        return self.variant(FORMAT_GGUF) or self.variants[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "tag": self.tag,
            "variants": [v.to_dict() for v in self.variants],
            "source": self.source,
            "created_unix_ms": self.created_unix_ms,
            "architecture": self.architecture,
            "quantization": self.quantization,
            "parameters": self.parameters,
            "context_length": self.context_length,
            "has_chat_template": self.has_chat_template,
            "system_prompt": self.system_prompt,
            "sampling": dict(self.sampling),
            # only when set: manifests without it stay byte-identical to older edged's
            **({"stop": list(self.stop)} if self.stop else {}),
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
        if version not in READABLE_VERSIONS:
            raise CorruptManifest(
                f"unsupported manifest schema_version {version} (this edged reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade edged or pull the model again"
            )
        variants = _v1_variants(d) if version == 1 else _v2_variants(d)
        name = _get_str(d, "name")
        tag = _get_str(d, "tag")
        return _checked(
            lambda: cls(
                name=validate_name(name),
                tag=validate_tag(tag),
                variants=variants,
                source=_get_str(d, "source"),
                created_unix_ms=_get_int(d, "created_unix_ms"),
                architecture=_get_str(d, "architecture", ""),
                quantization=_get_str(d, "quantization", ""),
                parameters=_get_int(d, "parameters", 0),
                context_length=_get_int(d, "context_length", 0),
                has_chat_template=_get_bool(d, "has_chat_template", False),
                system_prompt=_get_str(d, "system_prompt", ""),
                sampling=_sampling(d.get("sampling", {})),
                stop=_stop(d.get("stop", [])),
            )
        )


def _v2_variants(d: dict[str, Any]) -> tuple[Variant, ...]:
    raw = _get_list(d, "variants")
    if len(raw) > MAX_VARIANTS:
        raise CorruptManifest("corrupt manifest: too many variants")
    return tuple(Variant.from_dict(v) for v in raw)


def _v1_variants(d: dict[str, Any]) -> tuple[Variant, ...]:
    """Schema 1: ``format`` and ``files`` (role, digest, size, ``filename``) at the top."""
    files = [_v1_file(raw) for raw in _get_list(d, "files")]
    variant = _checked(
        lambda: Variant.of(
            GGUF_VARIANT,
            _get_str(d, "format"),
            files,
            quantization=_get_str(d, "quantization", ""),
            source=_get_str(d, "source"),
        )
    )
    return (variant,)


def _v1_file(raw: object) -> ManifestFile:
    f = _mapping(raw, "a file entry")
    path = safe_file_name(_get_str(f, "filename"), "model.gguf")
    return _checked(
        lambda: ManifestFile(_get_str(f, "role"), _get_str(f, "digest"), _get_int(f, "size"), path)
    )


def _checked(make: Callable[[], _T]) -> _T:
    """Call ``make()``; an edged validation error becomes CorruptManifest."""
    try:
        return make()
    except CorruptManifest:
        raise
    except EdgedError as exc:
        raise CorruptManifest(f"corrupt manifest: {exc}") from exc


def _mapping(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CorruptManifest(f"corrupt manifest: {what} is not a JSON object")
    return data


def _get_list(d: dict[str, Any], key: str) -> list[Any]:
    value = d.get(key)
    if not isinstance(value, list) or not value:
        raise CorruptManifest(f"corrupt manifest: '{key}' must be a non-empty list")
    return value


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


MAX_STOP = 16  # as SamplingParams.stop
MAX_STOP_CHARS = 256


def check_stop(values: object) -> tuple[str, ...]:
    """Default stop strings: up to 16 non-empty strings; raises InvalidArgument."""
    if not isinstance(values, (list, tuple)):
        raise InvalidArgument("stop strings must be a list")
    if len(values) > MAX_STOP:
        raise InvalidArgument(f"at most {MAX_STOP} stop strings, got {len(values)}")
    for value in values:
        if not isinstance(value, str) or not value or len(value) > MAX_STOP_CHARS:
            raise InvalidArgument(
                f"a stop string must be a non-empty string of at most {MAX_STOP_CHARS} characters"
            )
    return tuple(dict.fromkeys(values))


def _stop(raw: object) -> tuple[str, ...]:
    try:
        return check_stop(raw)
    except InvalidArgument as exc:
        raise CorruptManifest(f"corrupt manifest: {exc}") from exc


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
