"""Import the GGUF models other programs keep (Ollama, LM Studio, the Hugging Face
cache) without copying them: ``edged import --from ollama|lmstudio|hf-cache``.

Each file is hard-linked into the store where it can be (reflinked, else copied,
where it cannot), hashed before it is accepted, and registered as a pull of it
would be (pull.add_gguf). The other program's folder is only read: nothing there
is written, renamed or chmodded. Per model, the outcome is one of imported,
already there (the same name holds these very bytes), refused (with the reason:
a damaged or hostile entry, a name edged already uses for another model) or
skipped (a split GGUF, a vision projector); nothing of a refused model is left
in the store, and the others still come in.

    report = import_from(store, "ollama", paths=[Path("~/.ollama/models")])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edged.common.errors import InvalidArgument, NotFound

from ..progress import ProgressFn
from ..store import Store
from . import hf_cache, lmstudio, ollama
from .common import (
    ALREADY,
    IMPORTED,
    REFUSED,
    SKIPPED,
    WOULD_IMPORT,
    Found,
    Outcome,
    import_found,
    select,
)

OLLAMA, LMSTUDIO, HF_CACHE = "ollama", "lmstudio", "hf-cache"
SOURCES = (OLLAMA, LMSTUDIO, HF_CACHE)
_TITLES = {OLLAMA: "Ollama", LMSTUDIO: "LM Studio", HF_CACHE: "Hugging Face cache"}


@dataclass(frozen=True)
class ImportReport:
    source: str  # one of SOURCES
    roots: tuple[Path, ...]  # the folders read
    outcomes: tuple[Outcome, ...]
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not any(o.status == REFUSED for o in self.outcomes)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "roots": [str(r) for r in self.roots],
            "dry_run": self.dry_run,
            "ok": self.ok,
            "models": [o.to_dict() for o in self.outcomes],
        }


def default_roots(
    source: str, env: Mapping[str, str] | None = None, home: Path | None = None
) -> list[Path]:
    """Where ``source`` keeps its models (the environment variables it honours)."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if source == OLLAMA:
        return [ollama.default_root(env, home)]
    if source == LMSTUDIO:
        return lmstudio.default_roots(home)
    if source == HF_CACHE:
        return [hf_cache.default_root(env, home)]
    raise InvalidArgument(f"unknown source {source[:40]!r}: use one of {', '.join(SOURCES)}")


def scan(source: str, roots: list[Path]) -> list[Found]:
    """The models in ``roots`` (refusals included); raises NotFound without a folder."""
    if source == OLLAMA:
        return [f for root in roots for f in ollama.scan(root)]
    if source == LMSTUDIO:
        return lmstudio.scan(roots)
    if source == HF_CACHE:
        return [f for root in roots for f in hf_cache.scan(root)]
    raise InvalidArgument(f"unknown source {source[:40]!r}: use one of {', '.join(SOURCES)}")


def import_from(
    store: Store,
    source: str,
    *,
    paths: list[Path] | None = None,
    pattern: str | None = None,
    name: str | None = None,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Import the models of ``source`` (``paths`` overrides where it keeps them).

    ``pattern`` (``NAME[:TAG]``) picks models by their edged name or the other
    program's; ``name`` renames the one model picked; ``dry_run`` only says what
    would happen (``--list``), writing nothing.
    """
    roots = [p.expanduser().absolute() for p in paths] if paths else default_roots(source)
    found = select(scan(source, roots), pattern)
    if pattern and not found:
        raise NotFound(
            f"no model {pattern[:80]!r} in the {_TITLES[source]} models at "
            f"{', '.join(str(r) for r in roots)}; `edged import --from {source} --list` "
            "shows them"
        )
    outcomes = import_found(store, found, name=name, dry_run=dry_run, progress=progress)
    return ImportReport(source, tuple(roots), tuple(outcomes), dry_run)


__all__ = [
    "ALREADY",
    "HF_CACHE",
    "IMPORTED",
    "LMSTUDIO",
    "OLLAMA",
    "REFUSED",
    "SKIPPED",
    "SOURCES",
    "WOULD_IMPORT",
    "Found",
    "ImportReport",
    "Outcome",
    "default_roots",
    "import_from",
    "scan",
]
