"""Convert a model's safetensors variant into a GGUF variant with llama.cpp's tools.

The converter is llama.cpp's own ``convert_hf_to_gguf.py`` (with its
``conversion/`` package and ``gguf-py``) from the pinned llama.cpp sources: the
installer extracts them from the llama-cpp-python sdist into
``~/.cache/edged/llama.cpp-convert/VERSION/`` (installer/llama_build.py);
``EDGED_LLAMA_CONVERTER`` names another folder holding the same three things.
It runs in a child process (:mod:`.convert_gguf_worker`) with the ``convert``
extra's packages (torch, transformers), so the daemon never imports them; the
child speaks convert.py's JSON-line protocol, and convert.py's helpers run it
(progress, cancellation, timeout, the end of its log in the error).

Quantizations: ``f16`` and ``q8_0`` come straight from the converter
(``--outtype``); ``q4_k_m`` is quantized from an F16 GGUF by llama.cpp's
quantizer (``llama_cpp.llama_model_quantize``) in the same child.

A model has one GGUF variant, named "gguf": a new conversion replaces it, and
its ``source`` records the safetensors digest and the quantization. The result's
header is checked as any pulled GGUF's (read_gguf_info); a conversion that fails
or is cancelled leaves the manifests and blobs as they were.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from edged.common.errors import EdgedError, FailedPrecondition, InvalidArgument, ModelNotFound
from edged.common.gguf import read_gguf_info
from edged.common.model_facts import FORMAT_GGUF, FORMAT_SAFETENSORS

from . import safetensors_folder
from .convert import ConversionFailed, conversion_locked, run_worker, work_folder, worker_env
from .manifest import GGUF_VARIANT, ROLE_MODEL, Manifest, ManifestFile, Variant
from .names import ModelRef
from .progress import ProgressFn, report
from .store import Store
from .views import ensure_view

log = logging.getLogger(__name__)

QUANTS = ("f16", "q8_0", "q4_k_m")
DEFAULT_QUANT = "f16"
CONVERTER_ENV = "EDGED_LLAMA_CONVERTER"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
CONVERTER_PARTS = (CONVERTER_SCRIPT, "conversion", "gguf-py")
# The pinned llama-cpp-python (installer/llama_build.py) when it is not installed.
PINNED_LLAMA_CPP_VERSION = "0.3.36"
# Import names the worker needs (the ``convert`` extra; llama_cpp for q4_k_m).
REQUIRED_MODULES = ("torch", "transformers", "numpy", "yaml", "sentencepiece")
CONVERT_EXTRA_HINT = "converting to GGUF needs the convert extra: pip install 'edged[convert]'"
WORKER_MODULE = "edged.models_registry.convert_gguf_worker"
TIMEOUT_SECONDS = 4 * 3600.0
OUT_NAME = "model.gguf"


def convert_to_gguf(
    store: Store,
    model: str,
    quant: str = DEFAULT_QUANT,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    timeout: float = TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> tuple[ModelRef, Manifest]:
    """Give ``model`` (``name[:tag]``) a GGUF variant made from its safetensors.

    A model whose GGUF was already converted from the same safetensors at the same
    quantization is returned as it is. Raises InvalidArgument for an unknown
    quantization; FailedPrecondition when the model has no safetensors variant,
    the converter or the ``convert`` extra is missing; ConversionFailed when the
    converter fails; Cancelled when ``cancel`` is set.
    """
    quant = check_quant(quant)
    ref, manifest = store.resolve(model)
    st = _safetensors_variant(ref, manifest)
    if _done(manifest, st, quant):
        return ref, manifest
    converter = find_converter(env)
    check_tools(quant)
    with store.pinned(), conversion_locked(store, ref, progress, cancel):
        manifest = store.get_manifest(ref)  # another conversion may have finished meanwhile
        st = _safetensors_variant(ref, manifest)
        if _done(manifest, st, quant):
            return ref, manifest
        return ref, _convert(store, ref, manifest, st, quant, converter, progress, cancel, timeout)


def check_quant(quant: str) -> str:
    q = (quant or DEFAULT_QUANT).strip().lower()
    if q not in QUANTS:
        supported = ", ".join(QUANTS)
        raise InvalidArgument(f"cannot convert to GGUF {quant[:32]!r}; supported: {supported}")
    return q


def source_of(st: Variant, quant: str) -> str:
    """What the GGUF variant's ``source`` says (and how a repeat is recognized)."""
    return f"converted from safetensors {st.digest} ({quant})"


def converter_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where llama.cpp's converter is expected: EDGED_LLAMA_CONVERTER, else the
    installer's cache folder for the installed (or pinned) llama-cpp-python."""
    env = os.environ if env is None else env
    given = env.get(CONVERTER_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = PINNED_LLAMA_CPP_VERSION
    return Path(xdg) / "edged" / "llama.cpp-convert" / version


def find_converter(env: Mapping[str, str] | None = None) -> Path:
    """The converter's folder; FailedPrecondition saying how to get it when missing."""
    where = converter_dir(env)
    missing = [p for p in CONVERTER_PARTS if not (where / p).exists()]
    if missing:
        log.info("no llama.cpp converter in %s (missing %s)", where, ", ".join(missing))
        raise FailedPrecondition(
            f"llama.cpp's GGUF converter is not installed (looked in {where}): run "
            "./install.sh (or: python installer/llama_build.py --converter-only), or set "
            f"{CONVERTER_ENV} to a folder with {', '.join(CONVERTER_PARTS)}"
        )
    return where


def check_tools(quant: str) -> None:
    """Raise FailedPrecondition unless the worker's packages are importable."""
    wanted = REQUIRED_MODULES + (("llama_cpp",) if quant == "q4_k_m" else ())
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        log.info("cannot convert to GGUF: missing %s", ", ".join(missing))
        raise FailedPrecondition(CONVERT_EXTRA_HINT)


def worker_argv(folder: Path, converter: Path, work: Path, out: Path, quant: str) -> list[str]:
    """The command that runs the conversion (tests replace it)."""
    return [
        sys.executable,
        "-m",
        WORKER_MODULE,
        *("--folder", str(folder)),
        *("--converter", str(converter)),
        *("--work", str(work)),
        *("--out", str(out)),
        *("--quant", quant),
    ]


def _safetensors_variant(ref: ModelRef, manifest: Manifest) -> Variant:
    """The variant to convert, refused before any converter runs unless it has
    config.json and safetensors weights and no pickles (which are never loaded)."""
    st = manifest.variant(FORMAT_SAFETENSORS)
    if st is None:
        raise FailedPrecondition(
            f"cannot convert '{ref}' to GGUF: it has no safetensors variant (pull a Hugging "
            "Face model folder with .safetensors weights)"
        )
    paths = [f.path for f in st.files]
    try:
        kept = safetensors_folder.choose(paths, f"the safetensors variant of '{ref}'")
    except InvalidArgument as exc:
        raise FailedPrecondition(f"cannot convert '{ref}' to GGUF: {exc}") from exc
    if kept != paths:
        raise FailedPrecondition(
            f"cannot convert '{ref}' to GGUF: its safetensors variant lists pickled weights, "
            "which edged never loads"
        )
    return st


def _done(manifest: Manifest, st: Variant, quant: str) -> bool:
    gguf = manifest.variant(FORMAT_GGUF)
    return gguf is not None and gguf.source == source_of(st, quant)


def _convert(
    store: Store,
    ref: ModelRef,
    manifest: Manifest,
    st: Variant,
    quant: str,
    converter: Path,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    timeout: float,
) -> Manifest:
    with work_folder(store) as work, store.undo_new_blobs() as written:
        # The safetensors folder as symlinks to its blobs, inside the work folder
        # (not under views/: a failed conversion changes nothing in the store).
        for f in st.files:
            if not store.has_blob(f.digest):
                raise FailedPrecondition(
                    f"model '{ref}' is incomplete: {f.path!r} is missing; pull it again"
                )
        links = [(f.path, store.blob_path(f.digest)) for f in st.files]
        folder = ensure_view(work / "safetensors", work, links)
        out = work / OUT_NAME
        argv = worker_argv(folder, converter, work, out, quant)
        run_worker(ref, argv, work, progress, cancel, timeout, "GGUF", worker_env(work))
        report(progress, "checking the GGUF header")
        try:
            info = read_gguf_info(out)
        except (EdgedError, OSError) as exc:
            raise ConversionFailed(f"the converter's output was refused: {exc}") from exc
        digest = store.import_file(out, progress=progress, cancel=cancel)
        written.append(digest)
        size = store.blob_path(digest).stat().st_size
        variant = Variant.of(
            GGUF_VARIANT,
            FORMAT_GGUF,
            (ManifestFile(ROLE_MODEL, digest, size, f"{ref.name}-{quant}.gguf"),),
            quantization=info.quantization,
            source=source_of(st, quant),
        )
        report(progress, "writing manifest")
        return store.update_manifest(
            ref,
            lambda current: _attach(
                ref,
                current,
                st,
                variant,
                architecture=info.architecture,
                parameters=info.parameters,
                context_length=info.context_length,
            ),
        )


def _attach(
    ref: ModelRef,
    current: Manifest | None,
    st: Variant,
    variant: Variant,
    *,
    architecture: str,
    parameters: int,
    context_length: int,
) -> Manifest:
    if current is None:
        raise ModelNotFound(f"model '{ref}' was removed while it was being converted")
    now = current.variant(FORMAT_SAFETENSORS)
    if now is None or now.digest != st.digest:
        raise FailedPrecondition(
            f"model '{ref}' changed while it was being converted; convert it again"
        )
    # The GGUF replaces any earlier one (the one GGUF variant, "gguf"), and now is
    # the primary file: the model's header facts are its.
    kept = tuple(v for v in current.variants if v.format != FORMAT_GGUF or v.name != variant.name)
    return dataclasses.replace(
        current,
        variants=(variant, *kept),
        architecture=architecture or current.architecture,
        quantization=variant.quantization,
        parameters=parameters or current.parameters,
        context_length=context_length or current.context_length,
    )
