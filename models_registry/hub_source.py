"""Pull an ONNX Runtime GenAI model folder, or a safetensors model folder, from a
Hugging Face-style hub repo.

``hf://owner/repo[@revision]`` (or a bare ``owner/repo`` that is not a catalog
name) lists the repo's files, downloads genai_config.json, then only the files
an ONNX Runtime GenAI folder needs: every file genai_config.json names, their
``.data`` external-data files, and the tokenizer files that exist. They land in
a temporary folder under the store's ``tmp/`` (the hub's own cache pointed
inside it), which is then imported exactly as a local folder is (folder.py),
and removed. The hub endpoint is ``HF_ENDPOINT`` when set.

A repo without genai_config.json but with config.json and ``*.safetensors`` is a
safetensors folder: its config, weights, tokenizer and sentence-transformers
files are downloaded (safetensors_folder.hub_files; pickled weights never are)
and imported by safetensors_folder.py.

Every name comes from hostile places (the listing, genai_config.json) and is
checked with relpath before anything is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.common import onnx_folder
from edged.common.errors import (
    Cancelled,
    EdgedError,
    FailedPrecondition,
    InvalidArgument,
    InvalidModelFile,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from edged.common.onnx_folder import GENAI_CONFIG, MAX_CONFIG_BYTES, optional_files, parse_config

from . import folder, safetensors_folder
from .fsutil import storage_error
from .manifest import ManifestFile
from .progress import ProgressFn, report
from .relpath import validate_relative_path, validate_variant_paths
from .store import Store

SCHEME = "hf://"
_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO = re.compile(rf"{_SEGMENT}/{_SEGMENT}")
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}")


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    revision: str | None = None

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def looks_like_repo(source: str) -> bool:
    """Whether ``source`` has the shape ``owner/repo[@revision]`` (no scheme)."""
    repo, _, revision = source.partition("@")
    return _REPO.fullmatch(repo) is not None and (
        not revision or _REVISION.fullmatch(revision) is not None
    )


def parse_repo(source: str) -> HubRepo:
    """Parse ``hf://owner/repo[@revision]`` or ``owner/repo[@revision]``."""
    text = source[len(SCHEME) :] if source.startswith(SCHEME) else source
    text = text.rstrip("/")
    repo, sep, revision = text.partition("@")
    if _REPO.fullmatch(repo) is None or ".." in repo or "--" in repo:
        raise InvalidArgument(
            f"invalid hub repo {source[:200]!r}: use owner/repo (letters, digits and '._-')"
        )
    if sep and (_REVISION.fullmatch(revision) is None or ".." in revision):
        raise InvalidArgument(f"invalid revision {revision[:200]!r} for {repo}")
    return HubRepo(repo, revision or None)


# -- which files an ONNX Runtime GenAI folder needs ----------------------------------------


def named_files(config: dict[str, Any]) -> list[str]:
    """Every file genai_config.json names, each checked to be a safe relative path."""
    out: list[str] = []
    for name in onnx_folder.named_files(config):
        try:
            validate_relative_path(name)
        except EdgedError as exc:
            raise InvalidArgument(f"{GENAI_CONFIG} names a bad file: {exc}") from exc
        out.append(name)
    return list(dict.fromkeys(out))


# -- the hub source ------------------------------------------------------------------------


def fetch(
    store: Store,
    repo: HubRepo,
    *,
    written: list[str],
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[ManifestFile, ...]:
    """Download the ONNX GenAI (or safetensors) files of ``repo``; import them as one
    variant (its main file says which: genai_config.json or config.json)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix="hub-", dir=store.tmp_dir))
    except OSError as exc:
        raise storage_error(exc, "preparing a download") from exc
    try:
        files_dir = tmp / "files"
        files_dir.mkdir()
        onnx = _download_all(repo, files_dir, tmp / "cache", progress, cancel)
        if not onnx:
            return safetensors_folder.import_folder(
                store, files_dir, written=written, progress=progress, cancel=cancel
            )
        return folder.import_folder(
            store, files_dir, written=written, progress=progress, cancel=cancel
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download_all(
    repo: HubRepo,
    files_dir: Path,
    cache_dir: Path,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> bool:
    """Download what the folder needs; True for ONNX GenAI, False for safetensors."""
    import huggingface_hub.utils as hf_utils
    from huggingface_hub import HfApi, hf_hub_download

    quiet = getattr(hf_utils, "disable_progress_bars", None)
    if callable(quiet):
        quiet()  # progress goes through ``progress``, never to the terminal
    # huggingface_hub reads HF_ENDPOINT once, at import: read it here, at each pull.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    report(progress, f"listing the files of {repo}")
    with hub_errors(repo):
        info = HfApi(endpoint=endpoint).model_info(repo.repo_id, revision=repo.revision)
    listed = {s.rfilename for s in (info.siblings or []) if isinstance(s.rfilename, str)}
    # Pin every download to the commit the listing came from.
    revision = info.sha if isinstance(info.sha, str) and info.sha else repo.revision
    safetensors = GENAI_CONFIG not in listed and safetensors_folder.CONFIG in listed
    if GENAI_CONFIG not in listed and not safetensors:
        raise FailedPrecondition(
            f"{repo.repo_id} has no {GENAI_CONFIG} (an ONNX Runtime GenAI model) and no "
            f"{safetensors_folder.CONFIG} (a model folder with .safetensors weights)"
        )

    def get(name: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("pull cancelled")
        report(progress, f"downloading {name}")
        with hub_errors(repo, name):
            hf_hub_download(
                repo.repo_id,
                name,
                revision=revision,
                local_dir=files_dir,
                cache_dir=cache_dir,
                endpoint=endpoint,
            )

    if safetensors:
        wanted = safetensors_folder.hub_files(listed, repo.repo_id)
        validate_variant_paths(wanted)
        if len(wanted) > folder.MAX_FILES:
            raise InvalidArgument(f"{repo.repo_id} has more than {folder.MAX_FILES} files")
        for name in wanted:
            get(name)
        return False
    get(GENAI_CONFIG)
    config = parse_config(_read_bounded(files_dir / GENAI_CONFIG))
    named = [n for n in named_files(config) if n != GENAI_CONFIG]
    for name in named:
        if name not in listed:
            raise InvalidModelFile(
                f"{GENAI_CONFIG} of {repo.repo_id} names {name!r}, which is not in the repo"
            )
    wanted = named + [n for n in optional_files(named) if n in listed and n not in named]
    validate_variant_paths([GENAI_CONFIG, *wanted])
    if len(wanted) + 1 > folder.MAX_FILES:
        raise InvalidArgument(f"{repo.repo_id} names more than {folder.MAX_FILES} files")
    for name in wanted:
        get(name)
    return True


def _read_bounded(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_CONFIG_BYTES + 1)


@contextmanager
def hub_errors(repo: HubRepo, filename: str | None = None) -> Iterator[None]:
    """Translate huggingface_hub and transport failures into edged errors."""
    from huggingface_hub import errors as hf

    what = f"{filename!r} of {repo.repo_id}" if filename else repo.repo_id
    try:
        yield
    except EdgedError:
        raise
    except hf.GatedRepoError as exc:
        code = exc.response.status_code if exc.response is not None else 401
        raise access_refused(repo.repo_id, code) from exc
    except hf.RepositoryNotFoundError as exc:
        raise NotFound(
            f"{repo.repo_id} was not found on the hub (or it is private: set HF_TOKEN)"
        ) from exc
    except hf.RevisionNotFoundError as exc:
        raise NotFound(f"{repo.repo_id} has no revision {repo.revision!r}") from exc
    except hf.LocalEntryNotFoundError as exc:  # what a connection failure turns into
        raise Unavailable(f"cannot download {what}: the hub cannot be reached") from exc
    except hf.OfflineModeIsEnabled as exc:
        raise Unavailable(f"cannot download {what}: HF_HUB_OFFLINE is set") from exc
    except hf.HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (404, 410):
            raise NotFound(f"{what} was not found on the hub (HTTP {code})") from exc
        if code in (401, 403):
            raise access_refused(repo.repo_id, code) from exc
        if code == 429 or code >= 500 or code == 0:
            raise Unavailable(f"the hub answered HTTP {code} for {what}; try again later") from exc
        raise FailedPrecondition(f"the hub answered HTTP {code} for {what}") from exc
    except hf.EntryNotFoundError as exc:
        raise NotFound(f"{what} was not found on the hub") from exc
    except hf.HFValidationError as exc:
        raise InvalidArgument(f"invalid hub request for {what}: {exc}") from exc
    except (ConnectionError, TimeoutError) as exc:
        raise Unavailable(f"cannot download {what}: {type(exc).__name__}") from exc
    except OSError as exc:
        if _is_transport_error(exc):
            raise Unavailable(f"cannot download {what}: {type(exc).__name__}") from exc
        raise storage_error(exc, f"downloading {what}") from exc
    except Exception as exc:
        if _is_transport_error(exc):
            raise Unavailable(f"cannot download {what}: {type(exc).__name__}") from exc
        raise


def access_refused(repo_id: str, code: int) -> EdgedError:
    """The error for a 401/403 from the hub: what to do about it, never the token."""
    if code == 401:
        return Unauthenticated(
            f"the hub refused access to {repo_id} (HTTP 401): it is gated or private and "
            "no valid token was sent; accept its terms on the hub and set HF_TOKEN (or log "
            "in with `hf auth login`) where the daemon runs"
        )
    return PermissionDenied(
        f"the hub refused access to {repo_id} (HTTP 403): the token has no access to it; "
        "accept the repo's terms on the hub, or set HF_TOKEN to a token that has access"
    )


def _is_transport_error(exc: BaseException) -> bool:
    """httpx (httpx2) or requests failures, whichever huggingface_hub uses."""
    module = type(exc).__module__.split(".", 1)[0]
    return module.startswith(("httpx", "httpcore", "requests", "urllib3", "aiohttp"))
