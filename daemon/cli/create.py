"""``edged create``: a new model name with its own defaults, sharing a stored
model's files; and ``edged cp``: the same model under a second name."""

from __future__ import annotations

import argparse
from pathlib import Path

from edged.common import errors
from edged.daemon.cli import render
from edged.daemon.cli.context import Context
from edged.daemon.cli.models import follow, pull_source
from edged.models_registry import modelfile
from edged.v1 import edged_pb2 as pb


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "create",
        help="make a model with its own system prompt and defaults (no files copied)",
        description=(
            "Store MODEL's files under NAME too, with NAME's own system prompt and "
            "sampling defaults (like `ollama create`). Give the model with --from, or an "
            "Ollama Modelfile with -f (its FROM, SYSTEM and PARAMETER lines; FROM may be "
            "a GGUF file path, which is pulled first). Options override the Modelfile. "
            "Parameters: temperature, top_p, top_k, min_p, repeat_penalty, num_predict, "
            "num_ctx (the context setting) and stop (repeatable)."
        ),
    )
    p.add_argument("name", metavar="NAME", help="the new model's name[:tag]")
    p.add_argument("--from", dest="source", metavar="MODEL", help="the stored model to start from")
    p.add_argument(
        "-f", "--file", dest="modelfile", metavar="MODELFILE", type=Path, help="an Ollama Modelfile"
    )
    p.add_argument("--system", metavar="TEXT", help="the system prompt (default: MODEL's)")
    p.add_argument(
        "--param",
        dest="params",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a default, e.g. temperature=0.2 or stop='<|end|>' (repeatable)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace a different model already stored as NAME"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser(
        "cp",
        help="store a model under a second name (no files copied)",
        description="Store SOURCE under DESTINATION too, with its settings; the files are "
        "shared, not copied.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("destination", metavar="DESTINATION")
    p.add_argument(
        "--force", action="store_true", help="replace a different model already stored there"
    )
    p.set_defaults(func=cmd_cp)


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    parsed = _read_modelfile(args.modelfile) if args.modelfile is not None else None
    source = args.source or (parsed.source if parsed is not None else "")
    if not source:
        raise errors.InvalidArgument("say which model to start from: --from MODEL or -f Modelfile")
    system = args.system if args.system is not None else (parsed.system if parsed else None)
    params = [*(parsed.parameters if parsed else ()), *map(_param, args.params)]
    for note in parsed.notes if parsed else ():
        ctx.err(f"edged: {note}")
    client = ctx.client()
    if _is_file(source):  # FROM ./model.gguf: pull it under NAME first
        request = pb.PullRequest(source=pull_source(source), name=args.name)
        follow(ctx, client.models.Pull(request), "the pull")
        source = args.name
    request_ = pb.CreateModelRequest(
        name=args.name,
        source=source,
        parameters=[pb.ModelParameter(key=k, value=v) for k, v in params],
        replace=args.force,
    )
    if system is not None:
        request_.system_prompt = system
    reply = client.models.Create(request_)
    for note in reply.notes:
        ctx.err(f"edged: {note}")
    if args.json:
        render.print_json(render.to_dict(reply), ctx.stdout)
    else:
        ctx.out(f"created {render.model_name(reply.model)} from {source}")
    return 0


def cmd_cp(ctx: Context, args: argparse.Namespace) -> int:
    request = pb.CopyModelRequest(
        source=args.source, destination=args.destination, replace=args.force
    )
    model = ctx.client().models.Copy(request)
    ctx.out(f"copied {args.source} to {render.model_name(model)}")
    return 0


def _read_modelfile(path: Path) -> modelfile.Modelfile:
    try:
        with open(path, "rb") as f:
            raw = f.read(modelfile.MAX_MODELFILE_BYTES + 1)
    except OSError as exc:
        raise errors.InvalidArgument(
            f"cannot read the Modelfile {str(path)[:200]!r}: {exc.strerror or exc}"
        ) from exc
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise errors.InvalidArgument("the Modelfile is not UTF-8 text") from exc
    parsed = modelfile.parse(text)
    if _is_file(parsed.source) and not Path(parsed.source).is_absolute():
        # Ollama reads FROM paths relative to the Modelfile
        source = str((path.parent / parsed.source).resolve())
        return modelfile.Modelfile(source, parsed.system, parsed.parameters, parsed.notes)
    return parsed


def _is_file(source: str) -> bool:
    return source.lower().endswith(".gguf") or source.startswith(("/", "./", "../", "~"))


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value:
        raise errors.InvalidArgument(f"--param takes KEY=VALUE, got {text[:80]!r}")
    return key.strip().lower(), value
