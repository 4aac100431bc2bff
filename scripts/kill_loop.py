#!/usr/bin/env python3
"""The long SIGKILL run for store integrity (issue 6): a real daemon is killed at
random points of pulls (download and commit), deletes and garbage collection,
restarted, and `edged verify` must find no problem each time; every interrupted
pull must complete when run again. CI runs a short version
(tests/integration/test_store_crash.py).

    .venv/bin/python scripts/kill_loop.py --iterations 200

Exits 1 at the first damaged store, which is copied next to the work folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.store_crash_kit import CrashFailure, CrashLoop, file_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds-per-pull", type=float, default=0.3)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edged-kill-loop-"))
    try:
        with file_server() as server:
            loop = CrashLoop(
                work / "d",
                server,
                seed=args.seed,
                seconds_per_pull=args.seconds_per_pull,
                echo=lambda line: print(line, flush=True),
            )
            result = loop.run(args.iterations)
    except CrashFailure as exc:
        print(f"FAILED: {exc}\n(work folder kept: {work})", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
