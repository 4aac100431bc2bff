"""CPU calibration: which backend is faster for this model on this machine.

A calibration run is a short, real generation: a ~64-token prompt prefilled,
then 32 tokens decoded at temperature 0, after a tiny warm-up generation that
pages the weights in. It runs through a callable (:data:`RunGeneration`) so
the daemon can run it on its real workers and tests can run it on anything.

Results are cached in one JSON file (``<cache dir>/calibration.json``) keyed by
(machine, model digest, backend, backend version, device): the machine key is
a hash of the CPU model, core counts and usable ISA extensions, so a changed
CPU, a new backend release or a different model each measure again.
Calibration runs only on demand (``edged hw --calibrate``) or the first time
``edged hw`` ranks a model that has none, never at daemon start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edged.backends.base import Job, Sampling, Stats
from edged.common.errors import EdgedError, Internal
from edged.common.hardware_profile import HardwareProfile
from edged.daemon.config import MAX_STREAM_INTERVAL_MS

log = logging.getLogger(__name__)

FILE_NAME = "calibration.json"
VERSION = 1
MAX_ENTRIES = 512
DECODE_TOKENS = 32
# Timed runs per backend; the best one counts. A desktop is rarely idle, and a
# run that another process slowed down says nothing about the backend (the
# decode threads of llama.cpp suffer most from a busy CPU), so the fastest of a
# few short runs is the steadiest figure to compare backends by.
TIMED_RUNS = 3
# Nobody reads a calibration run's text: the worker holds it to the end, so no
# message to the daemon competes with the decoding being measured.
HOLD_TEXT_S = MAX_STREAM_INTERVAL_MS / 1000.0
WARMUP_PROMPT = "The weather today is"
# About 64 tokens with the usual BPE vocabularies; a plain continuation (no chat
# template) so that greedy decoding does not stop early.
PROMPT = (
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk, "
    "carrying a lantern, a notebook and a thermos of tea. From the top he could see "
    "the fishing boats returning to the harbour, the gulls circling above the cliffs "
    "and, far to the west, the faint line where the sea met the sky. That night, "
    "however, something was different:"
)

# (backend, device, jobs) -> each job's final stats, the jobs run one after the
# other on one load of the model.
RunGeneration = Callable[[str, str, Sequence[Job]], Awaitable[list[Stats]]]


@dataclass(frozen=True)
class Calibration:
    model_digest: str
    backend: str
    device: str
    backend_version: str
    decode_tokens_per_second: float
    prefill_tokens_per_second: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    measured_unix_ms: int = 0
    machine: str = ""


@dataclass(frozen=True)
class Target:
    """One (backend, device) to measure, with the backend library's version."""

    backend: str
    device: str
    version: str


def machine_key(hw: HardwareProfile) -> str:
    """Hash of what makes CPU speed differ between machines."""
    usable = sorted(f.name for f in hw.isa if f.usable) or sorted(hw.cpu_features)
    raw = "|".join((hw.cpu, hw.cpu_id, str(hw.cores), str(hw.threads), ",".join(usable)))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _key(machine: str, digest: str, backend: str, version: str, device: str) -> str:
    return "|".join((machine, digest, backend, version, device))


class CalibrationCache:
    """The JSON file of results; unreadable or malformed files read as empty."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir / FILE_NAME
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Calibration]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable calibration cache %s: %s", self.path, exc)
            return {}
        out: dict[str, Calibration] = {}
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            return out
        names = {f.name for f in fields(Calibration)}
        entries = raw.get("entries")
        for key, value in (entries if isinstance(entries, dict) else {}).items():
            if isinstance(value, dict) and names >= set(value):
                try:
                    out[str(key)] = Calibration(**value)
                except TypeError:
                    continue
        return out

    def get(self, machine: str, digest: str, target: Target) -> Calibration | None:
        key = _key(machine, digest, target.backend, target.version, target.device)
        return self._read().get(key)

    def put(self, result: Calibration) -> None:
        key = _key(
            result.machine,
            result.model_digest,
            result.backend,
            result.backend_version,
            result.device,
        )
        with self._lock:
            entries = self._read()
            entries[key] = result
            newest = sorted(entries.items(), key=lambda kv: -kv[1].measured_unix_ms)
            data = {
                "version": VERSION,
                "entries": {k: asdict(v) for k, v in newest[:MAX_ENTRIES]},
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".calibration-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


@dataclass(frozen=True)
class Outcome:
    target: Target
    result: Calibration | None
    error: str = ""
    cached: bool = False


async def calibrate(
    run: RunGeneration,
    targets: Sequence[Target],
    *,
    model_digest: str,
    machine: str,
    cache: CalibrationCache,
    force: bool = False,
) -> list[Outcome]:
    """Measure each target (or take the cached figure unless ``force``).

    A target that fails (the backend cannot load the model, the worker
    crashes) is reported with its error and not cached.
    """
    outcomes: list[Outcome] = []
    for t in targets:
        cached = None if force else cache.get(machine, model_digest, t)
        if cached is not None:
            outcomes.append(Outcome(t, cached, cached=True))
            continue
        try:
            result = await measure(run, t, model_digest=model_digest, machine=machine)
        except EdgedError as exc:
            log.warning("calibrating %s on %s failed: %s", t.backend, t.device, exc)
            outcomes.append(Outcome(t, None, error=str(exc)))
            continue
        cache.put(result)
        outcomes.append(Outcome(t, result))
    return outcomes


async def measure(run: RunGeneration, t: Target, *, model_digest: str, machine: str) -> Calibration:
    warmup = Job(
        request_id=0,
        sampling=Sampling(max_tokens=4, temperature=0.0),
        prompt=WARMUP_PROMPT,
        stream_interval_s=HOLD_TEXT_S,
    )
    timed = Job(
        request_id=0,
        sampling=Sampling(max_tokens=DECODE_TOKENS, temperature=0.0),
        prompt=PROMPT,
        stream_interval_s=HOLD_TEXT_S,
    )
    results = await run(t.backend, t.device, [warmup] + [timed] * TIMED_RUNS)
    if len(results) != 1 + TIMED_RUNS:
        raise Internal(f"the calibration run returned {len(results)} results, not {1 + TIMED_RUNS}")
    stats = max(results[1:], key=lambda s: s.decode_tokens_per_second)
    return Calibration(
        model_digest=model_digest,
        backend=t.backend,
        device=t.device,
        backend_version=t.version,
        decode_tokens_per_second=round(stats.decode_tokens_per_second, 2),
        prefill_tokens_per_second=round(max(r.prefill_tokens_per_second for r in results[1:]), 2),
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        measured_unix_ms=int(time.time() * 1000),
        machine=machine,
    )
