"""edged.v1.System: version and hardware."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import psutil

from edged.daemon.app import App
from edged.daemon.services import _errors
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg


def edged_version() -> str:
    try:
        return version("edged")
    except PackageNotFoundError:
        return "0+unknown"


class SystemService(pbg.SystemServicer):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self.app = app

    @_errors.unary
    async def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        return pb.VersionResponse(version=edged_version(), api="edged.v1")

    @_errors.unary
    async def Hardware(self, request: pb.HardwareRequest, context: Any) -> pb.HardwareResponse:
        hw = self.app.hardware
        choices = self.app.backend_choices(["gguf", "onnx"])
        return pb.HardwareResponse(
            os=hw.os,
            arch=hw.arch,
            cpu=hw.cpu,
            cpu_cores=hw.cores,
            cpu_threads=hw.threads,
            cpu_features=sorted(hw.cpu_features),
            memory_total_bytes=hw.memory_total,
            memory_available_bytes=int(psutil.virtual_memory().available),
            gpus=list(hw.nvidia_gpus),
            backends=[
                pb.BackendChoice(
                    backend=c.backend, device=c.device, available=c.available, reasons=c.reasons
                )
                for c in choices
            ],
        )
