"""Backend selection as far as the daemon is concerned: facts in, a resolved model out.

:meth:`Selection.rank` gathers the facts (the hardware profile, the model's
variants and their header facts, the backends and whether they are installed,
the overrides, cached calibration figures) and hands them to the pure
:func:`~edged.daemon.hardware.rank_backends`; :meth:`Selection.resolve` turns
the first available choice into a :class:`~edged.daemon.scheduler.ResolvedModel`
for the scheduler.

Overrides, highest first: the request's backend/device, the model's settings
(``Models.Configure``, :mod:`edged.models_registry.settings`), then
EDGED_BACKEND / EDGED_DEVICE.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from edged.backends import registry
from edged.backends.base import kv_type_offered
from edged.backends.memory import MemoryEstimate, estimate_memory
from edged.common.errors import EdgedError, FailedPrecondition, Internal
from edged.common.hardware_profile import HardwareProfile
from edged.common.model_facts import FORMAT_SAFETENSORS, ModelFacts, model_facts
from edged.daemon import calibration
from edged.daemon.config import ServerConfig
from edged.daemon.hardware import (
    Choice,
    HardwareMonitor,
    Measured,
    Overrides,
    VariantInfo,
    pick_overrides,
    rank_backends,
)
from edged.daemon.scheduler import ResolvedModel
from edged.models_registry import remote
from edged.models_registry.manifest import Manifest, Variant
from edged.models_registry.remote import REMOTE_BACKEND
from edged.models_registry.settings import RPC_LOCAL, ModelSettings, SettingsStore
from edged.models_registry.store import Store

log = logging.getLogger(__name__)


def variant_digest(variant: Variant) -> str:
    """One digest per variant (workers and saved KV are keyed by it)."""
    return variant.digest


@dataclass(frozen=True)
class Ranking:
    """What :meth:`Selection.rank` found for one model."""

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
class Selection:
    config: ServerConfig
    store: Store
    # Probed once in the background at start-up (the optional probes run in
    # child processes); `edged hw` refreshes it. Installing a backend needs a
    # daemon restart (`installed` is probed with find_spec once).
    monitor: HardwareMonitor
    installed: tuple[str, ...]
    settings: SettingsStore
    calibrations: calibration.CalibrationCache
    _facts: dict[str, ModelFacts] = field(default_factory=dict, repr=False)
    _survey: tuple[registry.Survey, ...] | None = field(default=None, repr=False)
    _facts_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        wanted = self.config.selection.backend
        if wanted:
            registry.backend_info(wanted)  # an unknown EDGED_BACKEND fails at start-up

    @property
    def hardware(self) -> HardwareProfile:
        """The probed profile (waits for the start-up probe the first time)."""
        return self.monitor.profile()

    def backends(self) -> tuple[registry.Survey, ...]:
        """The registry's backends with their versions (looked up once: they are
        fixed for the daemon's life, like ``installed``, and each lookup scans
        site-packages, ~2.4 ms of every request here)."""
        if self._survey is None:
            self._survey = registry.survey(self.installed)
        return self._survey

    def model_settings(self, name: str) -> ModelSettings:
        return self.settings.get(name)

    def gguf_vocab(self, name: str) -> tuple[str, int]:
        """A model's resolved name and its GGUF vocabulary size (FailedPrecondition
        when it has no GGUF variant, which a draft model needs)."""
        ref, manifest = self.store.resolve(name)
        v = next((v for v in manifest.variants if v.format == "gguf"), None)
        if v is None:
            raise FailedPrecondition(f"{ref} has no GGUF variant, so it cannot be a draft model")
        facts = self.facts(manifest, v)
        return str(ref), facts.n_vocab if facts is not None else 0

    def draft_for(self, target: str, draft: str) -> tuple[str, str]:
        """The draft model ``draft`` for ``target``: (its GGUF path, its name).
        Refused clearly when it cannot share the target's vocabulary (the worker
        compares them token by token when it loads)."""
        name, n = self.gguf_vocab(draft)
        _, want = self.gguf_vocab(target)
        if n and want and n != want:
            raise FailedPrecondition(
                f"the draft model {name} has a vocabulary of {n} tokens, {target} of {want}: a "
                "draft model must share the target's tokenizer (a smaller model of the same family)"
            )
        _, manifest = self.store.resolve(draft)
        v = next(v for v in manifest.variants if v.format == "gguf")
        return str(self.store.materialize(manifest, v)), name

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
        ref, manifest = self.store.resolve(model)
        name = str(ref)
        if remote.remote_variant(manifest) is not None:
            return self._remote_ranking(name, manifest, backend, device)
        backend = registry.check_name(backend)
        hw = hardware if hardware is not None else self.hardware
        settings = self.model_settings(name)  # one read of the settings file per ranking
        ctx = context_length or settings.context_length or self.config.engine.context_length
        seqs = self.config.engine.max_sequences
        variants = [
            VariantInfo(v.name, v.format, v.size, self.facts(manifest, v))
            for v in manifest.variants
        ]
        kv_pref = settings.kv_type or self.config.engine.kv_type
        cals = self.cached_calibrations(manifest, hw, kv_pref)
        overrides = self.overrides(name, backend, device)
        choices = rank_backends(
            hw,
            variants,
            self.backends(),
            context_length=ctx,
            sequences=seqs,
            overrides=overrides,
            calibrations={(c.backend, c.device): measured(c) for c in cals},
            kv_type=kv_pref,
        )
        choices = [self._with_rpc(name, c, settings.rpc) for c in choices]
        return Ranking(name, manifest, tuple(choices), overrides, ctx, seqs, tuple(cals))

    def _with_rpc(self, name: str, choice: Choice, setting: str) -> Choice:
        """A CPU choice of a backend that places layers on RPC workers says where
        they go and why (the model's rpc setting, else EDGED_RPC)."""
        if choice.device != "cpu" or not registry.backend_info(choice.backend).rpc:
            return choice
        if setting == RPC_LOCAL:
            return choice
        servers = setting or ",".join(self.config.engine.rpc_servers)
        if not servers:
            return choice
        layers = self.config.engine.rpc_layers
        why = (
            f"split: {'all' if layers < 0 else layers} layers on the RPC workers {servers} "
            f"({'the settings of ' + name if setting else 'EDGED_RPC'}), the rest on this CPU"
        )
        return replace(choice, reasons=(*choice.reasons, why))

    def _remote_ranking(self, name: str, manifest: Manifest, backend: str, device: str) -> Ranking:
        """A remote model runs on its upstream and nowhere else: one choice, with why."""
        spec = remote.read_spec(self.store, manifest)
        asked = [x for x in (backend, device) if x and x not in (REMOTE_BACKEND, spec.host)]
        if asked:
            raise FailedPrecondition(
                f"{name} is a remote model served by {spec.url}; it cannot run on "
                f"{' / '.join(asked)} (drop --backend/--device, or pull a local copy)"
            )
        why = (
            f"remote model: served by {spec.url} as {spec.model!r} "
            f"(added with `edged remote add`); edged forwards every request there",
            f"TLS {_tls(spec)}, token {'from ' + spec.token_file if spec.token_file else 'none'}",
            *spec.probed.evidence,
        )
        choice = Choice(REMOTE_BACKEND, spec.host, True, why, fit="", variant="remote")
        ctx = spec.probed.context_length
        return Ranking(name, manifest, (choice,), Overrides(), ctx, 0)

    def memory_estimate(self, ranking: Ranking) -> MemoryEstimate | None:
        """The estimate for the chosen backend, device and settings."""
        c = ranking.chosen
        if c is None or c.backend == REMOTE_BACKEND:
            return None
        v = ranking.manifest.variant_named(c.variant)
        facts = self.facts(ranking.manifest, v) if v is not None else None
        if facts is None:
            return None
        kv = self.kv_type_for(ranking.name, c.backend)  # the KV type a load would get
        return estimate_memory(
            facts,
            context_length=ranking.context_length,
            sequences=ranking.sequences,
            backend=c.backend,
            device=c.device,
            kv_type=kv,
        )

    def resolve(self, model: str, backend: str = "", device: str = "") -> ResolvedModel:
        return self.resolve_choice(self.rank(model, backend, device))

    def resolve_choice(self, ranking: Ranking, choice: Choice | None = None) -> ResolvedModel:
        """``choice`` (default: the ranking's first available one) as a model to load."""
        c = choice if choice is not None else ranking.chosen
        if c is None:
            raise FailedPrecondition(_no_backend(ranking))
        variant = ranking.manifest.variant_named(c.variant)
        if variant is None:  # the ranking only names variants of this manifest
            raise Internal(f"variant {c.variant!r} of {ranking.name} vanished")
        if c.backend == REMOTE_BACKEND:
            path = str(remote.spec_path(self.store, ranking.manifest))
        else:
            path = str(self.store.materialize(ranking.manifest, variant))
        return ResolvedModel(
            name=ranking.name,
            digest=variant_digest(variant),
            path=path,
            format=variant.format,
            backend=c.backend,
            device=c.device,
            system_prompt=ranking.manifest.system_prompt,
            sampling_defaults=ranking.manifest.sampling,
            stop_defaults=ranking.manifest.stop,
            gpu_layers=c.gpu_layers,
        )

    def versions(self) -> dict[str, str]:
        return {b.name: b.version for b in self.backends()}

    def kv_type_for(self, name: str, backend: str) -> str:
        """The KV cache type a load of ``name`` on ``backend`` gets: the model's
        setting, else EDGED_KV_TYPE, where the backend offers it, else f16."""
        kv = self.model_settings(name).kv_type or self.config.engine.kv_type
        return kv_type_offered(kv, registry.backend_info(backend).kv_types)

    def cached_calibrations(
        self, manifest: Manifest, hw: HardwareProfile, kv_pref: str
    ) -> list[calibration.Calibration]:
        """The cached figures that still describe a load here: same machine,
        variant, backend version and KV cache type (``kv_pref``, the model's
        setting or EDGED_KV_TYPE, where each backend offers it)."""
        machine = calibration.machine_key(hw)
        out = []
        for b in self.backends():
            if not b.installed:
                continue
            v = next((v for v in manifest.variants if v.format in b.info.formats), None)
            if v is None:
                continue
            kv = kv_type_offered(kv_pref, b.info.kv_types)
            t = calibration.Target(b.name, "cpu", b.version, kv)
            found = self.calibrations.get(machine, variant_digest(v), t)
            if found is not None:
                out.append(found)
        return out


def measured(c: calibration.Calibration) -> Measured:
    """A calibration as the ranking reads it."""
    f = c.fidelity
    ok = f is not None and f.measure in ("logits", "greedy")
    return Measured(
        tokens_per_second=c.decode_tokens_per_second,
        aggregate_tokens_per_second=c.aggregate_tokens_per_second,
        streams=c.streams,
        agreement=f.agreement if f is not None and ok else None,
        is_reference=f is not None and f.measure == "reference",
        fidelity=fidelity_words(f),
    )


def fidelity_words(f: calibration.Fidelity | None) -> str:
    """The measured fidelity in a sentence (``edged hw``, ``edged show``)."""
    if f is None:
        return "fidelity not measured yet (edged hw --calibrate MODEL measures it)"
    if f.measure == "reference":
        return f"fidelity: this is the reference ({f.reference})"
    if f.measure == "logits":
        return (
            f"fidelity against {f.reference}: top-1 agreement {f.agreement:.3f}, "
            f"KL {f.mean_kl:.4f} nats, perplexity {f.perplexity:.2f} "
            f"(reference {f.perplexity_reference:.2f}), over {f.tokens} tokens"
        )
    if f.measure == "greedy":
        return (
            f"fidelity against {f.reference}: top-1 agreement {f.agreement:.3f} from greedy "
            f"continuations ({f.tokens} tokens compared; this backend returns no logits, "
            "so no KL or perplexity)"
        )
    return f"fidelity not measured: {f.error}"


def _tls(spec: remote.RemoteSpec) -> str:
    if not spec.url.startswith("https://"):
        return "off (an http:// URL: use https:// or a tunnel beyond this machine)"
    return "on, certificate NOT verified (--insecure)" if spec.insecure else "on, verified"


def cpu_choices(ranking: Ranking) -> list[Choice]:
    return [c for c in ranking.choices if c.device == "cpu"]


def _no_backend(ranking: Ranking) -> str:
    if all(v.format == FORMAT_SAFETENSORS for v in ranking.manifest.variants):
        return (
            f"{ranking.name} has only safetensors weights, which no backend runs: "
            f"convert them first with `edged convert {ranking.name} --to gguf`"
        )
    ov = ranking.overrides
    first = ranking.choices[0] if ranking.choices else None
    if (ov.backend or ov.device) and first is not None:
        asked = " on ".join(x for x in (ov.backend, ov.device) if x)
        return f"{ranking.name} cannot run on {asked} ({ov.source}): " + "; ".join(first.reasons)
    why = "; ".join(
        f"{c.backend} on {c.device}: {', '.join(c.reasons)}" for c in cpu_choices(ranking)
    )
    return f"no installed backend can run {ranking.name}: {why}"
