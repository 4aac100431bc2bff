"""A real full disk: the daemon's data folder is a 100 MiB tmpfs, mounted in a private
mount namespace (``unshare``; as an unprivileged user through a user namespace),
so nothing outside the test sees it. The scenario runs inside that namespace
(this module run as a script) against a real daemon and a loopback HTTP server:

1. A pull with a digest and a Content-Length passes the up-front space check;
   the disk then fills up under it (a filler file takes every free byte). The
   pull ends with RESOURCE_EXHAUSTED saying how much is free and where, after
   one request (no retry storm), and keeps its resumable partial file. The
   filler is removed and the same pull resumes (a Range request) and succeeds,
   on the same daemon process.
2. A pull without digest or Content-Length (nothing can vouch for a partial)
   runs the disk full: RESOURCE_EXHAUSTED, and its partial file is removed.
3. After a delete frees space, another pull succeeds; no restart in between,
   and `edged verify` finds nothing wrong.

Where no mount namespace can be made (no unshare, user namespaces disabled),
the test is skipped with that reason; tests/unit/registry/test_store_integrity.py
injects ENOSPC at the write call instead, and runs everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

TMPFS_MB = 100
ROOT = Path(__file__).resolve().parents[2]


def _namespace_prefix(probe_dir: Path) -> list[str] | None:
    """The unshare command line that can mount a tmpfs here, or None."""
    if shutil.which("unshare") is None or sys.platform != "linux":
        return None
    probe_dir.mkdir(parents=True, exist_ok=True)
    candidates = [["unshare", "--user", "--map-root-user", "--mount"]]
    if os.geteuid() == 0:
        candidates.append(["unshare", "--mount"])
    for prefix in candidates:
        cmd = [*prefix, "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", str(probe_dir)]
        if subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
            return prefix
    return None


@pytest.mark.slow
def test_full_disk_stops_the_pull_and_the_next_one_succeeds(tmp_path: Path) -> None:
    prefix = _namespace_prefix(tmp_path / "probe")
    if prefix is None:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (unshare)")
    data = tmp_path / "d" / "data"
    data.mkdir(parents=True)
    script = 'mount -t tmpfs -o size="$1"m tmpfs "$2" && exec "$3" -m "$4" "$5"'
    cmd = [*prefix, "sh", "-c", script, "sh", str(TMPFS_MB), str(data), sys.executable]
    cmd += ["tests.integration.test_store_full_disk", str(tmp_path / "d")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    print(out.stdout)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "full-disk scenario passed" in out.stdout


# -- the scenario, inside the namespace --------------------------------------------------


def _fill(folder: Path) -> Path:
    """Take every free byte of the file system holding ``folder``."""
    filler = folder / "filler.bin"
    block = b"\xff" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
        try:
            while True:  # the last few KiB
                f.write(b"\xff" * 4096)
        except OSError:
            pass
    return filler


def _pull(daemon: object, url: str, digest: str = "", timeout: float = 120) -> object:
    from edged.v1 import edged_pb2 as pb

    last = None
    models = daemon.models  # type: ignore[attr-defined]
    for p in models.Pull(pb.PullRequest(source=url, digest=digest), timeout=timeout):
        last = p
    return last


def _scenario(root: Path) -> None:  # pragma: no cover - runs in a subprocess
    from edged.models_registry.store import Store
    from edged.models_registry.verify import verify
    from edged.v1 import edged_pb2 as pb
    from harness.daemon import start_daemon
    from harness.store_crash_kit import Served, file_server, sha256, tiny_gguf

    data = root / "data"
    store_root = data / "models"
    free = shutil.disk_usage(data)
    assert free.total <= (TMPFS_MB + 1) << 20, f"not on the small tmpfs: {free}"
    daemon = start_daemon(root)
    pid = daemon.proc.pid
    store = Store(store_root)
    try:
        with file_server() as server:
            # 1. the disk fills up under a resumable pull
            big = tiny_gguf(30 << 20, "big")
            url = server.add("/big.gguf", Served(big, delay=0.05, chunk=256 << 10))
            errors: list[grpc.RpcError] = []

            def pull_big() -> None:
                try:
                    _pull(daemon, url, sha256(big))
                except grpc.RpcError as exc:
                    errors.append(exc)

            t = threading.Thread(target=pull_big)
            t.start()
            part: Path | None = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                parts = list(store.partial_dir.glob("*.part"))
                if parts and parts[0].stat().st_size >= 8 << 20:
                    part = parts[0]
                    break
                time.sleep(0.02)
            assert part is not None, "the download did not start"
            filler = _fill(data)
            t.join(120)
            assert errors, "the pull did not fail on a full disk"
            err = errors[0]
            print("1. error:", err.code(), err.details())
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "not enough disk space while downloading a model" in err.details()
            assert f"free in {store_root}" in err.details()
            time.sleep(1.0)  # no retry storm: still just the one request
            assert server.requests_for("/big.gguf") == [""], server.requests_for("/big.gguf")
            kept = part.stat().st_size
            assert part.exists() and kept > 0, "the resumable partial file was not kept"
            print(f"   kept a resumable partial of {kept} bytes; 1 request")
            filler.unlink()
            done = _pull(daemon, url, sha256(big))
            assert done is not None and done.model.digest == sha256(big)  # type: ignore[attr-defined]
            ranges = server.requests_for("/big.gguf")
            assert len(ranges) == 2 and ranges[1] == f"bytes={kept}-", ranges
            print(f"   after freeing space the same pull resumed ({ranges[1]}) and succeeded")

            # 2. no digest, no Content-Length: the disk fills, nothing is kept
            huge = tiny_gguf(90 << 20, "huge")
            url2 = server.add("/huge.gguf", Served(huge, content_length=False, chunk=1 << 20))
            try:
                _pull(daemon, url2)
                raise AssertionError("the pull of a file larger than the disk succeeded")
            except grpc.RpcError as exc:
                print("2. error:", exc.code(), exc.details())
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "not enough disk space" in exc.details()
            time.sleep(0.5)
            assert len(server.requests_for("/huge.gguf")) == 1
            left = [p.name for p in (*store.partial_dir.iterdir(), *store.tmp_dir.iterdir())]
            assert left == [], f"a non-resumable download left {left}"
            print("   its partial file was removed; 1 request")

            # 3. free space by deleting a model; the next pull works, same daemon
            daemon.models.Delete(pb.ModelRef(model="big"), timeout=30)
            small = tiny_gguf(5 << 20, "small")
            url3 = server.add("/small.gguf", Served(small))
            done = _pull(daemon, url3, sha256(small))
            assert done is not None and done.model.digest == sha256(small)  # type: ignore[attr-defined]
            assert daemon.proc.pid == pid and daemon.proc.poll() is None
            report = verify(store)
            assert report.ok, report.problems
            print("3. after a delete the next pull succeeded; same daemon; verify ok")
    finally:
        daemon.stop()
    print("full-disk scenario passed")


if __name__ == "__main__":  # pragma: no cover
    _scenario(Path(sys.argv[1]))
