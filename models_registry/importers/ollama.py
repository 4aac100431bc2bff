"""Find the models in an Ollama store (``$OLLAMA_MODELS``, else ``~/.ollama/models``).

Layout: ``manifests/<registry>/<namespace>/<name>/<tag>`` (a Docker-distribution
style JSON manifest whose ``layers`` are ``{mediaType, digest, size}``) and
``blobs/sha256-<hex>``. The layer of type ``application/vnd.ollama.image.model``
is the GGUF file; the others map onto edged as follows:

- ``system``: the model's default system prompt;
- ``params``: its defaults (model_params.from_mapping): sampling values and stop
  strings into the manifest, ``num_ctx`` into the per-model settings; names edged
  has no use for are named in a note, and so are values it refuses (each such
  parameter is left out; the model is still imported);
- ``template``: not used (a Go template; edged applies the GGUF's own chat
  template), said in a note; ``projector`` and ``messages``: not imported, a note;
  ``license``: not imported;
- ``adapter`` (a LoRA): the model is refused, edged cannot apply one.

Names: ``registry.ollama.ai/library/NAME:TAG`` becomes ``NAME:TAG``; any other
namespace or registry becomes ``NAMESPACE/NAME:TAG`` (so ``hf.co/owner/repo:TAG``
becomes ``owner/repo:TAG``), each part lowercased and sanitized, the tag kept
(characters a tag cannot hold become ``-``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from edged.common.errors import DigestMismatch, EdgedError, InvalidArgument, NotFound

from .. import model_params
from ..digest import blob_name, digest_from_hex, new_hasher, parse_digest
from ..names import ModelRef, sanitize_name
from .common import (
    MAX_SYSTEM_CHARS,
    MAX_TEXT_BYTES,
    Found,
    odd_name,
    read_small,
    resolve_within,
    safe_tag,
    show,
)

MEDIA = "application/vnd.ollama.image."
MODEL, SYSTEM, PARAMS, TEMPLATE = (MEDIA + k for k in ("model", "system", "params", "template"))
LICENSE, PROJECTOR, ADAPTER, MESSAGES = (
    MEDIA + k for k in ("license", "projector", "adapter", "messages")
)
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
MAX_LAYERS = 64

_NOTES = {
    TEMPLATE: "Ollama's chat template (a Go template) is not used: edged applies the "
    "chat template in the GGUF file",
    PROJECTOR: "the vision projector layer is not imported (edged runs text models only)",
    MESSAGES: "the example messages layer is not imported",
}


def default_root(env: Mapping[str, str], home: Path) -> Path:
    """``$OLLAMA_MODELS``, else ``~/.ollama/models``."""
    raw = env.get("OLLAMA_MODELS")
    return Path(raw).expanduser() if raw else home / ".ollama" / "models"


def scan(root: Path) -> list[Found]:
    """Every model the store's manifests name, each ready or refused with the reason."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        raise NotFound(
            f"no Ollama models at {show(str(root))} (no manifests/ folder there); "
            "give the folder with --path or set OLLAMA_MODELS"
        )
    return [_read(root, parts, path) for parts, path in _manifest_files(manifests)]


@dataclass(frozen=True)
class _Layer:
    media: str
    digest: str
    size: int


def _manifest_files(manifests: Path) -> Iterator[tuple[tuple[str, ...], Path]]:
    """(registry, namespace, name, tag) and the file of every manifest; folders are
    not followed through symlinks."""
    for registry in _dirs(manifests):
        for namespace in _dirs(registry):
            for name in _dirs(namespace):
                for tag in sorted(name.iterdir()):
                    if tag.name.startswith(".") or (tag.is_dir() and not tag.is_symlink()):
                        continue
                    yield (registry.name, namespace.name, name.name, tag.name), tag


def _dirs(parent: Path) -> list[Path]:
    return sorted(
        p
        for p in parent.iterdir()
        if not p.name.startswith(".") and p.is_dir() and not p.is_symlink()
    )


def _read(root: Path, parts: tuple[str, ...], path: Path) -> Found:
    registry, namespace, name, tag = parts
    shown = show(f"{registry}/{namespace}/{name}:{tag}")
    found = Found(
        None,
        shown,
        f"ollama:{shown}",
        aliases=(name, f"{namespace}/{name}", f"{registry}/{namespace}/{name}"),
        other_tag=tag,
    )
    if any(odd_name(p) for p in parts):
        return found.refuse("odd characters in its name")
    if path.is_symlink():
        return found.refuse("its manifest is a symbolic link")
    try:
        found.ref = edged_ref(registry, namespace, name, tag)
        found.filename = f"{found.ref.name.rsplit('/', 1)[-1]}.gguf"
        _fill(found, root, _layers(read_small(path, MAX_TEXT_BYTES, "its manifest")))
    except EdgedError as exc:  # InvalidArgument, DigestMismatch
        return found.refuse(str(exc))
    return found


def edged_ref(registry: str, namespace: str, name: str, tag: str) -> ModelRef:
    """The edged name of an Ollama model (see the module's docstring)."""
    model = sanitize_name(name, fallback="")
    if not model:
        raise InvalidArgument(f"{name!r} cannot be made into an edged model name")
    if (registry, namespace) != (DEFAULT_REGISTRY, DEFAULT_NAMESPACE):
        owner = sanitize_name(namespace, fallback="")
        if not owner:
            raise InvalidArgument(f"{namespace!r} cannot be made into an edged model name")
        model = f"{owner}/{model}"
    return ModelRef(model, safe_tag(tag))


def _layers(data: bytes) -> list[_Layer]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("its manifest is not JSON") from exc
    raw = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or not raw or len(raw) > MAX_LAYERS:
        raise InvalidArgument("its manifest is not an Ollama manifest (no list of layers)")
    layers = []
    for item in raw:
        if not isinstance(item, dict):
            raise InvalidArgument("its manifest has a layer that is not an object")
        media, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
        if (
            not isinstance(media, str)
            or not isinstance(digest, str)
            or not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
        ):
            raise InvalidArgument("its manifest has a layer without a media type, digest or size")
        try:
            layers.append(_Layer(media, parse_digest(digest), size))
        except InvalidArgument as exc:
            raise InvalidArgument(f"its manifest names a bad digest: {exc}") from exc
    return layers


def _fill(found: Found, root: Path, layers: list[_Layer]) -> None:
    """Check the layers and put what they say into ``found``; raises InvalidArgument."""
    if any(layer.media == ADAPTER for layer in layers):
        raise InvalidArgument(
            "it has a LoRA adapter layer, which edged cannot apply (import the merged model)"
        )
    models = [layer for layer in layers if layer.media == MODEL]
    if len(models) != 1:
        raise InvalidArgument(f"its manifest has {len(models)} model layers, not one")
    (model,) = models
    what = f"its model file {blob_name(model.digest)}"
    found.path = resolve_within(root / "blobs" / blob_name(model.digest), root, what)
    actual = found.path.stat().st_size
    if actual != model.size:
        raise DigestMismatch(
            f"{what} is {actual} bytes, but the manifest says {model.size} (refused unhashed)"
        )
    found.expected, found.size = model.digest, model.size
    for layer in layers:
        if layer.media == SYSTEM:
            _system(found, _text(root, layer, "system"))
        elif layer.media == PARAMS:
            _params(found, _text(root, layer, "params"))
        elif layer.media in _NOTES:
            found.notes.append(_NOTES[layer.media])
        elif layer.media not in (MODEL, LICENSE):
            found.notes.append(f"a layer of type {show(layer.media, 80)} is not imported")


def _text(root: Path, layer: _Layer, what: str) -> bytes:
    """A small layer's bytes, checked against its size and digest."""
    if layer.size > MAX_TEXT_BYTES:
        raise InvalidArgument(f"its {what} layer is {layer.size} bytes (at most {MAX_TEXT_BYTES})")
    where = f"its {what} layer {blob_name(layer.digest)}"
    path = resolve_within(root / "blobs" / blob_name(layer.digest), root, where)
    data = read_small(path, MAX_TEXT_BYTES, where)
    hasher = new_hasher()
    hasher.update(data)
    if len(data) != layer.size or digest_from_hex(hasher.hexdigest()) != layer.digest:
        raise DigestMismatch(f"{where} does not match its size and digest in the manifest")
    return data


def _system(found: Found, data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("its system layer is not UTF-8 text") from exc
    if len(text) > MAX_SYSTEM_CHARS:
        raise InvalidArgument(f"its system prompt is over {MAX_SYSTEM_CHARS} characters")
    found.system_prompt = text


def _params(found: Found, data: bytes) -> None:
    try:
        values = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("its params layer is not JSON") from exc
    if not isinstance(values, dict):
        raise InvalidArgument("its params layer is not a JSON object")
    good: dict[str, object] = {}
    bad: list[str] = []
    for key, value in values.items():
        try:
            model_params.from_mapping({key: value})
        except InvalidArgument as exc:
            bad.append(f"{show(str(key), 64)} ({exc})")
            continue
        good[key] = value
    params = model_params.from_mapping(good)
    found.sampling, found.stop = params.sampling, params.stop
    found.context_length = params.context_length
    if params.ignored:
        names = ", ".join(show(n, 64) for n in params.ignored)
        found.notes.append(f"Ollama parameters edged does not use, ignored: {names}")
    if bad:
        found.notes.append("parameters with values edged refuses, ignored: " + "; ".join(bad))
