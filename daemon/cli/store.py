"""Store commands: verify, gc, export, import (an archive, or --from another program).

They work on the model store directly (under its locks), not through the
daemon, so they also work with the daemon stopped and on an offline machine.
They are safe beside a running daemon: a collection or a repair waits for, or
skips during, any pull in progress.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edged.common import errors
from edged.daemon import config
from edged.daemon.cli import render
from edged.daemon.cli.context import Context
from edged.models_registry import importers
from edged.models_registry.archive import export_model, import_archive
from edged.models_registry.progress import PullProgress
from edged.models_registry.store import GcReport, Store
from edged.models_registry.verify import PROBLEM, VerifyReport, verify
from edged.v1 import edged_pb2 as pb


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="re-hash every model file and check every manifest",
        description="Re-hash every blob in the model store and check every manifest and "
        "folder view. Exits 1 when a problem is found. Works with the daemon stopped.",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="move corrupt files and unreadable manifests into quarantine/ (nothing is "
        "deleted) and say which models to pull again",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "gc",
        help="remove files no model uses and stale partial downloads",
        description="Remove blobs no model uses and stale temporary and partial files older "
        "than the grace period (EDGED_GC_GRACE_S, default 3600 s). Skipped while a pull "
        "is in progress.",
    )
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="grace period for this run [env EDGED_GC_GRACE_S]",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser(
        "export",
        help="write a model to one tar archive (for offline machines)",
        description="Write MODEL (manifest and files, re-hashed on the way) to one tar "
        "archive; `edged import` adds it to another machine's store.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", metavar="FILE.tar", type=Path, required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import",
        help="add a model from an `edged export` archive, or Ollama's, LM Studio's or "
        "the Hugging Face cache's models",
        description=_IMPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "archive",
        metavar="FILE.tar|NAME[:TAG]",
        nargs="?",
        help="the archive to import; with --from, which model(s) to import (default: all)",
    )
    p.add_argument(
        "--name",
        metavar="NAME[:TAG]",
        help="store it under this name (with --from: the one model NAME[:TAG] picks)",
    )
    p.add_argument(
        "--from",
        dest="from_",
        choices=importers.SOURCES,
        help="import from this program's models: ollama ($OLLAMA_MODELS or "
        "~/.ollama/models), lmstudio (~/.lmstudio/models, ~/.cache/lm-studio/models), "
        "hf-cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)",
    )
    p.add_argument(
        "--path", metavar="DIR", type=Path, help="with --from: read the models from DIR instead"
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="with --from: show what would be imported and what is already there; import nothing",
    )
    p.add_argument("--json", action="store_true", help="with --from: machine-readable output")
    p.set_defaults(func=cmd_import)


_IMPORT_DESCRIPTION = """\
edged import FILE.tar [--name NAME[:TAG]]
  Check every member of FILE.tar (made by `edged export`) and add its model to
  the store. A bad archive is refused and leaves the store as it was.

edged import --from {ollama,lmstudio,hf-cache} [NAME[:TAG]] [--path DIR] [--list]
  Add the GGUF models another program keeps (all of them, or those NAME[:TAG]
  names) without copying them: each file is hard-linked into the store
  (reflinked, or else copied, when on another file system) and hashed before
  it is accepted; the other program's folder is never written.
  Ollama's registry.ollama.ai/library/NAME:TAG becomes NAME:TAG, any other one
  NAMESPACE/NAME:TAG (hf.co/owner/repo:TAG becomes owner/repo:TAG), with its
  system prompt and parameters (num_ctx as the model's context length); its
  chat template is not used (edged uses the GGUF's) and a LoRA adapter is
  refused. An LM Studio or Hugging Face cache file is named after the file and
  tagged latest, as `edged pull` names it. A name edged already uses for
  another model is not overwritten (import it with --name). Split GGUFs and
  vision projectors are skipped. Exits 1 if any model was refused."""


def open_store(*, grace_s: float | None = None) -> Store:
    try:
        paths = config.load_paths()
        grace = config.load_gc_grace() if grace_s is None else grace_s
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from exc
    if not math.isfinite(grace) or grace < 0:
        raise errors.InvalidArgument("the grace period must be a number of seconds >= 0")
    return Store(paths.registry_dir, gc_grace_s=grace)


def _console(ctx: Context) -> Console:
    console = Console(file=ctx.stdout, highlight=False)
    if not console.is_terminal:  # a pipe or a file: one line per finding, never folded
        console = Console(file=ctx.stdout, highlight=False, width=250)
    return console


# -- verify -----------------------------------------------------------------------------


def cmd_verify(ctx: Context, args: argparse.Namespace) -> int:
    store = open_store()
    report = verify(
        store,
        repair=args.repair,
        on_wait=lambda: ctx.err("waiting for the pulls in progress to finish before repairing"),
    )
    if args.json:
        render.print_json(report.to_dict(), ctx.stdout)
    else:
        _print_verify(ctx, report)
    return 0 if report.ok else 1


def _print_verify(ctx: Context, report: VerifyReport) -> None:
    console = _console(ctx)
    if report.findings:
        table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
        for column in ("", "WHERE", "FINDING", "ACTION"):
            table.add_column(column, overflow="fold")
        for f in sorted(report.findings, key=lambda f: (f.severity != PROBLEM, f.where)):
            mark = "[red]problem[/red]" if f.severity == PROBLEM else "note"
            table.add_row(mark, f.where, f.issue, f.action)
        console.print(table)
        console.print()
    summary = (
        f"checked {report.blobs} blob(s) ({render.human_bytes(report.bytes_hashed)} "
        f"re-hashed), {report.manifests} manifest(s), {report.views} view(s) "
        f"in {report.seconds:.1f} s"
    )
    console.print(summary)
    if report.quarantined:
        console.print(f"moved {len(report.quarantined)} item(s) into quarantine/ (nothing deleted)")
    if report.repull:
        console.print("pull these models again: " + ", ".join(sorted(set(report.repull))))
    if report.ok:
        console.print("[green]ok[/green]: no problems found")
    else:
        n = len(report.problems)
        hint = "" if report.repaired else "; `edged verify --repair` moves damaged files aside"
        console.print(f"[red]{n} problem(s)[/red]{hint}")


# -- gc ---------------------------------------------------------------------------------


def cmd_gc(ctx: Context, args: argparse.Namespace) -> int:
    store = open_store(grace_s=args.grace)
    report = store.collect(dry_run=args.dry_run)
    if args.json:
        render.print_json(_gc_dict(report), ctx.stdout)
    else:
        _print_gc(ctx, report, store.gc_grace_s)
    return 1 if report.skipped else 0


def _gc_dict(report: GcReport) -> dict[str, object]:
    return {
        "dry_run": report.dry_run,
        "skipped": report.skipped,
        "blobs": report.blobs,
        "views": report.views,
        "tmp": report.tmp,
        "partial": report.partial,
        "freed_bytes": report.freed_bytes,
        "kept_young": report.kept_young,
        "kept_in_flight": report.kept_in_flight,
    }


def _print_gc(ctx: Context, report: GcReport, grace: float) -> None:
    if report.skipped:
        ctx.err(f"edged: gc skipped: {report.skipped}")
        return
    verb = "would remove" if report.dry_run else "removed"
    rows = [
        *(("blob", d) for d in report.blobs),
        *(("view", f"views/{v}") for v in report.views),
        *(("tmp", f"tmp/{t}") for t in report.tmp),
        *(("partial", f"partial/{p}") for p in report.partial),
    ]
    if rows:
        ctx.out(render.table(["KIND", verb.upper()], [list(r) for r in rows]))
    ctx.out(f"{verb} {len(rows)} item(s), {render.human_bytes(report.freed_bytes)}")
    kept = len(report.kept_young) + len(report.kept_in_flight)
    if kept:
        ctx.out(
            f"kept {len(report.kept_young)} unused item(s) younger than {grace:g} s and "
            f"{len(report.kept_in_flight)} download(s) in progress (--grace 0 removes the former)"
        )


# -- export / import ---------------------------------------------------------------------


def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    store = open_store()
    out = args.output.expanduser().absolute()
    with render.PullDisplay(ctx.stderr) as display:
        ref, manifest, size = export_model(
            store, args.model, out, progress=lambda p: display.update(_pb(p))
        )
    ctx.out(
        f"exported {ref} ({len(manifest.digests)} file(s)) to {args.output} "
        f"({render.human_bytes(size)})"
    )
    return 0


def cmd_import(ctx: Context, args: argparse.Namespace) -> int:
    if args.from_ is not None:
        return _import_from(ctx, args)
    if args.archive is None:
        raise errors.InvalidArgument(
            "give the archive to import (FILE.tar), or --from ollama|lmstudio|hf-cache"
        )
    if args.path is not None or args.list or args.json:
        raise errors.InvalidArgument("--path, --list and --json go with --from")
    store = open_store()
    with render.PullDisplay(ctx.stderr) as display:
        ref, manifest = import_archive(
            store,
            Path(args.archive).expanduser().absolute(),
            name=args.name,
            progress=lambda p: display.update(_pb(p)),
        )
    ctx.out(f"imported {ref} ({render.human_bytes(manifest.size)})")
    return 0


def _import_from(ctx: Context, args: argparse.Namespace) -> int:
    store = open_store()
    paths = [args.path] if args.path is not None else None
    if args.json or args.list:
        report = importers.import_from(
            store, args.from_, paths=paths, pattern=args.archive, name=args.name, dry_run=args.list
        )
    else:
        with render.PullDisplay(ctx.stderr) as display:
            report = importers.import_from(
                store,
                args.from_,
                paths=paths,
                pattern=args.archive,
                name=args.name,
                progress=lambda p: display.update(_pb(p)),
            )
    if args.json:
        render.print_json(report.to_dict(), ctx.stdout)
    else:
        _print_imports(ctx, report)
    return 0 if report.ok or report.dry_run else 1


def _print_imports(ctx: Context, report: importers.ImportReport) -> None:
    where = ", ".join(str(r) for r in report.roots)
    if not report.outcomes:
        ctx.out(f"no GGUF models found in {where}")
        return
    for o in report.outcomes:
        if o.status == importers.IMPORTED:
            line = f"imported {o.model} ({o.how}, {render.human_bytes(o.size)}) from {o.source}"
        elif o.status == importers.WOULD_IMPORT:
            line = f"would import {o.model} ({render.human_bytes(o.size)}) from {o.source}"
        elif o.status == importers.ALREADY:
            line = f"already there: {o.model} ({o.source})"
        elif o.status == importers.SKIPPED:
            line = f"skipped {o.model}: {o.reason}"
        else:
            line = f"refused {o.model}: {o.reason}"
        ctx.out(line)
        for note in o.notes:
            ctx.out(f"  note: {note}")
    counts = [
        (importers.WOULD_IMPORT if report.dry_run else importers.IMPORTED),
        importers.ALREADY,
        importers.REFUSED,
        importers.SKIPPED,
    ]
    summary = ", ".join(f"{report.count(s)} {s}" for s in counts if report.count(s))
    ctx.out(f"{summary} (from {where})" + ("; --list imports nothing" if report.dry_run else ""))


def _pb(p: PullProgress) -> pb.PullProgress:
    return pb.PullProgress(status=p.status, completed_bytes=p.completed, total_bytes=p.total)
