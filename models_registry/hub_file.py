"""Pull one GGUF file from a Hugging Face-style hub.

``hf://owner/repo[@revision]/path/to/file.gguf``. The revision is one path part
(a branch, a tag or a commit; ``%2F`` stands for a ``/`` in a branch name), or
``refs/pr/N`` / ``refs/convert/NAME`` as they are. Without ``hf://`` such a
source reads as a relative file path, so the prefix is required.

Resolution goes through huggingface_hub against ``HF_ENDPOINT`` (a mirror
works): ``model_info`` pins the revision to a commit, ``get_paths_info`` gives
the file's size, git blob id and, for an LFS file, its sha256. The bytes then
come through edged's own downloader (http_source: parallel ranges, resume,
stall detection, the redirect policy) from the commit-pinned resolve URL:

- an LFS file downloads with its sha256 as the expected digest, so it resumes
  across restarts and a file that does not hash to it never reaches the store;
- a file kept in git itself (no LFS, small) has no sha256 on the hub: it is
  downloaded, then checked against its git blob id (sha1 over ``blob <size>\\0``
  and the bytes) and its size, and accepted only if both match.

Either way the GGUF header is checked on the partial file before it becomes a
blob. The token comes from ``huggingface_hub.get_token()`` (``HF_TOKEN``, else
the saved login) and travels as an ``Authorization`` header on the hub's own
host only (httpx drops it on a redirect to another host, the CDN); it never
appears in a message or a log line. A 401 becomes UNAUTHENTICATED and a 403
PERMISSION_DENIED, both saying to set ``HF_TOKEN``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from edged.common.errors import (
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from edged.common.gguf import read_gguf_info

from . import http_source
from .digest import digest_from_hex
from .http_client import AccessRefused, HttpOptions
from .hub_source import SCHEME, HubRepo, access_refused, hub_errors, parse_repo
from .progress import ProgressFn, report
from .relpath import validate_relative_path
from .store import Store

SUFFIX = ".gguf"
_REF = re.compile(
    r"(?P<repo>[^/@]+/[^/@]+)"
    r"(?:@(?P<revision>refs/pr/\d+|refs/convert/[^/]+|[^/]+))?"
    r"/(?P<path>.+)"
)
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class HubFile:
    repo: HubRepo
    path: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo}/{self.path}"


@dataclass(frozen=True)
class Resolved:
    """What the hub says about the file, at one commit."""

    commit: str
    url: str  # the commit-pinned resolve URL
    size: int
    sha256: str | None  # "sha256:<hex>" for an LFS file
    git_sha1: str | None  # the git blob id, for a file kept in git


def is_file_ref(source: str) -> bool:
    """Whether ``source`` names one GGUF file in a hub repo (``hf://.../x.gguf``)."""
    return source.startswith(SCHEME) and source.lower().endswith(SUFFIX)


def parse_file_ref(source: str) -> HubFile:
    """Parse ``hf://owner/repo[@revision]/path/to/file.gguf``."""
    match = _REF.fullmatch(source[len(SCHEME) :])
    if match is None:
        raise InvalidArgument(
            f"invalid hub file {source[:200]!r}: use hf://owner/repo[@revision]/path/file.gguf"
        )
    repo = parse_repo(match["repo"])
    revision = unquote(match["revision"]) if match["revision"] else None
    if revision is not None and (_REVISION.fullmatch(revision) is None or ".." in revision):
        raise InvalidArgument(f"invalid revision {revision[:200]!r} for {repo.repo_id}")
    path = match["path"]
    try:
        validate_relative_path(path)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid file path in {source[:200]!r}: {exc}") from exc
    return HubFile(HubRepo(repo.repo_id, revision), path)


def default_tag(ref: HubFile) -> str | None:
    """The tag a pull gets unless one is named: the revision asked for, if any.

    A commit id becomes its first 12 characters; a ``/`` becomes ``-``. None
    (the default tag) without a revision, or when the revision makes no tag.
    """
    revision = ref.repo.revision
    if revision is None:
        return None
    if _GIT_SHA1.fullmatch(revision.lower()):
        return revision.lower()[:12]
    tag = revision.replace("/", "-")
    ok = re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", tag) is not None
    return tag if ok else None


def token() -> str | None:
    """The hub token from the usual places; None when there is none."""
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception as exc:  # an OIDC exchange that failed, an unreadable token file
        raise Unavailable(f"cannot read the Hugging Face token ({type(exc).__name__})") from exc


def resolve(ref: HubFile, hub_token: str | None) -> Resolved:
    """Pin the revision to a commit and read the file's size and hashes."""
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read per pull, not at import
    api = HfApi(endpoint=endpoint, token=hub_token or False)
    repo = ref.repo
    with hub_errors(repo):
        info = api.model_info(repo.repo_id, revision=repo.revision)
    commit = info.sha if isinstance(info.sha, str) else ""
    if _GIT_SHA1.fullmatch(commit) is None:
        raise FailedPrecondition(f"the hub gave no commit for {repo}")
    with hub_errors(repo, ref.path):
        entries = api.get_paths_info(repo.repo_id, [ref.path], revision=commit)
    entry = next((e for e in entries if e.path == ref.path), None)
    at = f"{repo.repo_id}@{repo.revision or 'main'}"
    if entry is None:
        raise NotFound(f"{ref.path!r} was not found in {at} on the hub")
    if not isinstance(entry, RepoFile):
        raise InvalidArgument(f"{ref.path!r} is a folder in {at}: name a .gguf file")
    sha256 = None
    size = entry.size
    if entry.lfs is not None:
        lfs_hex = str(entry.lfs.sha256).lower()
        if _SHA256.fullmatch(lfs_hex) is None:
            raise FailedPrecondition(f"the hub gave an invalid sha256 for {ref.path!r} in {at}")
        sha256 = digest_from_hex(lfs_hex)
        size = entry.lfs.size
    blob_id = str(entry.blob_id).lower()
    git_sha1 = blob_id if _GIT_SHA1.fullmatch(blob_id) else None
    if sha256 is None and git_sha1 is None:
        raise FailedPrecondition(f"the hub gave no hash for {ref.path!r} in {at}: refusing it")
    if not isinstance(size, int) or size < 0:
        raise FailedPrecondition(f"the hub gave an invalid size for {ref.path!r} in {at}")
    url = hf_hub_url(repo.repo_id, ref.path, revision=commit, endpoint=endpoint)
    return Resolved(commit, url, size, sha256, git_sha1)


def fetch(
    store: Store,
    ref: HubFile,
    found: Resolved,
    expected: str | None,
    *,
    hub_token: str | None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    options: HttpOptions | None = None,
) -> str:
    """Download the file :func:`resolve` found into the store's blobs; return its digest."""
    want = found.sha256
    if expected is not None and want is not None and expected != want:
        raise InvalidArgument(
            f"the digest given does not match the hub's sha256 for {ref.path!r} ({want})"
        )
    opts = options or HttpOptions()
    if hub_token:
        auth = (("Authorization", f"Bearer {hub_token}"),)
        opts = dataclasses.replace(opts, headers=opts.headers + auth)
    report(progress, f"downloading {ref.path} from {ref.repo.repo_id}@{found.commit[:12]}")
    try:
        return http_source.download(
            store,
            found.url,
            want or expected,
            progress=progress,
            cancel=cancel,
            options=opts,
            check=lambda part: _check_file(part, ref, found),
        )
    except AccessRefused as exc:
        raise access_refused(ref.repo.repo_id, exc.status) from exc


def _check_file(part: Path, ref: HubFile, found: Resolved) -> None:
    """Before the bytes become a blob: the hub's size and git blob id, then the header."""
    size = part.stat().st_size
    if size != found.size:
        raise DigestMismatch(
            f"{ref.path!r} from the hub is {size} bytes, but the hub lists {found.size}; "
            "the download was discarded"
        )
    if found.sha256 is None and found.git_sha1 is not None:
        got = _git_blob_sha1(part, size)
        if got != found.git_sha1:
            raise DigestMismatch(
                f"{ref.path!r} from the hub does not match its git blob id {found.git_sha1} "
                f"(it hashes to {got}); the download was discarded"
            )
    read_gguf_info(part)


def _git_blob_sha1(path: Path, size: int) -> str:
    hasher = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()
