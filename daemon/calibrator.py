"""Running CPU calibrations for a model through the scheduler.

:mod:`edged.daemon.calibration` defines a measurement and caches its result;
this module decides what to measure (every installed CPU backend that can run
the model) and runs it:

- speed on a worker the scheduler provides
  (:meth:`~edged.daemon.scheduler.Scheduler.dedicated`), so memory admission
  and EDGED_MAX_LOADED apply to calibration runs like to any load; the worker
  holds as many sequences as the daemon's configured parallelism;
- fidelity against the model's reference in a child process
  (:mod:`edged.backends.fidelity_run`), after the speed run has let its worker go.

The reference is the most faithful computation of the model edged can make:
its largest variant (more bits per weight) that a backend can read the
evaluation text with and return logits for (:func:`reference_for`), and, where
that backend makes one (llama.cpp: the GGUF's own weights dequantized to F32,
up to :data:`~edged.backends.llamacpp.exact.MAX_EXACT_BYTES`), that variant's
exact-arithmetic copy, made once per calibration in the store's scratch folder
and removed afterwards. Against an exact copy the variant itself is measured
too: llama.cpp's own kernels round activations to 8 bits and accumulate
attention in F16, and are not the truth of their weights.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edged.backends import registry
from edged.backends.base import Done, Job, Stats
from edged.common.errors import Internal
from edged.common.hardware_profile import HardwareProfile
from edged.daemon import calibration
from edged.daemon.request_ids import next_request_id
from edged.daemon.scheduler import ResolvedModel, Scheduler
from edged.daemon.selection import Ranking, Selection, cpu_choices
from edged.models_registry.manifest import Manifest, Variant

log = logging.getLogger(__name__)

CALIBRATION_CONTEXT = 512  # tokens per sequence: prompt 64 + 32 decoded
MAX_STREAMS = 16  # the aggregate figure's parallelism at most (EDGED_PARALLEL may be larger)
FIDELITY_TOKENS = 1024  # of the evaluation text, teacher-forced
FIDELITY_TIMEOUT_S = 1200.0
FIDELITY_ANSWER_BYTES = 1 << 16
MAX_EXACT_BYTES = 2 << 30  # edged.backends.llamacpp.exact.MAX_EXACT_BYTES (not imported here)
EXACT_TIMEOUT_S = 600.0


@dataclasses.dataclass(frozen=True)
class Reference:
    backend: str
    variant: Variant
    path: str
    exact: bool = False  # ``path`` is the variant's exact-arithmetic copy

    @property
    def label(self) -> str:
        if self.exact:
            return (
                f"exact arithmetic (the {self.variant.format} variant {self.variant.name!r} "
                f"dequantized to F32, on {self.backend})"
            )
        return f"{self.backend} on {self.variant.format} variant {self.variant.name!r}"

    @property
    def digest(self) -> str:
        """What a cached fidelity was measured against (the exact copy counts apart)."""
        return f"{self.variant.digest}+f32" if self.exact else self.variant.digest


class ExactReference:
    """The reference a calibration measures against: the exact copy, made on first
    use (in the fidelity child) and removed by :meth:`remove`, or the variant
    itself when the backend makes no copy, the model is too large for one, or
    making it failed (logged; a later calibration tries again)."""

    def __init__(self, base: Reference, manifest: Manifest, scratch: Path, log_path: Path) -> None:
        self.base = base
        hook = registry.backend_info(base.backend).exact_reference
        weights = manifest.parameters * 4 if manifest.parameters > 0 else base.variant.size * 8
        self.planned = bool(hook) and weights <= MAX_EXACT_BYTES
        self._dest = scratch / f"fidelity-{secrets.token_hex(8)}.f32.gguf"
        self._log_path = log_path
        self._made: Reference | None = None
        self._lock = asyncio.Lock()

    @property
    def digest(self) -> str:
        """The digest fidelity will be measured against when all goes to plan."""
        return dataclasses.replace(self.base, exact=self.planned).digest

    async def get(self) -> Reference:
        async with self._lock:
            if self._made is None:
                self._made = await self._make() if self.planned else self.base
            return self._made

    async def _make(self) -> Reference:
        request = {
            "exact_reference": {
                "backend": self.base.backend,
                "source": self.base.path,
                "dest": str(self._dest),
                "max_bytes": MAX_EXACT_BYTES,
            }
        }
        try:
            answer = await _run_child(request, self._log_path, EXACT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            answer = {"error": str(exc)}
        if "error" in answer or not self._dest.is_file():
            log.warning(
                "no exact-arithmetic reference for %s (%s); measuring against the variant itself",
                self.base.variant.name,
                str(answer.get("error", "no file"))[:300],
            )
            return self.base
        return dataclasses.replace(self.base, path=str(self._dest), exact=True)

    def remove(self) -> None:
        self._dest.unlink(missing_ok=True)


def reference_for(manifest: Manifest) -> tuple[str, Variant] | None:
    """The most faithful (backend, variant): the largest variant some backend can
    use as a reference (logits, greedy continuations and a tokenizer)."""
    able = [
        b
        for b in registry.BACKENDS
        if b.teacher_forced and b.greedy and b.tokenizer and "cpu" in b.devices
    ]
    best: tuple[str, Variant] | None = None
    for v in manifest.variants:
        b = next((b for b in able if v.format in b.formats), None)
        if b is not None and (best is None or v.size > best[1].size):
            best = (b.name, v)
    return best


class Calibrator:
    def __init__(self, selection: Selection, scheduler: Scheduler) -> None:
        self._selection = selection
        self._scheduler = scheduler

    @property
    def streams(self) -> int:
        return max(1, min(MAX_STREAMS, self._selection.config.engine.max_sequences))

    async def calibrate(
        self, model: str, *, force: bool = False
    ) -> tuple[Ranking, list[calibration.Outcome]]:
        """Measure every CPU backend that can run ``model`` (cached unless ``force``);
        returns the ranking made with the new figures and what happened."""
        sel = self._selection
        hw = await asyncio.to_thread(lambda: sel.hardware)
        plain = await asyncio.to_thread(sel.rank, model, "", "", hardware=hw)
        base = await asyncio.to_thread(self._reference, plain.manifest)
        ref = (
            ExactReference(base, plain.manifest, sel.store.tmp_dir, self._log_path)
            if base is not None
            else None
        )
        try:
            return await self._calibrate(model, plain, hw, ref, force=force)
        finally:
            if ref is not None:
                ref.remove()

    @property
    def _log_path(self) -> Path:
        return self._selection.config.paths.log_dir / "fidelity.log"

    async def _calibrate(
        self,
        model: str,
        plain: Ranking,
        hw: HardwareProfile,
        ref: ExactReference | None,
        *,
        force: bool,
    ) -> tuple[Ranking, list[calibration.Outcome]]:
        sel = self._selection
        machine = calibration.machine_key(hw)
        versions = sel.versions()
        outcomes: list[calibration.Outcome] = []
        for c in cpu_choices(plain):
            if not c.available:
                continue
            resolved = sel.resolve_choice(plain, c)
            kv = sel.kv_type_for(plain.name, c.backend)
            target = calibration.Target(c.backend, "cpu", versions.get(c.backend, ""), kv)

            async def run(
                backend: str,
                device: str,
                phases: Sequence[Sequence[Job]],
                r: ResolvedModel = resolved,
                kv: str = kv,
            ) -> list[list[Stats]]:
                return await self._run_phases(r, phases, kv)

            async def fidelity(
                t: calibration.Target, r: ResolvedModel = resolved
            ) -> calibration.Fidelity:
                assert ref is not None  # only passed on when there is a reference
                return await self._fidelity(await ref.get(), r, t.kv_type)

            outcomes += await calibration.calibrate(
                run,
                [target],
                model_digest=resolved.digest,
                machine=machine,
                cache=sel.calibrations,
                force=force,
                streams=self.streams,
                fidelity=fidelity if ref is not None else None,
                reference_digest=ref.digest if ref is not None else "",
            )
        ranking = await asyncio.to_thread(sel.rank, model, "", "", hardware=hw)
        return ranking, outcomes

    def _reference(self, manifest: Manifest) -> Reference | None:
        found = reference_for(manifest)
        if found is None:
            return None
        backend, variant = found
        path = self._selection.store.materialize(manifest, variant)
        return Reference(backend, variant, str(path))

    async def _run_phases(
        self, model: ResolvedModel, phases: Sequence[Sequence[Job]], kv_type: str
    ) -> list[list[Stats]]:
        widest = max((len(p) for p in phases), default=1)
        async with self._scheduler.dedicated(
            model,
            context_length=CALIBRATION_CONTEXT,
            purpose="calibration",
            sequences=widest,
            kv_type=kv_type,
        ) as worker:

            async def one(job: Job) -> Stats:
                job = dataclasses.replace(job, request_id=next_request_id())
                done: Stats | None = None
                async for ev in worker.run(job):
                    if isinstance(ev, Done):
                        done = ev.stats
                if done is None:
                    raise Internal("the calibration run ended without its statistics")
                return done

            out: list[list[Stats]] = []
            for phase in phases:
                out.append(list(await asyncio.gather(*(one(j) for j in phase))))
            return out

    async def _fidelity(
        self, ref: Reference, model: ResolvedModel, kv_type: str
    ) -> calibration.Fidelity:
        """The candidate's fidelity, measured in a child process (errors recorded)."""
        failed = functools.partial(
            calibration.Fidelity, "", reference=ref.label, reference_digest=ref.digest
        )
        request = {
            "reference": {"backend": ref.backend, "path": ref.path},
            "candidate": {"backend": model.backend, "path": model.path, "kv_type": kv_type},
            "tokens": FIDELITY_TOKENS,
            "threads": self._selection.config.engine.threads,
        }
        try:
            answer = await _run_child(request, self._log_path)
        except (OSError, TimeoutError, ValueError) as exc:
            return failed(error=f"the fidelity run failed: {exc}")
        if "error" in answer:
            return failed(error=str(answer["error"])[:500])
        try:
            return calibration.Fidelity(
                measure=str(answer["measure"]),
                agreement=float(answer["agreement"]),
                mean_kl=float(answer["mean_kl"]),
                perplexity=float(answer["perplexity_candidate"]),
                perplexity_reference=float(answer["perplexity_reference"]),
                tokens=int(answer["tokens"]),
                reference=ref.label,
                reference_digest=ref.digest,
            )
        except (KeyError, TypeError, ValueError) as exc:
            return failed(error=f"malformed answer: {exc!r}")


async def _run_child(
    request: dict[str, Any], log_path: Path, timeout_s: float = FIDELITY_TIMEOUT_S
) -> dict[str, Any]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edged.backends.fidelity_run",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
        try:
            out, _ = await asyncio.wait_for(
                proc.communicate(json.dumps(request).encode()), timeout_s
            )
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    line = out[:FIDELITY_ANSWER_BYTES].decode("utf-8", "replace").strip().splitlines()
    if not line:
        raise ValueError(f"no answer (exit status {proc.returncode}; see {log_path})")
    answer = json.loads(line[-1])
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    return answer
