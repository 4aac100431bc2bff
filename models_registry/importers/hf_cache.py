"""Find the GGUF files in the Hugging Face hub cache (``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).

Layout: ``models--owner--repo/{blobs/<hash>, refs/<branch>, snapshots/<commit>/<path>}``;
a snapshot file is a symlink into ``../../blobs/``, and an LFS blob is named by its
sha256, which becomes the digest the file must hash to. A file is named in edged as
the ``hf://`` pull of it would be (the sanitized file name, tagged ``latest``), and
its source is recorded in the same form: ``hf://owner/repo@<commit>/path/file.gguf``.
When several snapshots hold the same path, the one ``refs/main`` points to wins,
then another branch's, then the newest.

The cache is walked here rather than with ``huggingface_hub.scan_cache_dir``, which
resolves every symlink without asking where it leads and gives up on a whole repo
at its first odd file: here a snapshot file that resolves outside its repo's folder
refuses that file only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from edged.common.errors import EdgedError, InvalidArgument, NotFound

from ..hub_file import HubFile
from ..hub_source import HubRepo, parse_repo
from ..relpath import validate_relative_path
from .common import (
    Found,
    file_ref,
    gguf_file_skip,
    odd_name,
    read_small,
    resolve_within,
    show,
    split_part,
)

PREFIX = "models--"
SUFFIX = ".gguf"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_DEPTH = 8


def default_root(env: Mapping[str, str], home: Path) -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return home / ".cache" / "huggingface" / "hub"


def scan(root: Path) -> list[Found]:
    """Every ``.gguf`` file in the cached model repos."""
    if not root.is_dir():
        raise NotFound(
            f"no Hugging Face cache at {show(str(root))}; give it with --path or set HF_HUB_CACHE"
        )
    out: list[Found] = []
    for repo_dir in sorted(root.iterdir()):
        if repo_dir.name.startswith(PREFIX) and repo_dir.is_dir() and not repo_dir.is_symlink():
            out.extend(_repo(repo_dir))
    return out


def _repo(repo_dir: Path) -> Iterator[Found]:
    shown = show(repo_dir.name)
    parts = repo_dir.name[len(PREFIX) :].split("--")
    try:
        if len(parts) != 2 or any(odd_name(p) for p in parts):
            raise InvalidArgument("not a models--owner--repo folder")
        repo_id = parse_repo("/".join(parts)).repo_id
    except EdgedError as exc:
        yield Found(None, shown, f"hf-cache:{shown}", problem=str(exc))
        return
    seen: set[str] = set()
    for commit in _commits(repo_dir):
        for rel, entry in _gguf_files(repo_dir / "snapshots" / commit):
            if rel not in seen:
                seen.add(rel)
                yield _found(repo_dir, repo_id, commit, rel, entry)


def _commits(repo_dir: Path) -> list[str]:
    """The snapshots, in the order they win: refs/main's, other refs', newest first."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir() or snapshots.is_symlink():
        return []
    found = {
        p.name: p.lstat().st_mtime
        for p in snapshots.iterdir()
        if _COMMIT.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
    }
    refs = _refs(repo_dir)
    main = refs.get("main")

    def rank(commit: str) -> tuple[int, float]:
        if commit == main:
            return (0, 0.0)
        return (1 if commit in refs.values() else 2, -found[commit])

    return sorted(found, key=rank)


def _refs(repo_dir: Path) -> dict[str, str]:
    """Branch -> commit, from ``refs/`` (one level; odd files are ignored)."""
    out: dict[str, str] = {}
    refs = repo_dir / "refs"
    if not refs.is_dir() or refs.is_symlink():
        return out
    for ref in refs.iterdir():
        try:
            text = read_small(ref, 256, "a ref").decode("ascii").strip()
        except (InvalidArgument, UnicodeDecodeError):
            continue
        if _COMMIT.fullmatch(text):
            out[ref.name] = text
    return out


def _gguf_files(snapshot: Path) -> Iterator[tuple[str, Path]]:
    """(path in the repo, entry) of every ``.gguf`` file in a snapshot; folders are
    not followed through symlinks."""
    for dirpath, dirnames, filenames in os.walk(snapshot):
        here = Path(dirpath)
        depth = len(here.relative_to(snapshot).parts)
        dirnames[:] = sorted(d for d in dirnames if depth < _MAX_DEPTH and not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(SUFFIX) and split_part(name) <= 1:
                entry = here / name
                yield entry.relative_to(snapshot).as_posix(), entry


def _found(repo_dir: Path, repo_id: str, commit: str, rel: str, entry: Path) -> Found:
    name = rel.rsplit("/", 1)[-1]
    shown = show(f"{repo_id}/{rel}")
    found = Found(
        None,
        shown,
        f"hf://{repo_id}@{commit}/{show(rel)}",
        filename=show(name),
        aliases=(repo_id, repo_id.split("/", 1)[1], name, name[: -len(SUFFIX)]),
    )
    try:
        validate_relative_path(rel)
    except InvalidArgument as exc:
        return found.refuse(str(exc))
    found.source = str(HubFile(HubRepo(repo_id, commit), rel))
    found.skip = gguf_file_skip(name)
    if found.skip:
        return found
    found.ref = file_ref(name)
    try:
        found.path = resolve_within(entry, repo_dir, "the file")
    except InvalidArgument as exc:
        return found.refuse(f"{exc} (the repo's folder in the cache)")
    if found.path.parent == (repo_dir / "blobs").resolve() and _SHA256.fullmatch(found.path.name):
        found.expected = "sha256:" + found.path.name
    found.size = found.path.stat().st_size
    return found
