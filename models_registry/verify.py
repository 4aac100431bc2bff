"""Check the whole store: every blob re-hashed, every manifest and folder view checked.

:func:`verify` reports *problems* (what makes ``edged verify`` exit non-zero: a
blob whose bytes no longer match its name, a manifest that cannot be read or
names a missing or wrong-sized file, a folder view whose links are wrong,
something foreign in ``blobs/``) and *notes* (normal leftovers that garbage
collection handles: unreferenced blobs, stale views, temp and partial files).

With ``repair`` it takes the store exclusively (waiting for running pulls),
checks each damaged item again, and moves corrupt blobs, foreign files and
unreadable manifests into ``quarantine/`` (never deleting them) and removes
wrong folder views (they are rebuilt from the blobs on the next load). A model
whose files are gone or quarantined is listed in ``repull``: pull it again.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edged.common.errors import EdgedError, NotFound
from edged.common.model_facts import FORMAT_GGUF

from . import catalog, views
from .cleanup import newest_mtime, partial_key_of, tree_size
from .digest import blob_name, digest_from_hex, hex_of, new_hasher, parse_digest
from .fsutil import fsync_dir, human_bytes
from .manifest import Manifest, Variant
from .names import ModelRef, validate_tag
from .store import Store

# Severity of a finding.
PROBLEM = "problem"
NOTE = "note"

CHUNK_SIZE = 1 << 20

# What a blob's re-hash found.
_OK = "ok"
_CORRUPT = "corrupt"
_MISSING = "missing"
_NOT_A_FILE = "not-a-file"

BlobProgress = Callable[[str, int, int], None]  # (digest, blobs done, blobs in all)


@dataclass(frozen=True)
class Finding:
    """One line of the report. ``where`` names the item inside the store
    ("blobs/sha256-...", "manifests/name/tag.json", "views/<hex>", a model)."""

    severity: str
    where: str
    issue: str
    action: str


@dataclass
class VerifyReport:
    blobs: int = 0
    bytes_hashed: int = 0
    manifests: int = 0
    views: int = 0
    findings: list[Finding] = field(default_factory=list)
    repull: list[str] = field(default_factory=list)  # "name:tag  (source)"
    quarantined: list[str] = field(default_factory=list)  # paths relative to the store
    repaired: bool = False
    seconds: float = 0.0

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == PROBLEM]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == NOTE]

    @property
    def ok(self) -> bool:
        """No problem found (after ``repair``: none left that it could not fix)."""
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "blobs": self.blobs,
            "bytes_hashed": self.bytes_hashed,
            "manifests": self.manifests,
            "views": self.views,
            "problems": [f.__dict__ for f in self.problems],
            "notes": [f.__dict__ for f in self.notes],
            "repull": self.repull,
            "quarantined": self.quarantined,
            "repaired": self.repaired,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Scan:
    manifests: dict[ModelRef, Manifest] = field(default_factory=dict)
    bad_manifests: dict[Path, str] = field(default_factory=dict)  # file -> why
    blobs: dict[str, str] = field(default_factory=dict)  # digest -> _OK/_CORRUPT/...
    sizes: dict[str, int] = field(default_factory=dict)
    foreign: list[Path] = field(default_factory=list)  # unexpected entries in blobs/
    bad_views: dict[str, str] = field(default_factory=dict)  # view name -> why
    moved: dict[Path, str] = field(default_factory=dict)  # original -> its name in quarantine/


def verify(
    store: Store,
    *,
    repair: bool = False,
    on_blob: BlobProgress | None = None,
    on_wait: Callable[[], None] | None = None,
) -> VerifyReport:
    """Check ``store``; with ``repair``, quarantine what is damaged (see the module)."""
    started = time.monotonic()
    report = VerifyReport()
    with store.pinned():  # no collection removes a blob while we look at it
        scan = _scan(store, report, on_blob)
    if repair and _repairable(scan):
        with store.exclusive(wait=True, on_wait=on_wait):
            _repair(store, scan)
        report.repaired = True
    _report(store, scan, report, repaired=repair)
    report.seconds = time.monotonic() - started
    return report


# -- scanning ---------------------------------------------------------------------------


def _scan(store: Store, report: VerifyReport, on_blob: BlobProgress | None) -> _Scan:
    scan = _Scan()
    # Manifests first: every blob one of them names was stored before it was
    # written, and no collection runs while we hold the store pinned.
    for path in sorted(store.manifests_dir.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        _read_manifest(store, path, scan, report)
    names = sorted(os.listdir(store.blobs_dir))
    for i, name in enumerate(names):
        path = store.blobs_dir / name
        try:
            digest = parse_digest(name) if name == blob_name(name) else None
        except EdgedError:
            digest = None
        if digest is None or not name.startswith("sha256-"):
            scan.foreign.append(path)
            continue
        state, size = _hash_blob(path, digest)
        scan.blobs[digest], scan.sizes[digest] = state, size
        if state in (_OK, _CORRUPT):
            report.bytes_hashed += size
        if on_blob is not None:
            on_blob(digest, i + 1, len(names))
    report.blobs = len(scan.blobs)
    for m in scan.manifests.values():  # a blob missing from the listing: look again
        for f in m.files:
            if f.digest not in scan.blobs:
                path = store.blob_path(f.digest)
                scan.blobs[f.digest], scan.sizes[f.digest] = _hash_blob(path, f.digest)
    report.manifests = len(scan.manifests) + len(scan.bad_manifests)
    _scan_views(store, scan, report)
    return scan


def _read_manifest(store: Store, path: Path, scan: _Scan, report: VerifyReport) -> None:
    rel = path.relative_to(store.manifests_dir).parts
    tag = path.stem if path.suffix == ".json" else ""
    try:
        ref = ModelRef("/".join(rel[:-1]), validate_tag(tag))
        if len(rel) not in (2, 3) or path.is_symlink() or not path.is_file():
            raise ValueError("not a manifest file")
    except (EdgedError, ValueError):
        where = "manifests/" + "/".join(rel)
        report.findings.append(
            Finding(
                NOTE, where, "not a manifest (ignored by edged)", "remove it by hand if unwanted"
            )
        )
        return
    try:
        scan.manifests[ref] = store.get_manifest(ref)
    except NotFound:
        return  # deleted meanwhile
    except EdgedError as exc:
        scan.bad_manifests[path] = str(exc)


def _hash_blob(path: Path, digest: str) -> tuple[str, int]:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return _MISSING, 0
    if not stat.S_ISREG(st.st_mode):
        return _NOT_A_FILE, 0
    hasher = new_hasher()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                hasher.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return _MISSING, 0
    except OSError:  # unreadable (EIO, permissions): as good as corrupt
        return _CORRUPT, size
    return (_OK if digest_from_hex(hasher.hexdigest()) == digest else _CORRUPT), size


def _scan_views(store: Store, scan: _Scan, report: VerifyReport) -> None:
    wanted: dict[str, Variant] = {}
    for m in scan.manifests.values():
        for v in m.variants:
            if v.format != FORMAT_GGUF:
                wanted[hex_of(v.digest)] = v
    for entry in sorted(store.views_dir.iterdir()):
        report.views += 1
        variant = wanted.get(entry.name)
        if variant is None:
            report.findings.append(
                Finding(
                    NOTE, f"views/{entry.name}", "no model uses this folder view", "gc removes it"
                )
            )
            continue
        why = _view_problem(store, entry, variant)
        if why:
            scan.bad_views[entry.name] = why


def _view_problem(store: Store, view: Path, variant: Variant) -> str:
    if view.is_symlink() or not view.is_dir():
        return "it is not a folder"
    expected = {f.path: store.blob_path(f.digest) for f in variant.files}
    found: dict[str, Path] = {}
    for entry in _walk(view):
        rel = entry.relative_to(view).as_posix()
        if entry.is_symlink():
            found[rel] = Path(os.path.normpath(entry.parent / os.readlink(entry)))
        elif not entry.is_dir():
            return f"{rel!r} is a file, not a link to a blob"
    for rel, blob in expected.items():
        if rel not in found:
            return f"the link {rel!r} is missing"
        if found.pop(rel) != blob:
            return f"the link {rel!r} points to the wrong file"
    if found:
        return f"it holds {len(found)} unexpected link(s), e.g. {sorted(found)[0]!r}"
    return ""


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in (*dirnames, *filenames):
            yield Path(dirpath, name)


def _repairable(scan: _Scan) -> bool:
    corrupt = any(s in (_CORRUPT, _NOT_A_FILE) for s in scan.blobs.values())
    return corrupt or bool(scan.foreign or scan.bad_manifests or scan.bad_views)


# -- repair -----------------------------------------------------------------------------


def _repair(store: Store, scan: _Scan) -> None:
    """Under the exclusive lock: look again, then move aside what is still damaged."""
    for digest, state in sorted(scan.blobs.items()):
        if state not in (_CORRUPT, _NOT_A_FILE):
            continue
        path = store.blob_path(digest)
        again, _ = _hash_blob(path, digest)
        scan.blobs[digest] = again
        if again in (_CORRUPT, _NOT_A_FILE):
            scan.moved[path] = _quarantine(store, path).name
    for path in (*scan.foreign, *sorted(scan.bad_manifests)):
        if path.exists() or path.is_symlink():
            scan.moved[path] = _quarantine(store, path).name
    for name in sorted(scan.bad_views):
        view = store.views_dir / name
        if view.exists() or view.is_symlink():
            views.remove_view(view, store.tmp_dir)


def _quarantine(store: Store, path: Path) -> Path:
    """Move ``path`` into ``quarantine/`` under a name that says what and when."""
    store.quarantine_dir.mkdir(exist_ok=True)
    rel = path.relative_to(store.root).as_posix().replace("/", "__")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = store.quarantine_dir / f"{stamp}-{rel}"
    n = 1
    while target.exists() or target.is_symlink():
        n += 1
        target = store.quarantine_dir / f"{stamp}-{n}-{rel}"
    os.rename(path, target)
    fsync_dir(path.parent)
    fsync_dir(store.quarantine_dir)
    return target


# -- the report -------------------------------------------------------------------------


def _report(store: Store, scan: _Scan, report: VerifyReport, *, repaired: bool) -> None:
    fix = "run `edged verify --repair` to move it aside"
    for path, why in sorted(scan.bad_manifests.items()):
        rel = "manifests/" + path.relative_to(store.manifests_dir).as_posix()
        report.repull.append(_ref_of_path(store, path))
        _damaged(store, scan, report, path, rel, why, fix + ", then pull the model again")
    for path in scan.foreign:
        _damaged(store, scan, report, path, f"blobs/{path.name}", "not a blob of this store", fix)
    referenced = {f.digest for m in scan.manifests.values() for f in m.files}
    for digest, state in sorted(scan.blobs.items()):
        path = store.blob_path(digest)
        rel = f"blobs/{blob_name(digest)}"
        if state == _CORRUPT:
            _damaged(store, scan, report, path, rel, "its bytes no longer match its digest", fix)
        elif state == _NOT_A_FILE:
            _damaged(store, scan, report, path, rel, "not a regular file", fix)
        elif state == _OK and digest not in referenced:
            report.findings.append(
                Finding(NOTE, rel, "no model uses it", "gc removes it after the grace period")
            )
    _report_models(scan, report)
    for name, why in sorted(scan.bad_views.items()):
        gone = repaired and not (store.views_dir / name).exists()
        action = "removed; rebuilt on the next load" if gone else "run `edged verify --repair`"
        report.findings.append(
            Finding(NOTE if gone else PROBLEM, f"views/{name}", f"wrong folder view: {why}", action)
        )
    _report_leftovers(store, scan, report)


def _damaged(
    store: Store, scan: _Scan, report: VerifyReport, path: Path, rel: str, why: str, fix: str
) -> None:
    """A damaged file: a problem until --repair has moved it into quarantine/."""
    moved = scan.moved.get(path)
    if moved is None:
        report.findings.append(Finding(PROBLEM, rel, why, fix))
        return
    report.quarantined.append(f"quarantine/{moved}")
    report.findings.append(Finding(NOTE, rel, why, f"moved to quarantine/{moved}"))


def _report_models(scan: _Scan, report: VerifyReport) -> None:
    gone = {path.name for path in scan.moved}
    for ref, m in sorted(scan.manifests.items()):
        issues = []
        for f in m.files:
            state = scan.blobs.get(f.digest, _MISSING)
            if blob_name(f.digest) in gone:
                issues.append(f"{f.path!r} was damaged and is now in quarantine/")
            elif state == _MISSING:
                issues.append(f"{f.path!r} is missing")
            elif state != _OK:
                issues.append(f"{f.path!r} is damaged")
            elif scan.sizes.get(f.digest) != f.size:
                issues.append(f"{f.path!r} has {scan.sizes.get(f.digest)} bytes, not {f.size}")
        if issues:
            action = f"pull it again: {_pull_hint(ref, m)}"
            report.findings.append(Finding(PROBLEM, f"model {ref}", "; ".join(issues), action))
            report.repull.append(str(ref))


def _report_leftovers(store: Store, scan: _Scan, report: VerifyReport) -> None:
    cutoff = time.time() - store.gc_grace_s
    for entry in sorted(store.tmp_dir.iterdir()):
        try:
            old = newest_mtime(entry) <= cutoff
            size = tree_size(entry)
        except OSError:
            continue
        age = "stale" if old else "recent (in use, or kept for the grace period)"
        report.findings.append(
            Finding(NOTE, f"tmp/{entry.name}", f"{age} temporary file, {human_bytes(size)}", "gc")
        )
    groups: dict[str, int] = {}
    for entry in sorted(store.partial_dir.iterdir()):
        try:
            size = tree_size(entry)
        except OSError:
            continue
        key = partial_key_of(entry.name)
        groups[key] = groups.get(key, 0) + size
    for key, size in groups.items():
        with store.download_lock_free(key) as free:
            state = "resumable partial download" if free else "download in progress"
        report.findings.append(
            Finding(
                NOTE,
                f"partial/{key}",
                f"{state}, {human_bytes(size)}",
                "pull again to resume; gc removes it after the grace period",
            )
        )


def _pull_hint(ref: ModelRef, m: Manifest) -> str:
    source = m.source
    if source.startswith(("http://", "https://", "hf://")):
        return f"`edged pull {source} --name {ref}`"
    if catalog.find(ref.name, ref.tag) is not None:
        return f"`edged pull {ref}`"
    return f"`edged pull` from where it came from ({source or 'unknown'})"


def _ref_of_path(store: Store, path: Path) -> str:
    rel = path.relative_to(store.manifests_dir).parts
    return "/".join(rel[:-1]) + ":" + Path(rel[-1]).stem
