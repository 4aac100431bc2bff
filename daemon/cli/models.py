"""Model commands: pull, list, ps, show, rm, stop."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

from edged.daemon import errors
from edged.daemon.cli import render
from edged.daemon.cli.context import Context
from edged.daemon.client import ResponseStream
from edged.v1 import edged_pb2 as pb

_MODEL_SUFFIXES = (".gguf", ".onnx")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pull",
        help="add a model from the catalog, a URL, a Hugging Face repo or a local path",
        description=(
            "Add a model to the local registry. SOURCE is a catalog name "
            "(smollm2, smollm2:135m-q4_1), an http(s) URL of a GGUF file, an http(s) "
            "URL ending in / of an ONNX Runtime GenAI folder, a Hugging Face repo "
            "holding one (owner/repo or hf://owner/repo@revision; HF_ENDPOINT is "
            "honoured), or a local GGUF file or ONNX folder (relative paths are "
            "resolved here; the daemon reads them)."
        ),
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--name", metavar="NAME[:TAG]", default="", help="store it under this name")
    p.add_argument("--digest", metavar="sha256:HEX", default="", help="expected digest (for URLs)")
    p.add_argument("--json", action="store_true", help="print the model's info as JSON at the end")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("list", aliases=["ls"], help="list the models in the registry")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("ps", help="list the loaded models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("show", help="show a model's details")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--template", action="store_true", help="print the chat template")
    p.add_argument("--metadata", action="store_true", help="print the GGUF metadata")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("rm", help="remove models from the registry")
    p.add_argument("models", metavar="MODEL", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("stop", help="unload a running model")
    p.add_argument("model", metavar="MODEL")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "convert",
        help="add a variant in another format (GGUF -> int4 ONNX)",
        description="Convert MODEL's GGUF into an int4 ONNX Runtime GenAI variant stored with "
        "the model (needs the convert extra: pip install 'edged[convert]'). A conversion "
        "that fails leaves the registry as it was.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--to", choices=["onnx"], required=True, help="target format")
    p.add_argument("--json", action="store_true", help="print the model's info as JSON at the end")
    p.set_defaults(func=cmd_convert)


def pull_source(source: str) -> str:
    """URLs and catalog names pass through; paths become absolute."""
    if "://" in source:
        return source
    path = Path(source).expanduser()
    looks_like_path = (
        path.is_absolute()
        or source.startswith((".", "~", os.sep, "/"))
        or source.lower().endswith(_MODEL_SUFFIXES)
        or path.exists()
    )
    return str(path.resolve()) if looks_like_path else source


def cmd_pull(ctx: Context, args: argparse.Namespace) -> int:
    request = pb.PullRequest(source=pull_source(args.source), name=args.name, digest=args.digest)
    model = follow(ctx, ctx.client().models.Pull(request), "the pull")
    if args.json:
        render.print_json(render.to_dict(model), ctx.stdout)
    else:
        size = render.human_bytes(model.size_bytes)
        digest = render.short_digest(model.digest)
        ctx.out(f"pulled {render.model_name(model)} ({digest}, {size})")
    return 0


def follow(ctx: Context, call: ResponseStream[pb.PullProgress], what: str) -> pb.ModelInfo:
    """Show a Pull/Convert progress stream on stderr; return the final model."""
    model: pb.ModelInfo | None = None
    try:
        with render.PullDisplay(ctx.stderr) as display:
            for progress in call:
                display.update(progress)
                if progress.HasField("model"):
                    model = progress.model
    except KeyboardInterrupt:
        call.cancel()
        raise
    if model is None:
        raise errors.Internal(f"{what} ended without reporting a model")
    return model


def convert(ctx: Context, model: str, to: str) -> pb.ModelInfo:
    """Run Models.Convert with a progress display on stderr."""
    call = ctx.client().models.Convert(pb.ConvertRequest(model=model, to=to))
    return follow(ctx, call, "the conversion")


def cmd_convert(ctx: Context, args: argparse.Namespace) -> int:
    info = convert(ctx, args.model, args.to)
    if args.json:
        render.print_json(render.to_dict(info), ctx.stdout)
    else:
        ctx.out(f"converted {render.model_name(info)}: it now has an {args.to} variant")
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client().models.List(pb.ListModelsRequest())
    if args.json:
        render.print_json(render.to_dict(reply), ctx.stdout)
        return 0
    rows = [
        [
            render.model_name(m),
            render.short_digest(m.digest),
            render.human_bytes(m.size_bytes),
            m.format,
            m.quantization or "-",
            render.ago(m.modified_unix_ms),
        ]
        for m in reply.models
    ]
    headers = ["NAME", "DIGEST", "SIZE", "FORMAT", "QUANT", "MODIFIED"]
    ctx.out(render.table(headers, rows))
    return 0


def cmd_ps(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client().models.ListLoaded(pb.ListLoadedRequest())
    if args.json:
        render.print_json(render.to_dict(reply), ctx.stdout)
        return 0
    rows = [
        [
            m.model,
            m.backend,
            m.device,
            str(m.pid),
            render.human_bytes(m.rss_bytes),
            str(m.context_length),
            str(m.active_requests),
        ]
        for m in reply.models
    ]
    headers = ["MODEL", "BACKEND", "DEVICE", "PID", "RSS", "CONTEXT", "ACTIVE"]
    ctx.out(render.table(headers, rows))
    return 0


def _show_text(reply: pb.ShowModelResponse) -> str:
    m = reply.model
    rows = [
        ("name", render.model_name(m)),
        ("architecture", m.architecture or "-"),
        ("parameters", render.human_count(m.parameters) if m.parameters else "-"),
        ("context length", str(m.context_length or "-")),
        ("quantization", m.quantization or "-"),
        ("format", m.format),
        ("size", render.human_bytes(m.size_bytes)),
        ("digest", m.digest),
        ("source", m.source or "-"),
        ("modified", render.ago(m.modified_unix_ms)),
        ("chat template", "yes" if m.has_chat_template else "no"),
    ]
    text = "  Model\n" + "\n".join(f"    {key:<18}{value}" for key, value in rows)
    if reply.variants:
        vrows = [
            [
                v.name,
                v.format,
                v.quantization or "-",
                render.human_bytes(v.size_bytes),
                ", ".join(v.backends) or "(none installed)",
            ]
            for v in reply.variants
        ]
        table = render.table(["VARIANT", "FORMAT", "QUANT", "SIZE", "BACKENDS"], vrows)
        text += "\n\n  Variants\n" + "\n".join("    " + line for line in table.splitlines())
    defaults = [(k, f"{reply.sampling_defaults[k]:g}") for k in sorted(reply.sampling_defaults)]
    if reply.system_prompt:
        defaults.insert(0, ("system prompt", reply.system_prompt))
    if defaults:
        text += "\n\n  Defaults\n" + "\n".join(f"    {k:<18}{v}" for k, v in defaults)
    return text


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client().models.Show(pb.ModelRef(model=args.model))
    if args.json:
        render.print_json(render.to_dict(reply), ctx.stdout)
        return 0
    if not (args.template or args.metadata):
        ctx.out(_show_text(reply))
        return 0
    if args.template:
        if reply.chat_template:
            ctx.out(reply.chat_template.rstrip("\n"))
        else:
            ctx.err(f"edged: {args.model} has no chat template")
    if args.metadata:
        rows = [[key, reply.metadata[key]] for key in sorted(reply.metadata)]
        ctx.out(render.table(["KEY", "VALUE"], rows))
    return 0


def cmd_rm(ctx: Context, args: argparse.Namespace) -> int:
    client = ctx.client()
    status = 0
    for name in args.models:
        try:
            client.models.Delete(pb.ModelRef(model=name))
        except grpc.RpcError as exc:
            ctx.err(f"edged: {render.rpc_message(exc)}")
            status = 1
        else:
            ctx.out(f"deleted '{name}'")
    return status


def cmd_stop(ctx: Context, args: argparse.Namespace) -> int:
    ctx.client().models.Unload(pb.ModelRef(model=args.model))
    return 0
