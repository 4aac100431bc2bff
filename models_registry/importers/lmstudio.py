"""Find the GGUF files in LM Studio's models folder (``~/.lmstudio/models``, and the
older ``~/.cache/lm-studio/models``), laid out ``<publisher>/<model-folder>/<file>.gguf``.

Each file is named in edged as an ``hf://`` pull of it would be: the sanitized file
name, tagged ``latest`` (``SmolLM2-135M-Instruct-Q4_1.gguf`` becomes
``smollm2-135m-instruct-q4_1:latest``). LM Studio records no digest, so the file is
hashed on the way in. A symlinked file must resolve inside the folder scanned; a
symlinked folder is not followed (give its target with ``--path``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from edged.common.errors import InvalidArgument, NotFound

from .common import Found, file_ref, gguf_file_skip, odd_name, resolve_within, show, split_part

SUFFIX = ".gguf"


def default_roots(home: Path) -> list[Path]:
    """Where LM Studio keeps its models, newest layout first."""
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def scan(roots: list[Path]) -> list[Found]:
    """Every ``.gguf`` file under the folders of ``roots`` that exist."""
    present = [r for r in roots if r.is_dir()]
    if not present:
        where = " or ".join(show(str(r)) for r in roots)
        raise NotFound(f"no LM Studio models folder at {where}; give it with --path")
    return [found for root in present for found in _scan_root(root)]


def _scan_root(root: Path) -> Iterator[Found]:
    for publisher in _entries(root):
        if publisher.is_symlink() and publisher.is_dir():
            yield _linked_folder(root, publisher)
            continue
        if not publisher.is_dir():
            continue
        for folder in _entries(publisher):
            if folder.is_symlink() and folder.is_dir():
                yield _linked_folder(root, folder)
                continue
            if not folder.is_dir():
                continue
            for entry in _entries(folder):
                if entry.name.lower().endswith(SUFFIX) and split_part(entry.name) <= 1:
                    yield _found(root, entry)


def _entries(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if not p.name.startswith("."))


def _linked_folder(root: Path, folder: Path) -> Found:
    rel = show(folder.relative_to(root).as_posix())
    return Found(
        None,
        rel,
        f"lmstudio:{rel}",
        skip="a symbolic link to a folder: not followed (give the folder it points to with --path)",
    )


def _found(root: Path, entry: Path) -> Found:
    rel = entry.relative_to(root).as_posix()
    shown = show(rel)
    publisher, folder, name = rel.split("/")
    found = Found(
        None,
        shown,
        f"lmstudio:{shown}",
        filename=show(name),
        aliases=(folder, f"{publisher}/{folder}", name, name[: -len(SUFFIX)]),
    )
    if any(odd_name(part) for part in (publisher, folder, name)):
        return found.refuse("odd characters in its path")
    found.skip = gguf_file_skip(name)
    if found.skip:
        return found
    found.ref = file_ref(name)
    try:
        found.path = resolve_within(entry, root, "the file")
    except InvalidArgument as exc:
        return found.refuse(str(exc))
    found.size = found.path.stat().st_size
    return found
