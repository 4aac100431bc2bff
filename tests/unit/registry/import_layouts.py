"""Other programs' model folders in their real layouts, for the `edged import --from`
tests: an Ollama store, an LM Studio models folder, a Hugging Face hub cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from edged.models_registry import Store

from .conftest import build_gguf

OLLAMA_MEDIA = "application/vnd.ollama.image."


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hex(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def place(src: Path, dst: Path, *, link: bool = True) -> Path:
    """Put ``src`` at ``dst``: a hard link (same file system) or a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.link(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


class OllamaStore:
    """``manifests/<registry>/<namespace>/<name>/<tag>`` and ``blobs/sha256-<hex>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob(self, data: bytes) -> dict[str, Any]:
        """A blob holding ``data``; returns its layer (without the media type)."""
        hexd = sha256_hex(data)
        path = self.root / "blobs" / f"sha256-{hexd}"
        if not path.exists():
            path.write_bytes(data)
        return {"digest": f"sha256:{hexd}", "size": len(data)}

    def gguf(self, src: Path, *, link: bool = True, hexd: str | None = None) -> dict[str, Any]:
        """``src`` as a blob (named by its sha256, or ``hexd``); returns its layer."""
        hexd = hexd or file_hex(src)
        path = self.root / "blobs" / f"sha256-{hexd}"
        if not path.exists():
            place(src, path, link=link)
        return {
            "mediaType": OLLAMA_MEDIA + "model",
            "digest": f"sha256:{hexd}",
            "size": src.stat().st_size,
        }

    def layer(self, kind: str, data: bytes) -> dict[str, Any]:
        return {"mediaType": OLLAMA_MEDIA + kind, **self.blob(data)}

    def manifest(
        self,
        name: str,
        tag: str,
        layers: list[dict[str, Any]] | None = None,
        *,
        namespace: str = "library",
        registry: str = "registry.ollama.ai",
        raw: bytes | None = None,
    ) -> Path:
        path = self.root / "manifests" / registry / namespace / name / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        config = self.blob(b'{"model_format":"gguf","model_family":"llama"}')
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
            "layers": layers or [],
        }
        path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
        return path

    def model(
        self,
        name: str,
        src: Path,
        *,
        tag: str = "latest",
        system: str | None = None,
        params: dict[str, Any] | None = None,
        template: str | None = None,
        extra: list[dict[str, Any]] | None = None,
        link: bool = True,
        **where: str,
    ) -> Path:
        """A model as `ollama pull` or `ollama create` leaves it."""
        layers = [self.gguf(src, link=link)]
        if template is not None:
            layers.append(self.layer("template", template.encode()))
        if system is not None:
            layers.append(self.layer("system", system.encode()))
        if params is not None:
            layers.append(self.layer("params", json.dumps(params).encode()))
        layers += extra or []
        return self.manifest(name, tag, layers, **where)


def hf_repo(
    cache: Path,
    repo_id: str,
    files: dict[str, Path],
    *,
    commit: str = "a" * 40,
    ref: str | None = "main",
    link: bool = True,
) -> Path:
    """``models--owner--repo`` with ``files`` (path in repo -> source file) in the
    snapshot of ``commit``, each a symlink into ``../../blobs/<sha256>``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs = repo / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for rel, src in files.items():
        hexd = file_hex(src)
        if not (blobs / hexd).exists():
            place(src, blobs / hexd, link=link)
        entry = snapshot / rel
        entry.parent.mkdir(parents=True, exist_ok=True)
        depth = len(Path(rel).parts) + 1  # snapshots/<commit>/<path parts...>
        entry.symlink_to(Path(*[".."] * depth, "blobs", hexd))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return repo


def store_state(store: Store) -> dict[str, str]:
    """The store's files but its lock files: what a refused import must not change."""
    out: dict[str, str] = {}
    for path in sorted(store.root.rglob("*")):
        rel = path.relative_to(store.root).as_posix()
        if rel.startswith("locks/") or rel == "locks":
            continue
        out[rel] = "dir" if path.is_dir() else f"{oct(path.lstat().st_mode)} {file_hex(path)}"
    return out


def copy_real(smollm2_pulled: tuple[Store, Any, Any, Any], folder: Path) -> Path:
    """The real SmolLM2 GGUF as another program keeps it: a file of its own (mode
    0640, so a chmod to edged's 0444 would show), which layouts hard-link."""
    store, _ref, manifest, _statuses = smollm2_pulled
    path = folder / "smollm2.gguf"
    shutil.copyfile(store.blob_path(manifest.primary.digest), path)
    path.chmod(0o640)
    return path


def write_tiny(folder: Path) -> Path:
    """A small valid GGUF file (the registry tests' writer)."""
    path = folder / "src" / "tiny.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_gguf())
    return path
