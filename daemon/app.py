"""The daemon's components wired together (what the gRPC services call)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edged.backends.registry import BACKENDS, backend_info, is_installed
from edged.daemon.config import ServerConfig
from edged.daemon.errors import FailedPrecondition, InvalidArgument
from edged.daemon.hardware import Choice, HardwareProfile, llama_cuda_built, select_backends
from edged.daemon.scheduler import ResolvedModel, Scheduler
from edged.daemon.sessions import SessionStore
from edged.models_registry.manifest import Manifest, Variant
from edged.models_registry.store import Store


def variant_digest(variant: Variant) -> str:
    """One digest per variant (workers and saved KV are keyed by it)."""
    return variant.digest


def installed_backends() -> list[str]:
    return [b.name for b in BACKENDS if is_installed(b)]


@dataclass
class App:
    config: ServerConfig
    store: Store
    scheduler: Scheduler
    sessions: SessionStore
    hardware: HardwareProfile
    # Probed once at start-up, not per request (find_spec, a glob of the
    # llama.cpp library folder); installing a backend needs a daemon restart.
    installed: tuple[str, ...] = field(default_factory=lambda: tuple(installed_backends()))
    llama_cuda: bool = field(default_factory=llama_cuda_built)

    def backend_choices(self, formats: list[str]) -> list[Choice]:
        return select_backends(self.hardware, formats, self.installed, llama_cuda=self.llama_cuda)

    def resolve(self, model: str, backend: str = "") -> ResolvedModel:
        ref, manifest = self.store.resolve(model)
        backend, device, variant = self._pick(str(ref), manifest, backend)
        return ResolvedModel(
            name=str(ref),
            digest=variant_digest(variant),
            path=str(self.store.materialize(manifest, variant)),
            format=variant.format,
            system_prompt=manifest.system_prompt,
            sampling_defaults=manifest.sampling,
            backend=backend,
            device=device,
        )

    def _pick(self, name: str, manifest: Manifest, wanted: str) -> tuple[str, str, Variant]:
        variants = manifest.variants
        formats = [v.format for v in variants]
        if wanted:
            try:
                info = backend_info(wanted)
            except FailedPrecondition as exc:
                raise InvalidArgument(str(exc)) from None
            if info.name not in self.installed:
                raise FailedPrecondition(
                    f"the {wanted} backend is not installed: {info.install_hint}"
                )
            for v in variants:
                if v.format in info.formats:
                    device = "cpu"
                    if wanted == "llama.cpp":
                        device = self._best_device(formats, wanted)
                    return wanted, device, v
            hint = ""
            if "onnx" in info.formats and "gguf" in formats:
                hint = f"; make one with: edged convert {name} --to onnx"
            raise FailedPrecondition(
                f"{name} has no {'/'.join(info.formats)} variant for the {wanted} backend{hint}"
            )
        choices = self.backend_choices(formats)
        for c in choices:
            if c.available:
                info = backend_info(c.backend)
                v = next(v for v in variants if v.format in info.formats)
                return c.backend, c.device, v
        why = "; ".join(r for c in choices for r in c.reasons)
        raise FailedPrecondition(f"no installed backend can run {name}: {why}")

    def _best_device(self, formats: list[str], backend: str) -> str:
        choices = self.backend_choices(formats)
        return next((c.device for c in choices if c.backend == backend and c.available), "cpu")
