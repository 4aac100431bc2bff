"""Convert a model's GGUF variant into an int4 ONNX Runtime GenAI variant.

The work runs in a child process (:mod:`.convert_worker`), so the daemon never
imports torch or transformers: the child dequantizes the GGUF to F16, writes an
HF-style config folder and runs onnxruntime-genai's model builder, then puts
the GGUF's own quantized blocks back into the graph's MatMulNBits weights
(:mod:`.transcode`; a type without an exact form keeps the builder's int4
weights, and the progress says so), reporting its phases as JSON lines that
become progress reports here. Its other output goes to
a log file in the conversion's work folder under ``tmp/``; the last lines of it
are in the error when the conversion fails. The result is imported like a local
ONNX folder and added to the model's manifest as the variant "onnx-int4-cpu".

Everything happens in a work folder under ``tmp/`` that is removed afterwards; a
conversion that fails or is cancelled leaves the manifests and blobs as they were.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from edged.common.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelNotFound,
)
from edged.common.model_facts import FORMAT_GGUF, FORMAT_ONNX

from . import folder, locks
from .digest import new_hasher
from .fsutil import remove_tree, storage_error
from .manifest import Manifest, Variant
from .names import ModelRef
from .progress import ProgressFn, report
from .store import Store

log = logging.getLogger(__name__)

ONNX_INT4_CPU = "onnx-int4-cpu"
CONVERT_EXTRA_HINT = "converting to ONNX needs the convert extra: pip install 'edged[convert]'"
# Import names of what the worker uses (the ``convert`` extra in pyproject.toml).
REQUIRED_MODULES = (
    "gguf",
    "numpy",
    "transformers",
    "torch",
    "onnx",
    "onnx_ir",
    "onnxruntime_genai",
)
# GGUF general.architecture -> the transformers class the builder dispatches on.
# "llama" (SmolLM2) and "gemma3" (Gemma 3 270M) are verified end to end; the
# others are architectures that both transformers' GGUF loader and the builder's
# GGUF loader declare.
HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
# Architectures whose weights transformers reads from the GGUF for the builder
# (convert_worker.HF_WEIGHTS): that needs accelerate as well.
NEEDS_ACCELERATE = frozenset({"gemma3"})
TIMEOUT_SECONDS = 4 * 3600.0
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 8
MAX_MESSAGE_BYTES = 1 << 16
WORKER_MODULE = "edged.models_registry.convert_worker"
_POSIX = sys.platform != "win32"


class ConversionFailed(FailedPrecondition):
    """The converter ran and failed; the message holds the end of its log."""


def convert_to_onnx(
    store: Store,
    model: str,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    timeout: float = TIMEOUT_SECONDS,
) -> tuple[ModelRef, Manifest]:
    """Give ``model`` (``name[:tag]``) an int4 CPU ONNX variant made from its GGUF.

    A model that already has an ONNX variant is returned as it is. Raises
    FailedPrecondition when the model has no GGUF, its architecture is not
    supported, or the ``convert`` extra is not installed; ConversionFailed when the
    converter fails; Cancelled when ``cancel`` is set.
    """
    ref, manifest = store.resolve(model)
    if manifest.variant(FORMAT_ONNX) is not None:
        return ref, manifest
    hf_architecture = _plan(ref, manifest)
    check_tools(("accelerate",) if manifest.architecture in NEEDS_ACCELERATE else ())
    with store.pinned(), conversion_locked(store, ref, progress, cancel):
        manifest = store.get_manifest(ref)  # another conversion may have finished meanwhile
        if manifest.variant(FORMAT_ONNX) is not None:
            return ref, manifest
        gguf = _gguf_variant(ref, manifest)
        return ref, _convert(store, ref, gguf, hf_architecture, progress, cancel, timeout)


def check_tools(extra: tuple[str, ...] = ()) -> None:
    """Raise FailedPrecondition unless the convert extra (and ``extra``) is importable
    (imports nothing)."""
    missing = [m for m in (*REQUIRED_MODULES, *extra) if importlib.util.find_spec(m) is None]
    if missing:
        log.info("cannot convert to ONNX: missing %s", ", ".join(missing))
        raise FailedPrecondition(CONVERT_EXTRA_HINT)


def worker_argv(gguf: Path, work: Path, out: Path, hf_architecture: str) -> list[str]:
    """The command that runs the conversion (tests replace it)."""
    return [
        sys.executable,
        "-m",
        WORKER_MODULE,
        *("--gguf", str(gguf)),
        *("--work", str(work)),
        *("--out", str(out)),
        *("--hf-architecture", hf_architecture),
    ]


def _plan(ref: ModelRef, manifest: Manifest) -> str:
    _gguf_variant(ref, manifest)
    arch = manifest.architecture
    if arch not in HF_ARCHITECTURES:
        known = ", ".join(sorted(HF_ARCHITECTURES))
        raise FailedPrecondition(
            f"cannot convert '{ref}' to ONNX: its architecture {arch[:64]!r} is not supported "
            f"(supported: {known})"
        )
    return HF_ARCHITECTURES[arch]


def _gguf_variant(ref: ModelRef, manifest: Manifest) -> Variant:
    gguf = manifest.variant(FORMAT_GGUF)
    if gguf is None:
        raise FailedPrecondition(f"cannot convert '{ref}' to ONNX: it has no GGUF variant")
    return gguf


def _convert(
    store: Store,
    ref: ModelRef,
    gguf: Variant,
    hf_architecture: str,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    timeout: float,
) -> Manifest:
    with work_folder(store) as work, store.undo_new_blobs() as written:
        out = work / "out"
        argv = worker_argv(store.blob_path(gguf.main.digest), work, out, hf_architecture)
        run_worker(ref, argv, work, progress, cancel, timeout)
        try:
            files = folder.import_folder(
                store,
                out,
                written=written,
                progress=progress,
                cancel=cancel,
                status="storing the ONNX model",
            )
        except InvalidArgument as exc:
            raise ConversionFailed(f"the converter's output was refused: {exc}") from exc
        variant = Variant.of(
            ONNX_INT4_CPU,
            FORMAT_ONNX,
            files,
            quantization="int4",
            source=f"converted from gguf {gguf.main.digest}",
        )
        report(progress, "writing manifest")
        return store.update_manifest(ref, lambda current: _attach(ref, current, gguf, variant))


@contextmanager
def work_folder(store: Store) -> Iterator[Path]:
    """A conversion's own folder under the store's ``tmp/``, removed afterwards."""
    try:
        work = Path(tempfile.mkdtemp(prefix="convert-", dir=store.tmp_dir))
    except OSError as exc:
        raise storage_error(exc, "creating the conversion's work folder") from exc
    try:
        yield work
    finally:
        remove_tree(work)


def _attach(ref: ModelRef, current: Manifest | None, gguf: Variant, variant: Variant) -> Manifest:
    if current is None:
        raise ModelNotFound(f"model '{ref}' was removed while it was being converted")
    now = current.variant(FORMAT_GGUF)
    if now is None or now.digest != gguf.digest:
        raise FailedPrecondition(
            f"model '{ref}' changed while it was being converted; convert it again"
        )
    return current.with_variant(variant)


@contextmanager
def conversion_locked(
    store: Store, ref: ModelRef, progress: ProgressFn | None, cancel: threading.Event | None
) -> Iterator[None]:
    hasher = new_hasher()
    hasher.update(str(ref).encode())
    path = store.locks_dir / f"convert-{hasher.hexdigest()[:32]}.lock"
    with locks.locked(
        path,
        ephemeral=True,
        cancel=cancel,
        on_wait=lambda: report(progress, "waiting for another conversion of this model"),
    ):
        yield


# -- the worker process ---------------------------------------------------------------------


def worker_env(work: Path) -> dict[str, str]:
    """The child's environment: offline, its caches and temp files in ``work``."""
    env = dict(os.environ)
    (work / "tmp").mkdir(exist_ok=True)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(work / "hf-home"),
        TMPDIR=str(work / "tmp"),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_worker(
    ref: ModelRef,
    argv: list[str],
    work: Path,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    timeout: float,
    target: str = "ONNX",
    env: dict[str, str] | None = None,
) -> None:
    """Run a converter child speaking the JSON-line protocol (convert_worker.py):
    its phases become progress, ``cancel`` and ``timeout`` stop it and everything it
    started, and a failure raises ConversionFailed with the end of its log."""
    report(progress, "starting the converter")
    log_path = work / "convert.log"
    messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
    outcome: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with open(log_path, "wb") as log_file:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env if env is not None else worker_env(work),
                cwd=work,
                start_new_session=_POSIX,
            )
        except OSError as exc:
            raise ConversionFailed(
                f"cannot start the converter: {exc.strerror or type(exc).__name__}"
            ) from exc
        assert proc.stdout is not None
        reader = threading.Thread(target=_read_messages, args=(proc.stdout, messages), daemon=True)
        reader.start()
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("conversion cancelled")
                if time.monotonic() > deadline:
                    raise DeadlineExceeded(f"converting '{ref}' took longer than {timeout:.0f} s")
                try:
                    message = messages.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if message is None:  # the worker closed its stdout: it is ending
                    break
                _handle(message, progress, outcome)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            raise DeadlineExceeded(f"converting '{ref}' took longer than {timeout:.0f} s") from exc
        finally:
            _stop(proc)
            proc.stdout.close()
            reader.join(timeout=5)
    if proc.returncode != 0 or not outcome.get("done"):
        raise _failure(ref, proc.returncode, outcome.get("error", ""), log_path, work, target)


def _read_messages(stream: IO[bytes], messages: queue.Queue[dict[str, Any] | None]) -> None:
    try:
        for raw in stream:
            if len(raw) > MAX_MESSAGE_BYTES:
                continue
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict):
                messages.put(message)
    except (OSError, ValueError):
        pass  # closed by _stop
    finally:
        messages.put(None)


def _handle(message: dict[str, Any], progress: ProgressFn | None, outcome: dict[str, Any]) -> None:
    if message.get("done") is True:
        outcome["done"] = True
    elif isinstance(message.get("error"), str):
        outcome["error"] = message["error"][:1000]
    elif isinstance(message.get("status"), str):
        completed, total = message.get("completed", 0), message.get("total", 0)
        if not (_count(completed) and _count(total)):
            completed = total = 0
        report(progress, message["status"][:200], completed, total)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the worker and anything it started (on POSIX it leads its own process group)."""
    if proc.poll() is not None:
        return
    try:
        _signal(proc, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with suppress(ProcessLookupError):
            _signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
        proc.wait()


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if _POSIX:
        os.killpg(proc.pid, sig)
    else:  # pragma: no cover - Windows
        proc.send_signal(sig)


def _failure(
    ref: ModelRef, code: int, error: str, log_path: Path, work: Path, target: str = "ONNX"
) -> Exception:
    text = log_path.read_bytes()[-MAX_MESSAGE_BYTES:].decode("utf-8", errors="replace")
    log.warning("converting %s to %s failed (exit %s): %s\n%s", ref, target, code, error, text)
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if _worth_showing(line)]
    tail = " | ".join(lines[-LOG_TAIL_LINES:])
    detail = _redact(f"{error}; log: {tail}" if error else f"log: {tail or '(empty)'}", work)
    return ConversionFailed(f"converting '{ref}' to {target} failed (exit {code}): {detail[:3000]}")


def _worth_showing(line: str) -> bool:
    """Log lines for the error message: not tracebacks' frames, not progress bars."""
    stripped = line.strip()
    return bool(stripped) and not (
        line.startswith((" ", "\t"))
        or stripped.startswith("Traceback (most recent call last)")
        or "%|" in stripped
    )


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s'\"():,]+")


def _redact(text: str, work: Path) -> str:
    """Paths outside the store do not belong in a client-facing message."""
    text = text.replace(str(work), "<work>")
    return _ABSOLUTE_PATH.sub(lambda m: "<path>/" + m.group(0).rsplit("/", 1)[-1], text)
