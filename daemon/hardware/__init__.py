"""Hardware detection and backend selection (``edged hw``).

- :mod:`edged.common.hardware_profile`: the :class:`HardwareProfile` value (JSON-able).
- :mod:`.probes`: reading the machine; optional probes run in child processes
  (:mod:`.probe_child`) under a timeout; :class:`HardwareMonitor` caches them.
- :mod:`.ranking`: the pure ranking function :func:`rank_backends`; each
  backend's accelerator placement lives in ``backends/<name>/placement.py``.
- :mod:`.report`: the protobuf views System.Hardware and Models.Show serve.
"""

from __future__ import annotations

from edged.backends.placement import Choice, VariantInfo
from edged.common.hardware_profile import AcceleratorDevice, HardwareProfile, IsaFeature, NvidiaGpu

from .probes import HardwareMonitor, basic_profile, probe
from .ranking import FIDELITY_THRESHOLD, Measured, Overrides, pick_overrides, rank_backends

__all__ = [
    "FIDELITY_THRESHOLD",
    "AcceleratorDevice",
    "Choice",
    "HardwareMonitor",
    "HardwareProfile",
    "IsaFeature",
    "Measured",
    "NvidiaGpu",
    "Overrides",
    "VariantInfo",
    "basic_profile",
    "pick_overrides",
    "probe",
    "rank_backends",
]
