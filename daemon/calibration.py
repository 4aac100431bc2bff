"""CPU calibration: how fast and how faithful each backend is for this model here.

Speed: a calibration run is a short, real generation: a ~64-token prompt
prefilled, then 32 tokens decoded at temperature 0, after a tiny warm-up
generation that pages the weights in; then the same generation as ``streams``
requests at once (the daemon's configured parallelism), whose decode rates add
up to the aggregate figure. Generations run through a callable
(:data:`RunGeneration`) so the daemon can run them on its real workers and
tests on anything.

Fidelity: how closely the backend's next-token choices follow the reference
(the most faithful computation of the model: :mod:`edged.daemon.calibrator`
says which), measured by a callable
(:data:`MeasureFidelity`; the daemon runs :mod:`edged.backends.fidelity_run`
in a child process). Selection never picks a choice below the threshold
(:mod:`edged.daemon.hardware.ranking`) unless asked for it.

Results are cached in one JSON file (``<cache dir>/calibration.json``) keyed by
(machine, model digest, backend, backend version, device, KV cache type): the
machine key is a hash of the CPU model, core counts and usable ISA extensions,
so a changed CPU, a new backend release, a different model or another KV cache
type each measure again.
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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from edged.backends.base import Job, Sampling, Stats
from edged.common.errors import EdgedError, Internal
from edged.common.hardware_profile import HardwareProfile
from edged.daemon.config import MAX_STREAM_INTERVAL_MS

log = logging.getLogger(__name__)

FILE_NAME = "calibration.json"
VERSION = 2  # 2: aggregate speed at the configured parallelism, fidelity
MAX_ENTRIES = 512
DECODE_TOKENS = 32
# Timed runs per backend; the best one counts. A desktop is rarely idle, and a
# run that another process slowed down says nothing about the backend (the
# decode threads of llama.cpp suffer most from a busy CPU), so the fastest of a
# few short runs is the steadiest figure to compare backends by.
TIMED_RUNS = 3
PARALLEL_RUNS = 2  # timed runs of `streams` requests at once; the best one counts
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

# (backend, device, phases) -> each job's final stats, phase by phase: the
# phases run one after the other on one load of the model, the jobs of a phase
# all at once.
RunGeneration = Callable[[str, str, Sequence[Sequence[Job]]], Awaitable[list[list[Stats]]]]


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
    streams: int = 1  # requests at once for the aggregate figure
    aggregate_tokens_per_second: float = 0.0  # decode tokens/s of `streams` together
    fidelity: Fidelity | None = None
    kv_type: str = "f16"  # the KV cache it ran with (part of the cache key)


@dataclass(frozen=True)
class Fidelity:
    """A choice's fidelity against the reference (:mod:`edged.backends.fidelity`)."""

    measure: str  # "reference" | "logits" | "greedy" | "" (it failed: see error)
    agreement: float = 0.0  # top-1 next-token agreement, 0..1
    mean_kl: float = 0.0  # nats; 0 for "greedy" (no logits)
    perplexity: float = 0.0  # the candidate's; 0 for "greedy"
    perplexity_reference: float = 0.0
    tokens: int = 0  # positions compared
    reference: str = ""  # what it was compared with, for people
    reference_digest: str = ""
    error: str = ""


# target -> its fidelity against the reference (never raises: errors are recorded)
MeasureFidelity = Callable[["Target"], Awaitable[Fidelity]]


@dataclass(frozen=True)
class Target:
    """One (backend, device) to measure, with the backend library's version and the
    KV cache type a load of it gets (speed and fidelity both depend on it)."""

    backend: str
    device: str
    version: str
    kv_type: str = "f16"


def machine_key(hw: HardwareProfile) -> str:
    """Hash of what makes CPU speed differ between machines."""
    usable = sorted(f.name for f in hw.isa if f.usable) or sorted(hw.cpu_features)
    raw = "|".join((hw.cpu, hw.cpu_id, str(hw.cores), str(hw.threads), ",".join(usable)))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _key(machine: str, digest: str, backend: str, version: str, device: str, kv: str) -> str:
    return "|".join((machine, digest, backend, version, device, kv))


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
        entries = raw.get("entries")
        for key, value in (entries if isinstance(entries, dict) else {}).items():
            found = _from_json(value)
            if found is not None:
                out[str(key)] = found
        return out

    def get(self, machine: str, digest: str, target: Target) -> Calibration | None:
        key = _key(machine, digest, target.backend, target.version, target.device, target.kv_type)
        return self._read().get(key)

    def put(self, result: Calibration) -> None:
        key = _key(
            result.machine,
            result.model_digest,
            result.backend,
            result.backend_version,
            result.device,
            result.kv_type,
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


def _from_json(value: object) -> Calibration | None:
    """One cache entry, or None when it is not one (another version, hand edits)."""
    names = {f.name for f in fields(Calibration)}
    fid_names = {f.name for f in fields(Fidelity)}
    if not isinstance(value, dict) or not names >= set(value):
        return None
    raw = dict(value)
    fid = raw.pop("fidelity", None)
    try:
        if fid is not None:
            if not isinstance(fid, dict) or not fid_names >= set(fid):
                return None
            raw["fidelity"] = Fidelity(**fid)
        found = Calibration(**raw)
    except TypeError:
        return None
    numbers = (found.decode_tokens_per_second, found.aggregate_tokens_per_second, found.streams)
    if not all(isinstance(x, (int, float)) for x in numbers):
        return None
    return found


@dataclass(frozen=True)
class Outcome:
    target: Target
    result: Calibration | None
    error: str = ""
    cached: bool = False


def current(found: Calibration | None, *, streams: int, reference_digest: str) -> bool:
    """A cached figure still answers today's question: measured at the configured
    parallelism and against today's reference ("" = fidelity not asked for)."""
    if found is None or found.streams != streams:
        return False
    if not reference_digest:
        return True
    return found.fidelity is not None and found.fidelity.reference_digest == reference_digest


async def calibrate(
    run: RunGeneration,
    targets: Sequence[Target],
    *,
    model_digest: str,
    machine: str,
    cache: CalibrationCache,
    force: bool = False,
    streams: int = 1,
    fidelity: MeasureFidelity | None = None,
    reference_digest: str = "",
) -> list[Outcome]:
    """Measure each target (or take the cached figure unless ``force``): speed at
    1 and ``streams`` requests, and fidelity when ``fidelity`` is given.

    A target whose speed cannot be measured (the backend cannot load the
    model, the worker crashes) is reported with its error and not cached; a
    failed fidelity measurement is kept with its error (the choice then counts
    as not measured).
    """
    outcomes: list[Outcome] = []
    for t in targets:
        cached = None if force else cache.get(machine, model_digest, t)
        if current(cached, streams=streams, reference_digest=reference_digest):
            assert cached is not None
            outcomes.append(Outcome(t, cached, cached=True))
            continue
        try:
            result = await measure(
                run, t, model_digest=model_digest, machine=machine, streams=streams
            )
        except EdgedError as exc:
            log.warning("calibrating %s on %s failed: %s", t.backend, t.device, exc)
            outcomes.append(Outcome(t, None, error=str(exc)))
            continue
        if fidelity is not None:
            result = replace(result, fidelity=await fidelity(t))
        cache.put(result)
        outcomes.append(Outcome(t, result))
    return outcomes


async def measure(
    run: RunGeneration, t: Target, *, model_digest: str, machine: str, streams: int = 1
) -> Calibration:
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
    streams = max(1, streams)
    phases = [[warmup]] + [[timed]] * TIMED_RUNS
    if streams > 1:
        phases += [[timed] * streams] * PARALLEL_RUNS
    got = await run(t.backend, t.device, phases)
    if [len(p) for p in got] != [len(p) for p in phases]:
        raise Internal(
            f"the calibration run returned {[len(p) for p in got]} results, "
            f"not {[len(p) for p in phases]}"
        )
    results = [p[0] for p in got[: 1 + TIMED_RUNS]]
    stats = max(results[1:], key=lambda s: s.decode_tokens_per_second)
    together = [sum(s.decode_tokens_per_second for s in p) for p in got[1 + TIMED_RUNS :]]
    aggregate = max(together) if together else stats.decode_tokens_per_second
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
        streams=streams,
        aggregate_tokens_per_second=round(aggregate, 2),
        kv_type=t.kv_type,
    )
