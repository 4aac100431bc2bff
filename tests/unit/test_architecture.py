"""The shape of the code: dependencies point one way, and only backends/ names backends.

Layers (each may import itself and those to its right):

    edged.daemon -> edged.backends, edged.models_registry -> edged.common

``edged.installer`` stands alone. Inside the daemon, services reach workers
through the scheduler (never ``edged.daemon.workers``). The checks read the
source with ``ast`` (imports inside functions count too), so they need no
installed package and cannot be fooled by import order.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.backends import registry

ROOT = Path(__file__).parents[2]
# folder -> the installed package it becomes
PACKAGES = {
    "common": "edged.common",
    "backends": "edged.backends",
    "models_registry": "edged.models_registry",
    "installer": "edged.installer",
    "daemon": "edged.daemon",
}
# package -> the edged packages it must never import
FORBIDDEN = {
    "edged.common": ("edged.daemon", "edged.backends", "edged.models_registry", "edged.installer"),
    "edged.backends": ("edged.daemon", "edged.models_registry", "edged.installer"),
    "edged.models_registry": ("edged.daemon", "edged.backends", "edged.installer"),
    "edged.installer": ("edged.daemon", "edged.backends", "edged.models_registry"),
}
# inside the daemon: folder -> modules it must not import
DAEMON_FORBIDDEN = {"services": ("edged.daemon.workers",)}


def imported_modules(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for every import in ``source``; relative
    imports are resolved against ``package`` (the importing module's package)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # "from edged import daemon" imports edged.daemon
                yield node.lineno, f"{module}.{alias.name}"


def violations(root: Path, folder: str, package: str, forbidden: tuple[str, ...]) -> list[str]:
    """Every import under ``root/folder`` of a module in (or under) ``forbidden``."""
    out = []
    for path in sorted((root / folder).rglob("*.py")):
        rel = path.relative_to(root / folder)
        pkg = ".".join([package, *rel.parent.parts])
        for line, module in imported_modules(path.read_text(), pkg):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                out.append(f"{folder}/{rel}:{line} imports {module}")
    return out


@pytest.mark.parametrize("folder", [f for f in PACKAGES if PACKAGES[f] in FORBIDDEN])
def test_lower_layers_never_import_higher_ones(folder: str) -> None:
    package = PACKAGES[folder]
    assert violations(ROOT, folder, package, FORBIDDEN[package]) == []


@pytest.mark.parametrize("folder", list(DAEMON_FORBIDDEN))
def test_services_reach_workers_through_the_scheduler(folder: str) -> None:
    found = violations(ROOT / "daemon", folder, f"edged.daemon.{folder}", DAEMON_FORBIDDEN[folder])
    assert found == []


def test_the_contract_catches_a_violation(tmp_path: Path) -> None:
    """The check above is shown to fail: a backend module that imports the daemon
    (absolute, relative across the boundary, and lazily inside a function)."""
    pkg = tmp_path / "backends" / "fake"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text(
        "from edged.daemon.errors import Internal\n"
        "from ...daemon import scheduler\n"
        "def later():\n"
        "    import edged.daemon.workers\n"
        "from edged.common import errors  # allowed\n"
    )
    found = violations(tmp_path, "backends", "edged.backends", FORBIDDEN["edged.backends"])
    lines = sorted({int(v.split(":")[1].split()[0]) for v in found})
    assert lines == [1, 2, 4], found  # line 5 (edged.common) is allowed


# ---------------------------------------------------------------- backend names


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (documentation may name backends)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def backend_literals(root: Path, names: list[str]) -> list[str]:
    """String literals (docstrings aside) under ``root`` that name a backend."""
    pattern = re.compile(r"(?<![\w.-])(?:" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            named = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if named and id(node) not in docs and pattern.search(node.value):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {node.value!r}")
    return found


def test_no_backend_is_named_in_the_daemon() -> None:
    """Callers ask the registry or a backend's capabilities, never a backend's name."""
    assert backend_literals(ROOT / "daemon", registry.names()) == []


def test_the_name_scan_catches_a_literal(tmp_path: Path) -> None:
    (tmp_path / "daemon").mkdir()
    (tmp_path / "daemon" / "x.py").write_text(
        '"""Docs may say llama.cpp."""\n'
        'if backend == "openvino":\n'
        "    pass\n"
        'TABLE = {"onnxruntime": 4.0}\n'
        'HINT = f"run it on llama.cpp"\n'
    )
    found = backend_literals(tmp_path / "daemon", registry.names())
    assert [f.split(":")[1] for f in found] == ["2", "4", "5"]


def test_the_registry_is_the_one_list() -> None:
    """Every backend package has an entry, and every hook an entry names resolves."""
    folders = {p.parent.name for p in (ROOT / "backends").glob("*/info.py") if p.parent.is_dir()}
    assert {b.engine.split(".")[2] for b in registry.BACKENDS} == folders
    from edged.backends.info import load_hook

    for b in registry.BACKENDS:
        for hook in (b.placement, b.probe, b.apply_probe):
            if hook:
                assert callable(load_hook(hook)), hook
        module, _, cls = b.engine.partition(":")
        assert cls and module.startswith(f"edged.backends.{module.split('.')[2]}.")


def test_the_readme_layout_matches_the_tree() -> None:
    """README "How it is put together" names every top-level folder, and only those."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How it is put together", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    named = {ln.split("/")[0] for ln in block.splitlines() if ln and not ln[0].isspace()}
    tree = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any(p.rglob("*.py"))
    }
    tree -= {"build", "dist"}  # build outputs
    assert named == tree
