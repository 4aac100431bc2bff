"""The daemon's components wired together (what the gRPC services call).

Backend selection lives here as far as the daemon is concerned: :meth:`App.rank`
gathers the facts (the hardware profile, the model's variants and their header
facts, the installed backends, the overrides, cached calibration figures) and
hands them to the pure :func:`~edged.daemon.hardware.rank_backends`;
:meth:`App.resolve` turns the first available choice into a
:class:`ResolvedModel` for the scheduler.

Overrides, highest first: the request's backend/device, the model's settings
(``Models.Configure``, :mod:`edged.models_registry.settings`), then
EDGED_BACKEND / EDGED_DEVICE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edged.backends.base import Done, Job, LoadSpec, Stats
from edged.backends.registry import BACKENDS, backend_info, is_installed
from edged.daemon import calibration
from edged.daemon.config import ServerConfig
from edged.daemon.errors import EdgedError, FailedPrecondition, Internal, InvalidArgument
from edged.daemon.hardware import (
    BackendSpec,
    Choice,
    HardwareMonitor,
    HardwareProfile,
    Overrides,
    VariantInfo,
    pick_overrides,
    rank_backends,
    registry_backends,
)
from edged.daemon.memory import MemoryEstimate, ModelFacts, estimate_memory, model_facts
from edged.daemon.scheduler import ResolvedModel, Scheduler
from edged.daemon.sessions import SessionStore
from edged.models_registry.manifest import Manifest, Variant
from edged.models_registry.settings import ModelSettings, SettingsStore
from edged.models_registry.store import Store

log = logging.getLogger(__name__)

CALIBRATION_CONTEXT = 512  # tokens: the calibration worker's context (prompt 64 + 32)


def variant_digest(variant: Variant) -> str:
    """One digest per variant (workers and saved KV are keyed by it)."""
    return variant.digest


def installed_backends() -> list[str]:
    return [b.name for b in BACKENDS if is_installed(b)]


@dataclass(frozen=True)
class Ranking:
    """What :meth:`App.rank` found for one model."""

    name: str  # "name:tag"
    manifest: Manifest
    choices: tuple[Choice, ...]
    overrides: Overrides
    context_length: int
    sequences: int
    calibrations: tuple[calibration.Calibration, ...] = ()

    @property
    def chosen(self) -> Choice | None:
        return next((c for c in self.choices if c.available), None)


@dataclass
class App:
    config: ServerConfig
    store: Store
    scheduler: Scheduler
    sessions: SessionStore
    # Probed once in the background at start-up (the optional probes run in
    # child processes); `edged hw` refreshes it. Installing a backend needs a
    # daemon restart (`installed` is probed with find_spec once).
    monitor: HardwareMonitor = field(default_factory=lambda: HardwareMonitor().start())
    installed: tuple[str, ...] = field(default_factory=lambda: tuple(installed_backends()))
    settings: SettingsStore | None = None
    calibrations: calibration.CalibrationCache | None = None
    _facts: dict[str, ModelFacts] = field(default_factory=dict, repr=False)
    _backends: tuple[BackendSpec, ...] | None = field(default=None, repr=False)
    _facts_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = SettingsStore(self.store.root)
        if self.calibrations is None:
            self.calibrations = calibration.CalibrationCache(self.config.paths.cache_dir)
        wanted = self.config.selection.backend
        if wanted:
            backend_info(wanted)  # an unknown EDGED_BACKEND fails at start-up

    @property
    def hardware(self) -> HardwareProfile:
        """The probed profile (waits for the start-up probe the first time)."""
        return self.monitor.profile()

    def backends(self) -> tuple[BackendSpec, ...]:
        """The registry's backends with their versions (looked up once: they are
        fixed for the daemon's life, like ``installed``, and each lookup scans
        site-packages, ~2.4 ms of every request here)."""
        if self._backends is None:
            self._backends = registry_backends(self.installed)
        return self._backends

    # ------------------------------------------------------------ selection

    def model_settings(self, name: str) -> ModelSettings:
        return self.settings.get(name) if self.settings is not None else ModelSettings()

    def overrides(self, name: str, backend: str = "", device: str = "") -> Overrides:
        """request > the model's settings > EDGED_BACKEND/EDGED_DEVICE."""
        s = self.model_settings(name)
        g = self.config.selection
        return pick_overrides(
            Overrides(backend, device, "the request"),
            Overrides(s.backend, s.device, f"the settings of {name}"),
            Overrides(g.backend, g.device, "EDGED_BACKEND/EDGED_DEVICE"),
        )

    def facts(self, manifest: Manifest, variant: Variant) -> ModelFacts | None:
        """The variant's header facts (cached by digest); None when unreadable."""
        digest = variant_digest(variant)
        with self._facts_lock:
            known = self._facts.get(digest)
        if known is not None:
            return known
        try:
            path = self.store.materialize(manifest, variant)
            found = model_facts(Path(path), variant.format)
        except EdgedError as exc:
            log.warning("no memory facts for %s: %s", variant.name, exc)
            return None
        with self._facts_lock:
            self._facts[digest] = found
        return found

    def rank(
        self,
        model: str,
        backend: str = "",
        device: str = "",
        *,
        context_length: int = 0,
        hardware: HardwareProfile | None = None,
    ) -> Ranking:
        """Rank every backend/device for ``model`` with the reasons (pure below)."""
        if backend:
            try:
                backend_info(backend)
            except FailedPrecondition as exc:
                raise InvalidArgument(str(exc)) from None
        ref, manifest = self.store.resolve(model)
        name = str(ref)
        hw = hardware if hardware is not None else self.hardware
        ctx = (
            context_length
            or self.model_settings(name).context_length
            or self.config.engine.context_length
        )
        seqs = self.config.engine.max_sequences
        variants = [
            VariantInfo(v.name, v.format, v.size, self.facts(manifest, v))
            for v in manifest.variants
        ]
        cals = self.cached_calibrations(manifest, hw)
        overrides = self.overrides(name, backend, device)
        choices = rank_backends(
            hw,
            variants,
            self.backends(),
            context_length=ctx,
            sequences=seqs,
            overrides=overrides,
            calibrations={(c.backend, c.device): c.decode_tokens_per_second for c in cals},
        )
        return Ranking(name, manifest, tuple(choices), overrides, ctx, seqs, tuple(cals))

    def backend_choices(self, model: str) -> list[Choice]:
        return list(self.rank(model).choices)

    def memory_estimate(self, ranking: Ranking) -> MemoryEstimate | None:
        """The estimate for the chosen backend, device and settings."""
        c = ranking.chosen
        if c is None:
            return None
        v = ranking.manifest.variant_named(c.variant)
        facts = self.facts(ranking.manifest, v) if v is not None else None
        if facts is None:
            return None
        return estimate_memory(
            facts,
            context_length=ranking.context_length,
            sequences=ranking.sequences,
            backend=c.backend,
            device=c.device,
        )

    def resolve(self, model: str, backend: str = "", device: str = "") -> ResolvedModel:
        ranking = self.rank(model, backend, device)
        c = ranking.chosen
        if c is None:
            raise FailedPrecondition(_no_backend(ranking))
        variant = ranking.manifest.variant_named(c.variant)
        if variant is None:  # the ranking only names variants of this manifest
            raise Internal(f"variant {c.variant!r} of {ranking.name} vanished")
        return ResolvedModel(
            name=ranking.name,
            digest=variant_digest(variant),
            path=str(self.store.materialize(ranking.manifest, variant)),
            format=variant.format,
            system_prompt=ranking.manifest.system_prompt,
            sampling_defaults=ranking.manifest.sampling,
            backend=c.backend,
            device=c.device,
            gpu_layers=c.gpu_layers,
        )

    # ------------------------------------------------------------ calibration

    def _versions(self) -> dict[str, str]:
        return {b.name: b.version for b in self.backends()}

    def cached_calibrations(
        self, manifest: Manifest, hw: HardwareProfile
    ) -> list[calibration.Calibration]:
        assert self.calibrations is not None
        machine = calibration.machine_key(hw)
        out = []
        for b in self.backends():
            if not b.installed:
                continue
            v = next((v for v in manifest.variants if v.format in b.formats), None)
            if v is None:
                continue
            t = calibration.Target(b.name, "cpu", b.version)
            found = self.calibrations.get(machine, variant_digest(v), t)
            if found is not None:
                out.append(found)
        return out

    async def calibrate(
        self, model: str, *, force: bool = False
    ) -> tuple[Ranking, list[calibration.Outcome]]:
        """Measure every CPU backend that can run ``model`` (cached unless ``force``);
        returns the ranking made with the new figures and what happened."""
        hw = await asyncio.to_thread(lambda: self.hardware)
        plain = await asyncio.to_thread(self.rank, model, "", "", hardware=hw)
        assert self.calibrations is not None
        machine = calibration.machine_key(hw)
        versions = self._versions()
        outcomes: list[calibration.Outcome] = []
        for c in _cpu(plain):
            if not c.available:
                continue
            variant = plain.manifest.variant_named(c.variant)
            if variant is None:
                continue
            resolved = ResolvedModel(
                name=plain.name,
                digest=variant_digest(variant),
                path=str(self.store.materialize(plain.manifest, variant)),
                format=variant.format,
                backend=c.backend,
                device="cpu",
            )
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
                cache=self.calibrations,
                force=force,
            )
        ranking = await asyncio.to_thread(self.rank, model, "", "", hardware=hw)
        return ranking, outcomes

    async def _run_jobs(self, model: ResolvedModel, jobs: Sequence[Job]) -> list[Stats]:
        """Run jobs on the model's loaded worker when it runs this backend on the
        CPU, else on a temporary worker (small context, one sequence) stopped after."""
        from edged.daemon.workers import WorkerHandle, next_request_id

        loaded = self.scheduler.worker_of(model.digest)
        temp = None
        if loaded is not None and loaded.backend == model.backend and loaded.spec.device == "cpu":
            worker = loaded
        else:
            cfg = self.config.engine
            spec = LoadSpec(
                model_path=model.path,
                model_digest=model.digest,
                context_length=CALIBRATION_CONTEXT,
                threads=cfg.threads,
                max_sequences=1,
                device="cpu",
                kv_dir=None,
                kv_ram_budget=16 << 20,
                kv_disk_budget=0,
                cache_dir=str(cfg.cache_dir / model.backend) if cfg.cache_dir else None,
            )
            temp = WorkerHandle(model.backend, spec, f"{model.name} (calibration)")
            await temp.start()
            worker = temp
        try:
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
        finally:
            if temp is not None:
                await temp.stop()


def _cpu(ranking: Ranking) -> list[Choice]:
    return [c for c in ranking.choices if c.device == "cpu"]


def _no_backend(ranking: Ranking) -> str:
    ov = ranking.overrides
    first = ranking.choices[0] if ranking.choices else None
    if (ov.backend or ov.device) and first is not None:
        asked = " on ".join(x for x in (ov.backend, ov.device) if x)
        return f"{ranking.name} cannot run on {asked} ({ov.source}): " + "; ".join(first.reasons)
    why = "; ".join(f"{c.backend} on {c.device}: {', '.join(c.reasons)}" for c in _cpu(ranking))
    return f"no installed backend can run {ranking.name}: {why}"
