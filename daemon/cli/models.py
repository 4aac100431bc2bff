"""Model commands: pull, list, search, ps, show, rm, stop, load, config."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from edged.backends import registry
from edged.common import errors
from edged.daemon.cli import render
from edged.daemon.cli.context import Context
from edged.daemon.cli.durations import human_duration, parse_duration, until
from edged.daemon.cli.system import backend_lines
from edged.daemon.client import ResponseStream
from edged.models_registry import catalog
from edged.v1 import edged_pb2 as pb

_MODEL_SUFFIXES = (".gguf", ".onnx")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pull",
        help="add a model from the catalog, a URL, a Hugging Face repo or a local path",
        description=(
            "Add a model to the local registry. SOURCE is a catalog name "
            "(smollm2, gemma3:270m; `edged list --available` lists them), an http(s) URL "
            "of a GGUF file, an http(s) "
            "URL ending in / of an ONNX Runtime GenAI folder, a Hugging Face repo "
            "holding one (owner/repo or hf://owner/repo@revision), one GGUF file in a "
            "Hugging Face repo (hf://owner/repo[@revision]/path/file.gguf; the token "
            "from HF_TOKEN or `hf auth login`), or a local GGUF file or ONNX folder "
            "(relative paths are resolved here; the daemon reads them). HF_ENDPOINT "
            "is honoured."
        ),
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--name", metavar="NAME[:TAG]", default="", help="store it under this name")
    p.add_argument("--digest", metavar="sha256:HEX", default="", help="expected digest (for URLs)")
    p.add_argument("--json", action="store_true", help="print the model's info as JSON at the end")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser(
        "list",
        aliases=["ls"],
        help="list the models in the registry (--available: the catalog)",
        description="List the models in the registry. With --available, list the catalog "
        "instead: the models `edged pull NAME[:TAG]` knows by name, each marked when it is "
        "already pulled.",
    )
    p.add_argument("--available", action="store_true", help="list the catalog's models instead")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "search",
        help="search the catalog of models `edged pull` knows by name",
        description="List the catalog's models whose name, family, description or "
        "capabilities contain every TERM (case-insensitive), each marked when it is already "
        "pulled. Exit status 1 when none matches.",
    )
    p.add_argument("terms", metavar="TERM", nargs="+")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_search)

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

    p = sub.add_parser(
        "stop",
        help="unload a loaded model",
        description="Unload MODEL now, pinned or not; streams still running on it end with "
        "UNAVAILABLE. Says so when it was not loaded (exit status 0 either way).",
    )
    p.add_argument("model", metavar="MODEL")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "load",
        help="load a model now (and pin it, or set its keep-alive)",
        description="Load MODEL into memory now, so the first request does not wait. On a "
        "loaded model, updates its keep-alive and pin (a bigger --context reloads it).",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument(
        "--pin", action="store_true", help="never unload it for idleness or to make room"
    )
    add_lifecycle_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser(
        "config",
        help="show or change a model's settings (backend, device, keep-alive, pin, context, "
        "KV, speculative)",
        description="Per-model settings, kept in the registry and used by every request "
        "that does not say otherwise (a request's own values win; EDGED_* are the "
        "defaults). Without options, prints the current settings.",
    )
    p.add_argument("model", metavar="MODEL")
    add_lifecycle_options(p)
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--pin", dest="pin", action="store_true", default=None, help="pin it")
    pin.add_argument("--no-pin", dest="pin", action="store_false", help="unpin it")
    p.add_argument(
        "--kv-type",
        choices=("f16", "q8_0", "q4_0", "auto"),
        help="KV cache element type: f16, q8_0 (about half the memory), q4_0 (a quarter); "
        "the backend must offer it (auto: EDGED_KV_TYPE)",
    )
    p.add_argument(
        "--rpc",
        metavar="HOST:PORT,...|local|auto",
        help="RPC workers for this model (`edged rpc-worker`); local: none; auto: EDGED_RPC",
    )
    p.add_argument(
        "--speculative",
        metavar="MODE",
        help="speculative decoding for greedy requests: auto (prompt-lookup drafts, only as "
        "long as they pay for their rows), ngram (always), off, or draft:MODEL (a draft "
        "model sharing this model's vocabulary); 'default' clears it (EDGED_SPECULATIVE)",
    )
    p.add_argument("--reset", action="store_true", help="clear every setting first")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "convert",
        help="add a variant in another format (safetensors -> GGUF, GGUF -> ONNX)",
        description="--to gguf: convert MODEL's safetensors (a Hugging Face folder) into a "
        "GGUF variant with convert_hf_to_gguf.py from the pinned sources (f16 and q8_0 "
        "directly, q4_k_m through the pinned quantizer); it replaces the model's GGUF "
        "variant. --to onnx: convert "
        "MODEL's GGUF into an ONNX Runtime GenAI variant that keeps the GGUF's quantized "
        "blocks (a type MatMulNBits cannot hold exactly is requantized to int4, and the "
        "progress says which weights). Both need the convert extra "
        "(pip install 'edged[convert]'); a conversion that fails leaves the registry as it was.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--to", choices=["gguf", "onnx"], required=True, help="target format")
    p.add_argument(
        "--quant",
        choices=["f16", "q8_0", "q4_k_m"],
        default="",
        help="for --to gguf: the quantization (default: f16)",
    )
    p.add_argument("--json", action="store_true", help="print the model's info as JSON at the end")
    p.set_defaults(func=cmd_convert)


def add_lifecycle_options(p: argparse.ArgumentParser) -> None:
    """--backend/--device/--keep-alive/--context, as load, config and run take them."""
    p.add_argument(
        "--backend",
        metavar="NAME",
        help=f"{', '.join(registry.names())} (default: the best for this hardware)",
    )
    p.add_argument("--device", metavar="DEV", help="cpu, cuda:0, gpu, npu (default: the best)")
    p.add_argument(
        "--keep-alive",
        dest="keep_alive",
        metavar="DURATION",
        type=parse_duration,
        help="how long it stays loaded once idle: 300, 30s, 5m, 1h, 0 (unload when idle), "
        "-1 or forever (default: EDGED_KEEP_ALIVE, 5 minutes)",
    )
    p.add_argument(
        "--context",
        metavar="N",
        type=int,
        help="context tokens per sequence (default: EDGED_CONTEXT)",
    )


def _context(args: argparse.Namespace) -> int:
    if args.context is None or args.context == 0:
        return 0
    if args.context < 0:
        raise errors.InvalidArgument("--context must not be negative")
    return int(args.context)


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


def convert(ctx: Context, model: str, to: str, quant: str = "") -> pb.ModelInfo:
    """Run Models.Convert with a progress display on stderr."""
    call = ctx.client().models.Convert(pb.ConvertRequest(model=model, to=to, quant=quant))
    return follow(ctx, call, "the conversion")


def cmd_convert(ctx: Context, args: argparse.Namespace) -> int:
    quant = getattr(args, "quant", "") or ""
    if quant and args.to != "gguf":
        raise errors.InvalidArgument("--quant applies to --to gguf")
    info = convert(ctx, args.model, args.to, quant)
    if args.json:
        render.print_json(render.to_dict(info), ctx.stdout)
    else:
        what = (
            f"a {args.to.upper()} ({(quant or 'f16').upper()})" if args.to == "gguf" else "an onnx"
        )
        ctx.out(f"converted {render.model_name(info)}: it now has {what} variant")
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    if args.available:
        return _show_catalog(ctx, catalog.entries(), json_output=args.json)
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


def cmd_search(ctx: Context, args: argparse.Namespace) -> int:
    found = [e for e in catalog.entries() if all(e in catalog.search(t) for t in args.terms)]
    if not found:
        ctx.err(f"edged: no model in the catalog matches {' '.join(args.terms)!r}")
        return 1
    return _show_catalog(ctx, found, json_output=args.json)


def _show_catalog(
    ctx: Context, entries: Sequence[catalog.CatalogEntry], *, json_output: bool
) -> int:
    local = _local_models(ctx)
    if json_output:
        render.print_json([_catalog_dict(e, local) for e in entries], ctx.stdout)
        return 0
    rows = [
        [
            str(e.ref),
            e.family,
            e.parameters,
            e.quantization,
            _catalog_size(e, local),
            ", ".join(e.capabilities),
            _pulled_text(e, local),
        ]
        for e in entries
    ]
    headers = ["NAME", "FAMILY", "PARAMS", "QUANT", "SIZE", "CAPABILITIES", "PULLED"]
    ctx.out(render.table(headers, rows))
    defaults = [
        f"{e.name} = {e.ref}"
        for e in entries
        if e.default and sum(o.name == e.name for o in catalog.entries()) > 1
    ]
    if defaults:
        ctx.out(f"\nA name alone pulls its default tag: {', '.join(defaults)}.")
    return 0


def _local_models(ctx: Context) -> list[pb.ModelInfo] | None:
    """The daemon's models, or None (said on stderr) when no daemon answers."""
    try:
        return list(ctx.client().models.List(pb.ListModelsRequest()).models)
    except errors.Unavailable as exc:
        ctx.err(f"edged: cannot tell which models are pulled: {exc}")
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        ctx.err(f"edged: cannot tell which models are pulled: {render.rpc_message(exc)}")
    return None


def _pulled_as(e: catalog.CatalogEntry, local: list[pb.ModelInfo]) -> list[str]:
    """Local models that are this entry: its name:tag, or (for a pinned digest) its bytes."""
    return [
        render.model_name(m)
        for m in local
        if (m.name, m.tag) == (e.name, e.tag) or (e.digest is not None and m.digest == e.digest)
    ]


def _pulled_text(e: catalog.CatalogEntry, local: list[pb.ModelInfo] | None) -> str:
    if local is None:
        return "?"
    names = _pulled_as(e, local)
    if str(e.ref) in names:
        return "yes"
    return f"as {', '.join(names)}" if names else "no"


def _catalog_size(e: catalog.CatalogEntry, local: list[pb.ModelInfo] | None) -> str:
    """The catalog's size, else the pulled copy's; "-" before a hub model is pulled."""
    if e.size is not None:
        return render.human_bytes(e.size)
    pulled = [m for m in local or () if (m.name, m.tag) == (e.name, e.tag)]
    return render.human_bytes(pulled[0].size_bytes) if pulled else "-"


def _catalog_dict(e: catalog.CatalogEntry, local: list[pb.ModelInfo] | None) -> dict[str, Any]:
    return {
        "name": e.name,
        "tag": e.tag,
        "default": e.default,
        "description": e.description,
        "family": e.family,
        "parameters": e.parameters,
        "quantization": e.quantization,
        "context_length": e.context,
        "license": e.license,
        "capabilities": list(e.capabilities),
        "source": str(e.source),
        "size_bytes": e.size,
        "digest": e.digest,
        "pulled": None if local is None else bool(_pulled_as(e, local)),
        "pulled_as": None if local is None else _pulled_as(e, local),
    }


def memory_text(m: pb.LoadedModel) -> str:
    estimate = render.human_bytes(m.memory.total_bytes) if m.memory.total_bytes else "?"
    return f"{estimate} / {render.human_bytes(m.rss_bytes)}"


def cmd_ps(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client().models.ListLoaded(pb.ListLoadedRequest())
    if args.json:
        render.print_json(render.to_dict(reply), ctx.stdout)
        return 0
    rows = [
        [
            m.model,
            m.backend,
            m.device + (f" ({m.gpu_layers} layers)" if m.gpu_layers else ""),
            memory_text(m),
            str(m.context_length),
            m.kv_type or "-",
            str(m.sessions),
            str(m.active_requests),
            str(m.pid),
            until(m.keep_alive_s, m.expires_unix_ms, m.pinned),
        ]
        for m in reply.models
    ]
    headers = [
        "MODEL",
        "BACKEND",
        "DEVICE",
        "MEMORY (EST / RSS)",
        "CONTEXT",
        "KV",
        "SESSIONS",
        "ACTIVE",
        "PID",
        "UNTIL",
    ]
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
        ("capabilities", ", ".join(reply.capabilities) or "-"),
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
    settings = settings_rows(reply.settings)
    if settings:
        text += "\n\n  Settings\n" + "\n".join(f"    {k:<18}{v}" for k, v in settings)
    if reply.HasField("memory") and reply.memory.total_bytes:
        mem = reply.memory
        text += (
            "\n\n  Memory (estimated for the chosen backend)\n"
            f"    {render.human_bytes(mem.total_bytes)}"
            f" = weights {render.human_bytes(mem.weights_bytes)}"
            f" + KV {render.human_bytes(mem.kv_bytes)} ({mem.kv_type or 'f16'})"
            f" + overhead {render.human_bytes(mem.overhead_bytes)}"
        )
    if reply.backends:
        lines = backend_lines(reply.backends, "Backends")
        text += "\n\n" + "\n".join("  " + line for line in lines)
    defaults = [(k, f"{reply.sampling_defaults[k]:g}") for k in sorted(reply.sampling_defaults)]
    defaults.extend(("stop", repr(stop)) for stop in reply.stop_defaults)
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
    client = ctx.client()
    shown = client.models.Show(pb.ModelRef(model=args.model))  # NOT_FOUND when unknown
    name = render.model_name(shown.model)
    before = client.models.ListLoaded(pb.ListLoadedRequest()).models
    if not any(m.model == name for m in before):
        ctx.out(f"{name} is not loaded")
        return 0
    client.models.Unload(pb.ModelRef(model=args.model))
    ctx.out(f"stopped {name}")
    return 0


def loaded_lines(m: pb.LoadedModel) -> list[str]:
    memory = render.human_bytes(m.memory.total_bytes) if m.memory.total_bytes else "unknown"
    return [
        f"loaded {m.model} on {m.backend}/{m.device} (pid {m.pid})",
        f"  context {m.context_length} tokens, memory about {memory} "
        f"(now {render.human_bytes(m.rss_bytes)} resident)",
        f"  unloads: {until(m.keep_alive_s, m.expires_unix_ms, m.pinned)}",
    ]


def cmd_load(ctx: Context, args: argparse.Namespace) -> int:
    request = pb.LoadRequest(
        model=args.model,
        backend=args.backend or "",
        device=args.device or "",
        pin=args.pin,
        context_length=_context(args),
    )
    if args.keep_alive is not None:
        request.keep_alive_s = args.keep_alive
    reply = ctx.client().models.Load(request, timeout=600)
    if args.json:
        render.print_json(render.to_dict(reply), ctx.stdout)
    else:
        ctx.out("\n".join(loaded_lines(reply)))
    return 0


def settings_rows(s: pb.ModelSettings) -> list[tuple[str, str]]:
    rows = []
    if s.backend:
        rows.append(("backend", s.backend))
    if s.device:
        rows.append(("device", s.device))
    if s.HasField("keep_alive_s"):
        rows.append(("keep-alive", human_duration(s.keep_alive_s)))
    if s.pinned:
        rows.append(("pinned", "yes"))
    if s.context_length:
        rows.append(("context", str(s.context_length)))
    if s.kv_type:
        rows.append(("KV type", s.kv_type))
    if s.rpc:
        rows.append(("RPC workers", s.rpc))
    if s.speculative:
        rows.append(("speculative", s.speculative))
    return rows


def cmd_config(ctx: Context, args: argparse.Namespace) -> int:
    client = ctx.client()
    shown = client.models.Show(pb.ModelRef(model=args.model))
    name = render.model_name(shown.model)
    settings = pb.ModelSettings() if args.reset else shown.settings
    changed = args.reset
    if args.backend is not None:
        settings.backend = "" if args.backend == "auto" else args.backend
        changed = True
    if args.device is not None:
        settings.device = "" if args.device == "auto" else args.device
        changed = True
    if args.keep_alive is not None:
        settings.keep_alive_s = args.keep_alive
        changed = True
    if args.pin is not None:
        settings.pinned = args.pin
        changed = True
    if args.context is not None:
        settings.context_length = _context(args)
        changed = True
    if args.kv_type is not None:
        settings.kv_type = "" if args.kv_type == "auto" else args.kv_type
        changed = True
    if args.rpc is not None:
        settings.rpc = "" if args.rpc == "auto" else args.rpc
    if args.speculative is not None:
        settings.speculative = "" if args.speculative == "default" else args.speculative
        changed = True
    if changed:
        request = pb.ConfigureModelRequest(model=args.model, settings=settings)
        settings = client.models.Configure(request)
    if args.json:
        render.print_json(render.to_dict(settings), ctx.stdout)
        return 0
    rows = settings_rows(settings)
    if not rows:
        ctx.out(f"{name}: no settings (the daemon's defaults apply)")
        return 0
    ctx.out(f"{name}:")
    ctx.out("\n".join(f"  {k:<12}{v}" for k, v in rows))
    return 0
