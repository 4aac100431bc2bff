"""The daemon's components wired together (what the gRPC services call)."""

from __future__ import annotations

from dataclasses import dataclass

from edged.daemon.config import ServerConfig
from edged.daemon.hardware import HardwareProfile
from edged.daemon.scheduler import ResolvedModel, Scheduler
from edged.daemon.sessions import SessionStore
from edged.models_registry.store import Store


@dataclass
class App:
    config: ServerConfig
    store: Store
    scheduler: Scheduler
    sessions: SessionStore
    hardware: HardwareProfile

    def resolve(self, model: str) -> ResolvedModel:
        ref, manifest = self.store.resolve(model)
        primary = manifest.primary
        return ResolvedModel(
            name=str(ref),
            digest=primary.digest,
            path=str(self.store.blob_path(primary.digest)),
            format=manifest.format,
            system_prompt=manifest.system_prompt,
            sampling_defaults=manifest.sampling,
        )
