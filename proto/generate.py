"""Generate the Python modules for proto/edged/v1/*.proto (run from the repo root).

    python proto/generate.py            # rewrite proto/edged/v1/*_pb2*.py[i]
    python proto/generate.py --check    # exit 1 when the committed files are stale

Needs grpcio-tools (pinned in the ``dev`` extra so output is reproducible).
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_FILES = ("edged_pb2.py", "edged_pb2.pyi", "edged_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(HERE)) for p in (HERE / "edged" / "v1").glob("*.proto"))
    args = [
        "protoc",
        f"-I{HERE}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    import os

    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    finally:
        os.chdir(cwd)


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        gen, committed = Path(tmp) / "edged" / "v1", HERE / "edged" / "v1"
        return [
            name
            for name in OUT_FILES
            if not (committed / name).exists()
            or not filecmp.cmp(gen / name, committed / name, shallow=False)
        ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        if stale:
            print("stale generated files (run python proto/generate.py):", *stale)
            return 1
        return 0
    generate(HERE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
