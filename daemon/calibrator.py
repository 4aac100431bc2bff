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

The reference is the most faithful variant the model has: its largest GGUF
(more bits per weight), run by a backend that can read the evaluation text and
return logits (:func:`reference_for`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edged.backends import registry
from edged.backends.base import Done, Job, Stats
from edged.common.errors import Internal
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


@dataclasses.dataclass(frozen=True)
class Reference:
    backend: str
    variant: Variant
    path: str

    @property
    def label(self) -> str:
        return f"{self.backend} on {self.variant.format} variant {self.variant.name!r}"


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
        machine = calibration.machine_key(hw)
        versions = sel.versions()
        ref = await asyncio.to_thread(self._reference, plain.manifest)
        outcomes: list[calibration.Outcome] = []
        for c in cpu_choices(plain):
            if not c.available:
                continue
            resolved = sel.resolve_choice(plain, c)
            target = calibration.Target(c.backend, "cpu", versions.get(c.backend, ""))

            async def run(
                backend: str,
                device: str,
                phases: Sequence[Sequence[Job]],
                r: ResolvedModel = resolved,
            ) -> list[list[Stats]]:
                return await self._run_phases(r, phases)

            async def fidelity(
                t: calibration.Target, r: ResolvedModel = resolved
            ) -> calibration.Fidelity:
                assert ref is not None  # only passed on when there is a reference
                return await self._fidelity(ref, r)

            outcomes += await calibration.calibrate(
                run,
                [target],
                model_digest=resolved.digest,
                machine=machine,
                cache=sel.calibrations,
                force=force,
                streams=self.streams,
                fidelity=fidelity if ref is not None else None,
                reference_digest=ref.variant.digest if ref is not None else "",
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
        self, model: ResolvedModel, phases: Sequence[Sequence[Job]]
    ) -> list[list[Stats]]:
        widest = max((len(p) for p in phases), default=1)
        async with self._scheduler.dedicated(
            model, context_length=CALIBRATION_CONTEXT, purpose="calibration", sequences=widest
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

    async def _fidelity(self, ref: Reference, model: ResolvedModel) -> calibration.Fidelity:
        """The candidate's fidelity, measured in a child process (errors recorded)."""
        failed = functools.partial(
            calibration.Fidelity, "", reference=ref.label, reference_digest=ref.variant.digest
        )
        request = {
            "reference": {"backend": ref.backend, "path": ref.path},
            "candidate": {"backend": model.backend, "path": model.path},
            "tokens": FIDELITY_TOKENS,
            "threads": self._selection.config.engine.threads,
        }
        log_path = self._selection.config.paths.log_dir / "fidelity.log"
        try:
            answer = await _run_child(request, log_path)
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
                reference_digest=ref.variant.digest,
            )
        except (KeyError, TypeError, ValueError) as exc:
            return failed(error=f"malformed answer: {exc!r}")


async def _run_child(request: dict[str, Any], log_path: Path) -> dict[str, Any]:
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
                proc.communicate(json.dumps(request).encode()), FIDELITY_TIMEOUT_S
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
