"""What the importers share: a found model (:class:`Found`), the checks a path from
another program's folder passes, and the import itself (:func:`import_found`).

A scanner turns another program's folder into a list of :class:`Found` models,
each either ready (a file, its expected digest and size when the other program
records them, defaults from its metadata) or refused with the reason. It never
writes there. :func:`import_found` then brings each one into the store through
:func:`~edged.models_registry.pull.add_gguf`, one model at a time: a refusal names
the model and leaves nothing of it behind, and the others still come in.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from edged.common.errors import EdgedError, InvalidArgument, ModelNotFound
from edged.common.model_facts import FORMAT_GGUF

from ..blobs import ADOPT_PRESENT
from ..manifest import CorruptManifest, Manifest
from ..names import DEFAULT_TAG, ModelRef, sanitize_name, split_model_ref, validate_tag
from ..progress import ProgressFn
from ..pull import add_gguf
from ..settings import SettingsStore
from ..store import Store

# Outcome statuses
IMPORTED = "imported"
ALREADY = "already there"
REFUSED = "refused"
SKIPPED = "skipped"  # not a model edged imports (a split GGUF, a projector): a note
WOULD_IMPORT = "would import"  # --list

MAX_TEXT_BYTES = 1 << 20  # a manifest, a params or template layer, a ref file
MAX_SYSTEM_CHARS = 64 * 1024  # as a session's system prompt (daemon/sessions.py)

_SPLIT = re.compile(r"-(\d{5})-of-\d{5}\.gguf$", re.IGNORECASE)
_ODD = re.compile(r"[\x00-\x1f\x7f\\]")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Found:
    """One model in another program's folder."""

    ref: ModelRef | None  # the edged name it gets (None when even that failed)
    shown: str  # how the other program names it, for messages
    source: str  # recorded in the manifest
    path: Path | None = None  # the GGUF file (symlinks resolved and checked)
    filename: str = "model.gguf"
    expected: str | None = None  # the sha256 the other program names it by
    size: int | None = None  # the size it records, or the file's
    system_prompt: str = ""
    sampling: tuple[tuple[str, float], ...] = ()
    stop: tuple[str, ...] = ()
    context_length: int = 0
    notes: list[str] = field(default_factory=list)
    problem: str = ""  # why it is refused before anything is read
    skip: str = ""  # why it is not a model edged imports (reported, not refused)
    aliases: tuple[str, ...] = ()  # other names the NAME filter matches
    other_tag: str = ""  # the other program's tag, which the filter's TAG also matches

    def refuse(self, why: str) -> Found:
        self.problem = self.problem or why
        return self


@dataclass
class Outcome:
    """What happened to one found model; ``to_dict`` is the ``--json`` shape."""

    model: str  # "name:tag" in edged, or the other program's name when it has none
    source: str
    status: str
    how: str = ""  # linked, reflinked, copied, already stored
    size: int = 0
    reason: str = ""
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self) | {"notes": list(self.notes)}


# -- paths from another program's folder ----------------------------------------------------


def odd_name(name: str) -> bool:
    """A directory entry not fit to become part of a name or a message."""
    return name in ("", ".", "..") or _ODD.search(name) is not None or len(name) > 255


def show(text: str, limit: int = 200) -> str:
    """Text from another program's folder, fit for a message."""
    cleaned = _ODD.sub("?", text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (resolved) lies under ``root`` (resolved)."""
    return path == root or root in path.parents


def resolve_within(path: Path, root: Path, what: str) -> Path:
    """``path`` with its symlinks resolved; it must be a regular file under ``root``.

    Raises InvalidArgument saying what is wrong (``what`` names the file)."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"{what} is missing") from exc
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise InvalidArgument(f"{what} cannot be resolved ({type(exc).__name__})") from exc
    if not inside(real, root.resolve()):
        raise InvalidArgument(f"{what} is a symbolic link that points outside {show(str(root))}")
    try:
        st = real.lstat()
    except OSError as exc:
        raise InvalidArgument(f"{what} cannot be read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{what} is not a regular file")
    return real


def read_small(path: Path, limit: int, what: str) -> bytes:
    """Read a small file (no symlink, no FIFO) of at most ``limit`` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"{what} is missing") from exc
    except OSError as exc:
        raise InvalidArgument(f"{what} cannot be read: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{what} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidArgument(f"{what} is larger than {limit} bytes")
    return data


def split_part(name: str) -> int:
    """Which part of a split GGUF (``-00001-of-00003.gguf``) a file is; 0 when whole.
    Scanners report only part 1, so a split model gets one note."""
    match = _SPLIT.search(name)
    return int(match[1]) if match else 0


def gguf_file_skip(name: str) -> str:
    """Why a ``.gguf`` file is not imported ("" when it is a model file)."""
    if _SPLIT.search(name):
        return "split GGUF not supported (merge the parts with llama-gguf-split --merge)"
    if name.lower().startswith("mmproj"):
        return "a vision projector (mmproj), not a model: not imported"
    return ""


def file_ref(filename: str) -> ModelRef:
    """The edged name of a loose GGUF file, as an ``hf://`` pull of it would get:
    the sanitized file name, tagged ``latest``."""
    return ModelRef(sanitize_name(filename), DEFAULT_TAG)


def safe_tag(raw: str) -> str:
    """Another program's tag as a valid edged tag (``latest`` when nothing is left)."""
    try:
        return validate_tag(raw)
    except InvalidArgument:
        pass
    text = _TAG_UNSAFE.sub("-", raw).lstrip(".-")[:128].rstrip("-")
    try:
        return validate_tag(text)
    except InvalidArgument:
        return DEFAULT_TAG


# -- which models: the NAME[:TAG] filter ----------------------------------------------------


def select(found: list[Found], pattern: str | None) -> list[Found]:
    """The models ``pattern`` (``NAME[:TAG]``) names: by edged name or by the other
    program's (``smollm2``, ``smollm2:latest``, ``library/smollm2``, ``owner/repo``)."""
    if not pattern:
        return found
    name, _, tag = pattern.strip().rpartition(":") if ":" in pattern else (pattern, "", "")
    name = name.strip().lower()
    out = []
    for f in found:
        names = {a.lower() for a in f.aliases}
        if f.ref is not None:
            names.add(f.ref.name)
        if name not in names:
            continue
        if tag and tag not in (f.ref.tag if f.ref is not None else "", f.other_tag):
            continue
        out.append(f)
    return out


# -- the import -------------------------------------------------------------------------------


def import_found(
    store: Store,
    found: list[Found],
    *,
    name: str | None = None,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> list[Outcome]:
    """Import every model in ``found`` (with ``dry_run``, only say what would happen).

    ``name`` (``NAME[:TAG]``) renames the one model being imported. Each model is
    imported on its own: a refusal is reported in its :class:`Outcome`, never raised.
    """
    models = [f for f in found if not f.skip]
    if name is not None and len(models) != 1:
        raise InvalidArgument(
            f"--name needs exactly one model, and {len(models)} were found: "
            "name the one to import (edged import --from ... NAME[:TAG] --name NEW)"
        )
    target: ModelRef | None = None
    if name is not None:
        model, tag = split_model_ref(name)
        target = ModelRef(model, tag or DEFAULT_TAG)
    out = []
    for f in found:
        if f.skip:
            out.append(Outcome(f.shown, f.source, SKIPPED, reason=f.skip, notes=tuple(f.notes)))
            continue
        if target is not None:
            f = dataclasses.replace(f, ref=target)
        out.append(_one(store, f, dry_run, progress))
    return out


def _one(store: Store, f: Found, dry_run: bool, progress: ProgressFn | None) -> Outcome:
    model = str(f.ref) if f.ref is not None else f.shown
    notes = tuple(f.notes)

    def refused(why: str) -> Outcome:
        return Outcome(model, f.source, REFUSED, reason=f"{f.shown}: {why}", notes=notes)

    if f.problem or f.ref is None or f.path is None:
        return refused(f.problem or "not a model file")
    ref, path = f.ref, f.path
    try:
        current = _current(store, ref)
        there = _already_there(store, current, f)
        if there is not None:
            return Outcome(model, f.source, ALREADY, size=there, notes=notes)
        if dry_run:
            if current is None:
                return Outcome(model, f.source, WOULD_IMPORT, size=f.size or 0, notes=notes)
            if _known_other(current, f):
                return refused(_name_taken(ref))
            unsure = "the same name and size; --list does not hash it to be sure"
            return Outcome(model, f.source, ALREADY, size=f.size or 0, notes=(*notes, unsure))
        how = [""]

        def put() -> str:
            """Adopt the file, then check (now that its digest is known for sure) that
            the name is still free; add_gguf writes the manifest after this."""
            digest, how[0] = store.adopt_file(path, f.expected, size=f.size, progress=progress)
            try:
                existing = _current(store, ref)
                if existing is None:
                    return digest
                gguf = existing.variant(FORMAT_GGUF)
                if gguf is not None and gguf.digest == digest:
                    raise _AlreadyThere()
                raise _NameTaken(_name_taken(ref))
            except BaseException:
                if how[0] != ADOPT_PRESENT:
                    store.discard_blob(digest)  # only if no manifest uses it
                raise

        try:
            manifest = add_gguf(
                store,
                ref,
                f.source,
                f.filename,
                put,
                system_prompt=f.system_prompt,
                sampling=f.sampling,
                stop=f.stop,
                progress=progress,
            )
        except _AlreadyThere:
            return Outcome(model, f.source, ALREADY, size=f.size or 0, notes=notes)
        if f.context_length:
            _save_context(store, ref, f.context_length)
        return Outcome(model, f.source, IMPORTED, how=how[0], size=manifest.size, notes=notes)
    except _NameTaken as exc:
        return refused(str(exc))
    except EdgedError as exc:
        return refused(str(exc))
    except OSError as exc:
        return refused(f"{exc.strerror or type(exc).__name__}")


class _NameTaken(Exception):
    pass


class _AlreadyThere(Exception):
    pass


def _name_taken(ref: ModelRef) -> str:
    return (
        f"'{ref}' already names another model in edged, which is left as it is; "
        "import this one under another name with --name NEW[:TAG]"
    )


def _current(store: Store, ref: ModelRef) -> Manifest | None:
    try:
        return store.get_manifest(ref)
    except ModelNotFound:
        return None
    except CorruptManifest as exc:
        raise _NameTaken(
            f"'{ref}' has an unreadable manifest in edged ({exc}); "
            "import under another name with --name NEW[:TAG]"
        ) from exc


def _already_there(store: Store, current: Manifest | None, f: Found) -> int | None:
    """The model's size when ``current`` is this very file, known without hashing:
    the digest the other program names it by, or the same inode (an earlier link)."""
    gguf = current.variant(FORMAT_GGUF) if current is not None else None
    if gguf is None or not store.has_blob(gguf.digest):
        return None
    if f.expected is not None:
        return gguf.main.size if gguf.digest == f.expected else None
    assert f.path is not None
    try:
        a, b = os.stat(store.blob_path(gguf.digest)), os.stat(f.path)
    except OSError:
        return None
    return gguf.main.size if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) else None


def _known_other(current: Manifest, f: Found) -> bool:
    """For --list: whether the model under the name is surely another one (by its
    digest, or by its size when the other program records no digest)."""
    gguf = current.variant(FORMAT_GGUF)
    if gguf is None:
        return True
    if f.expected is not None:
        return gguf.digest != f.expected
    return f.size is not None and gguf.main.size != f.size


def _save_context(store: Store, ref: ModelRef, context_length: int) -> None:
    """The model's context length (Ollama's num_ctx) into the per-model settings; if
    that fails the model is removed again, so nothing is half-imported."""
    settings = SettingsStore(store.root)
    try:
        current = settings.get(str(ref))
        settings.put(str(ref), dataclasses.replace(current, context_length=context_length))
    except BaseException:
        store.delete(ref)
        raise


__all__ = [
    "ALREADY",
    "IMPORTED",
    "REFUSED",
    "SKIPPED",
    "WOULD_IMPORT",
    "Found",
    "Outcome",
    "import_found",
    "select",
]
