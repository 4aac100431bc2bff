"""``python -m edged.installer.launch``: run the daemon under a small supervisor.

Used by the Windows scheduled task, which can neither set environment
variables, nor redirect output, nor restart a program that exits with an
error (its RestartOnFailure covers only a task that fails to *start*). This
launcher sets the ``--env`` variables, appends the daemon's stdout/stderr to
``--log``, and restarts the daemon after a non-zero exit with exponential
back-off (2 s doubling to 60 s, reset after a run of a minute); ten failures
within ten minutes and it gives up with the daemon's exit status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

FIRST_DELAY_S = 2.0
MAX_DELAY_S = 60.0
HEALTHY_RUN_S = 60.0  # a run this long resets the back-off
MAX_FAILURES = 10
FAILURE_WINDOW_S = 600.0


def supervise(
    cmd: Sequence[str],
    out: TextIO,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run ``cmd`` until it exits 0, restarting it after failures with back-off."""
    failures: list[float] = []
    delay = FIRST_DELAY_S
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    while True:
        started = clock()
        with subprocess.Popen(list(cmd), stdout=out, stderr=out, creationflags=flags) as child:
            try:
                code = child.wait()
            except KeyboardInterrupt:
                child.terminate()
                return child.wait()
        ended = clock()
        if code == 0:
            return 0
        failures = [t for t in failures if ended - t < FAILURE_WINDOW_S] + [ended]
        if len(failures) >= MAX_FAILURES:
            print(f"edged launcher: {len(failures)} failures in 10 min; giving up", file=out)
            out.flush()
            return code
        if ended - started >= HEALTHY_RUN_S:
            delay = FIRST_DELAY_S
        print(f"edged launcher: daemon exited with {code}; restart in {delay:.0f}s", file=out)
        out.flush()
        sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edged.installer.launch")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--log", type=Path, required=True, help="append output here")
    ns = parser.parse_args(argv)
    for item in ns.env:
        name, _, value = item.partition("=")
        os.environ[name] = value
    ns.log.parent.mkdir(parents=True, exist_ok=True)
    with ns.log.open("a", encoding="utf-8") as out:
        return supervise([sys.executable, "-m", "edged.daemon"], out)


if __name__ == "__main__":
    raise SystemExit(main())
