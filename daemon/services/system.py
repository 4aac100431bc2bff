"""edged.v1.System: version and hardware."""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

from edged.common.errors import NotFound
from edged.daemon.app import App
from edged.daemon.hardware.report import hardware_response
from edged.daemon.selection import Ranking
from edged.daemon.services import _errors
from edged.v1 import edged_pb2 as pb
from edged.v1 import edged_pb2_grpc as pbg

DEFAULT_MODEL = "smollm2"


def edged_version() -> str:
    try:
        return version("edged")
    except PackageNotFoundError:
        return "0+unknown"


class SystemService(pbg.SystemServicer):  # type: ignore[misc]
    def __init__(self, app: App) -> None:
        self.app = app
        self._calibrating = asyncio.Lock()

    async def version(self, request: pb.VersionRequest) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=edged_version(), api="edged.v1", http_url=self.app.http_url
        )

    async def hardware(self, request: pb.HardwareRequest) -> pb.HardwareResponse:
        """Probe again, rank backends for the model (``smollm2`` if pulled) and
        calibrate it when asked. Without ``calibrate`` this answers in about the
        time the probes take; ``edged hw`` asks for a calibration itself the
        first time a model has none on this machine."""
        hw = await asyncio.to_thread(self.app.selection.monitor.refresh)
        name = request.model or DEFAULT_MODEL
        notes: list[str] = []
        try:
            ranking: Ranking | None = await asyncio.to_thread(
                self.app.selection.rank, name, "", "", hardware=hw
            )
        except NotFound:
            if request.model:
                raise
            ranking = None
            notes.append(f"no model ranked: {DEFAULT_MODEL} is not pulled (edged hw --model M)")
        if ranking is not None and request.calibrate:
            async with self._calibrating:
                ranking, outcomes = await self.app.calibrator.calibrate(name, force=True)
            notes += [
                f"calibration of {o.target.backend} on {o.target.device} failed: {o.error}"
                for o in outcomes
                if o.error
            ]
        if ranking is None:
            return hardware_response(hw, notes=notes)
        return hardware_response(
            hw,
            model=ranking.name,
            choices=ranking.choices,
            calibrations=ranking.calibrations,
            notes=notes,
        )

    # gRPC bindings: errors become status codes (services/_errors.py)
    Version = _errors.unary_of("version")
    Hardware = _errors.unary_of("hardware")
