"""Running CPU calibrations for a model through the scheduler.

:mod:`edged.daemon.calibration` defines a measurement and caches its result;
this module decides what to measure (every installed CPU backend that can run
the model) and runs each measurement on a worker the scheduler provides
(:meth:`~edged.daemon.scheduler.Scheduler.dedicated`), so memory admission and
EDGED_MAX_LOADED apply to calibration runs like to any load.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from edged.backends.base import Done, Job, Stats
from edged.common.errors import Internal
from edged.daemon import calibration
from edged.daemon.request_ids import next_request_id
from edged.daemon.scheduler import ResolvedModel, Scheduler
from edged.daemon.selection import Ranking, Selection, cpu_choices

CALIBRATION_CONTEXT = 512  # tokens: the calibration worker's context (prompt 64 + 32)


class Calibrator:
    def __init__(self, selection: Selection, scheduler: Scheduler) -> None:
        self._selection = selection
        self._scheduler = scheduler

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
        outcomes: list[calibration.Outcome] = []
        for c in cpu_choices(plain):
            if not c.available:
                continue
            resolved = sel.resolve_choice(plain, c)
            target = calibration.Target(c.backend, "cpu", versions.get(c.backend, ""))

            async def run(
                backend: str, device: str, jobs: Sequence[Job], r: ResolvedModel = resolved
            ) -> list[Stats]:
                return await self._run_jobs(r, jobs)

            outcomes += await calibration.calibrate(
                run,
                [target],
                model_digest=resolved.digest,
                machine=machine,
                cache=sel.calibrations,
                force=force,
            )
        ranking = await asyncio.to_thread(sel.rank, model, "", "", hardware=hw)
        return ranking, outcomes

    async def _run_jobs(self, model: ResolvedModel, jobs: Sequence[Job]) -> list[Stats]:
        async with self._scheduler.dedicated(
            model, context_length=CALIBRATION_CONTEXT, purpose="calibration"
        ) as worker:
            out: list[Stats] = []
            for job in jobs:
                job = dataclasses.replace(job, request_id=next_request_id())
                done: Stats | None = None
                async for ev in worker.run(job):
                    if isinstance(ev, Done):
                        done = ev.stats
                if done is None:
                    raise Internal("the calibration run ended without its statistics")
                out.append(done)
            return out
