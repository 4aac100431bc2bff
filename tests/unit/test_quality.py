"""ruff and mypy stay clean (run as tests so CI fails when they are not)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = {
    "common": "common",
    "daemon": "daemon",
    "backends": "backends",
    "models_registry": "models_registry",
    "installer": "installer",
}


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it is in the dev extra)")
    return found


def test_ruff_clean() -> None:
    out = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_clean() -> None:
    out = subprocess.run(
        [_tool("ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_clean(tmp_path: Path) -> None:
    """mypy --strict over the packages as installed names (edged.daemon, ...).

    The repository's folders are mapped to ``edged.*`` only at install time, so
    a tree of links gives mypy the same view without depending on how (or
    whether) the project was installed.
    """
    mypy = _tool("mypy")
    tree = tmp_path / "edged"
    tree.mkdir()
    for name, folder in PACKAGES.items():
        (tree / name).symlink_to(ROOT / folder)
    (tree / "v1").symlink_to(ROOT / "proto" / "edged" / "v1")
    out = subprocess.run(
        [
            mypy,
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--explicit-package-bases",
            "--cache-dir",
            str(tmp_path / ".cache"),
            *(f"edged/{n}" for n in PACKAGES),
        ],
        cwd=tmp_path,
        env={"MYPYPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_package_folder_is_packaged() -> None:
    """A folder with __init__.py missing from pyproject's list would not be installed."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for top, name in PACKAGES.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join(("edged", name, *rel)))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
