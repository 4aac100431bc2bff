"""Measure one candidate's fidelity against a reference, in a child process.

    python -m edged.backends.fidelity_run < request.json

The daemon's calibration (and ``bench``) runs this module so that the model
libraries, two loaded models and a few hundred MB of logits never enter the
daemon. The request (JSON on stdin)::

    {"reference": {"backend": "llama.cpp", "path": "/store/blobs/..."},
     "candidate": {"backend": "onnxruntime", "path": "/store/.../onnx", "kv_type": "f16"},
     "tokens": 1024, "window": 512, "threads": 2,
     "greedy_prompts": 32, "greedy_prompt_tokens": 48, "greedy_new_tokens": 16}

The candidate runs with the KV cache type a load of it gets (``kv_type``,
default f16; only a backend that offers the type can be asked for it).

It also writes a model's exact-arithmetic reference (the backend's
``exact_reference`` hook: for a GGUF, its weights in F32)::

    {"exact_reference": {"backend": "llama.cpp", "source": "/store/blobs/...",
                         "dest": "/store/tmp/...", "max_bytes": 2147483648}}

and answers ``{"path": dest, "bytes": N}``.

The reference must offer logits, greedy continuations and a tokenizer (a
GGUF on llama.cpp does; its tokenizer reads the evaluation text). The measure
is "logits" (teacher-forced, :func:`fidelity.measure`) when both backends can
return logits, else "greedy" (greedy continuations,
:func:`fidelity.greedy_measure`); each backend says what it can in its
:class:`~edged.backends.info.BackendInfo`. The answer (one JSON line on
stdout) is a :class:`~edged.backends.fidelity.Fidelity` or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from edged.backends import fidelity, registry
from edged.backends.base import KV_TYPES
from edged.backends.info import load_hook
from edged.common.errors import EdgedError, InvalidArgument

MAX_REQUEST_BYTES = 1 << 16


@dataclass(frozen=True)
class Request:
    reference_backend: str
    reference_path: str
    candidate_backend: str
    candidate_path: str
    candidate_kv_type: str = "f16"
    tokens: int = 1024
    window: int = 512
    threads: int = 2
    greedy_prompts: int = 32
    greedy_prompt_tokens: int = 48
    greedy_new_tokens: int = 16

    @classmethod
    def from_json(cls, raw: Any) -> Request:
        if not isinstance(raw, dict):
            raise InvalidArgument("the fidelity request must be a JSON object")
        try:
            ref, cand = raw["reference"], raw["candidate"]
            knobs = {
                k: int(raw[k])
                for k in (
                    "tokens",
                    "window",
                    "threads",
                    "greedy_prompts",
                    "greedy_prompt_tokens",
                    "greedy_new_tokens",
                )
                if k in raw
            }
            kv = str(cand.get("kv_type") or "f16")
            req = cls(
                str(ref["backend"]),
                str(ref["path"]),
                str(cand["backend"]),
                str(cand["path"]),
                kv,
                **knobs,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"malformed fidelity request: {exc!r}") from exc
        if kv not in KV_TYPES:
            raise InvalidArgument(f"unknown KV cache type {kv[:20]!r}")
        return req


def make_exact_reference(raw: Any) -> dict[str, Any]:
    """Write a variant's exact-arithmetic copy with its backend's hook."""
    try:
        backend, source, dest = str(raw["backend"]), str(raw["source"]), str(raw["dest"])
        max_bytes = int(raw["max_bytes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"malformed exact reference request: {exc!r}") from exc
    info = registry.backend_info(backend)
    if not info.exact_reference:
        raise InvalidArgument(f"{info.name} makes no exact-arithmetic reference")
    written = int(load_hook(info.exact_reference)(source, dest, max_bytes))
    return {"path": dest, "bytes": written}


def run(req: Request) -> fidelity.Fidelity:
    ref_info = registry.backend_info(req.reference_backend)
    cand_info = registry.backend_info(req.candidate_backend)
    same = (req.reference_backend, req.reference_path) == (
        req.candidate_backend,
        req.candidate_path,
    )
    if same and req.candidate_kv_type == "f16":
        return fidelity.Fidelity(0, 1.0, 0.0, 0.0, 0.0, measure="reference")
    kv: dict[str, Any] = {}
    if req.candidate_kv_type != "f16":
        if req.candidate_kv_type not in cand_info.kv_types:
            raise InvalidArgument(
                f"{cand_info.name} has no {req.candidate_kv_type} KV cache "
                f"(it offers {', '.join(cand_info.kv_types)})"
            )
        kv = {"kv_type": req.candidate_kv_type}
    if not (ref_info.teacher_forced and ref_info.greedy and ref_info.tokenizer):
        raise InvalidArgument(f"{ref_info.name} cannot be a fidelity reference")
    tokenize = load_hook(ref_info.tokenizer)
    tokens = tokenize(req.reference_path, fidelity.eval_text())[: max(2, req.tokens)]
    if cand_info.teacher_forced:
        window = max(2, req.window)
        batch = window
        opened: list[Any] = []
        try:
            for info, path, extra in (
                (ref_info, req.reference_path, {}),
                (cand_info, req.candidate_path, kv),
            ):
                open_source = load_hook(info.teacher_forced)
                opened.append(
                    open_source(path, window=window, batch=batch, threads=req.threads, **extra)
                )
            return fidelity.measure(opened[0], opened[1], tokens, window=window, batch=batch)
        finally:
            for source in opened:
                source.close()
    if cand_info.greedy:
        prompts = fidelity.greedy_prompts(tokens, req.greedy_prompts, req.greedy_prompt_tokens)
        greedy: list[Any] = []
        try:
            for info, path, extra in (
                (ref_info, req.reference_path, {}),
                (cand_info, req.candidate_path, kv),
            ):
                greedy.append(load_hook(info.greedy)(path, threads=req.threads, **extra))
            return fidelity.greedy_measure(greedy[0], greedy[1], prompts, req.greedy_new_tokens)
        finally:
            for source in greedy:
                source.close()
    raise InvalidArgument(f"{cand_info.name} offers no way to compare its answers")


def main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # native libraries' chatter goes to stderr
    try:
        raw = json.loads(sys.stdin.read(MAX_REQUEST_BYTES))
        answer: dict[str, Any]
        if isinstance(raw, dict) and "exact_reference" in raw:
            answer = make_exact_reference(raw["exact_reference"])
        else:
            answer = run(Request.from_json(raw)).to_json()
    except EdgedError as exc:
        answer = {"error": str(exc)}
    except Exception as exc:  # a library failure: reported, never a traceback on stdout
        answer = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    out.write(json.dumps(answer) + "\n")
    out.flush()
    return 0 if "error" not in answer else 1


if __name__ == "__main__":
    raise SystemExit(main())
