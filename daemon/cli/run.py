"""``edged run``: one-shot generation, or an interactive chat session."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import grpc

from edged.backends import registry
from edged.common import errors
from edged.daemon.cli import render
from edged.daemon.cli.context import Context
from edged.daemon.cli.durations import parse_duration
from edged.daemon.client import Client, ResponseStream
from edged.models_registry import catalog
from edged.models_registry.names import split_model_ref
from edged.v1 import edged_pb2 as pb

REPL_HELP = '''Available commands:
  /clear        start a new session (forget the conversation)
  /bye          exit
  /?, /help     show this help

Use """ to begin and end a multi-line message.
Ctrl-C stops a reply; Ctrl-D, or Ctrl-C at the prompt, exits.'''

_SAMPLING: tuple[tuple[str, str, type, str], ...] = (
    ("--temperature", "temperature", float, "0 = greedy (daemon default 0.8)"),
    ("--top-p", "top_p", float, "nucleus sampling, (0, 1] (default 0.95)"),
    ("--top-k", "top_k", int, "0 = disabled (default 40)"),
    ("--min-p", "min_p", float, "[0, 1] (default 0.05)"),
    ("--repeat-penalty", "repeat_penalty", float, "(0, 10] (default 1.0, off)"),
    ("--seed", "seed", int, "random seed (default: random per request)"),
    ("--max-tokens", "max_tokens", int, "0 = up to the end of the context (default 512)"),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="generate a reply, or chat interactively",
        description=(
            "With a PROMPT (or a prompt piped on stdin), stream one reply and exit. "
            "Without one, on a terminal, start an interactive chat session: the "
            "daemon keeps the conversation, type /? for commands."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model name or name:tag")
    p.add_argument("prompt", metavar="PROMPT", nargs="*", help="the prompt (words are joined)")
    p.add_argument("--system", metavar="TEXT", help="system message")
    p.add_argument(
        "--backend",
        choices=["auto", *registry.names(aliases=True)],
        default="auto",
        help="inference backend (default: the best for this hardware); a backend that needs "
        "a converted variant (onnx) converts the model first when it has none yet",
    )
    p.add_argument(
        "--device", metavar="DEV", default="", help="cpu, cuda:0, gpu, npu (default: the best)"
    )
    p.add_argument(
        "--keep-alive",
        dest="keep_alive",
        metavar="DURATION",
        type=parse_duration,
        help="how long the model stays loaded once idle: 300, 5m, 1h, 0, -1/forever "
        "(default: the model's setting, else EDGED_KEEP_ALIVE)",
    )
    p.add_argument(
        "--context",
        metavar="N",
        type=int,
        default=0,
        help="context tokens per sequence (default: the model's setting, else EDGED_CONTEXT); "
        "a loaded model with at least this much is reused",
    )
    group = p.add_argument_group("sampling")
    for flag, dest, kind, text in _SAMPLING:
        group.add_argument(
            flag, dest=dest, type=kind, metavar="N" if kind is int else "X", help=text
        )
    group.add_argument(
        "--stop",
        metavar="TEXT",
        action="append",
        default=[],
        help="stop string (repeatable, up to 16)",
    )
    p.add_argument(
        "--no-pull",
        dest="pull",
        action="store_false",
        help="do not pull a catalog model that is not in the store yet (default: pull it)",
    )
    p.add_argument(
        "--verbose", action="store_true", help="print generation stats to stderr after each reply"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one-shot only: print one JSON object {text, stats} instead of streaming",
    )
    p.set_defaults(func=cmd_run)


def sampling_params(args: argparse.Namespace) -> pb.SamplingParams:
    params = pb.SamplingParams(stop=args.stop)
    for _, dest, _, _ in _SAMPLING:
        value = getattr(args, dest)
        if value is not None:
            setattr(params, dest, value)
    return params


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    if args.seed is not None and args.seed < 0:
        raise errors.InvalidArgument("--seed must not be negative")
    for flag in ("max_tokens", "top_k"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise errors.InvalidArgument(f"--{flag.replace('_', '-')} must not be negative")
    sampling = sampling_params(args)
    prompt = " ".join(args.prompt)
    if not prompt and ctx.stdin is not None and not ctx.stdin.isatty():
        prompt = ctx.stdin.read()
        if not prompt.strip():
            raise errors.InvalidArgument("the prompt read from stdin is empty")
    if args.context < 0:
        raise errors.InvalidArgument("--context must not be negative")
    backend = "" if args.backend == "auto" else registry.backend_info(args.backend).name
    ensure_pulled(ctx, args.model, pull=args.pull)
    if backend and registry.backend_info(backend).converts_to:
        _ensure_variant(ctx, args.model, registry.backend_info(backend).converts_to)
    lifecycle = Lifecycle(args.device, args.keep_alive, args.context)
    if prompt:
        return one_shot(
            ctx.client(),
            args.model,
            prompt,
            backend=backend,
            system=args.system,
            sampling=sampling,
            out=ctx.stdout,
            err=ctx.stderr,
            verbose=args.verbose,
            as_json=args.json,
            lifecycle=lifecycle,
        )
    if args.json:
        raise errors.InvalidArgument("--json needs a PROMPT (it does not apply to a chat)")
    client = ctx.client()
    if args.context:
        # sessions take the model's context setting: load it with this one first
        # (later turns reuse it when it is at least that large)
        load = pb.LoadRequest(
            model=args.model, backend=backend, device=args.device, context_length=args.context
        )
        if args.keep_alive is not None:
            load.keep_alive_s = args.keep_alive
        client.models.Load(load, timeout=600)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    return repl(
        client,
        args.model,
        backend=backend,
        system=args.system or "",
        sampling=sampling,
        read_line=input,
        out=ctx.stdout,
        err=ctx.stderr,
        verbose=args.verbose,
        lifecycle=lifecycle,
    )


@dataclass(frozen=True)
class Lifecycle:
    """`--device`, `--keep-alive`, `--context` as the requests carry them."""

    device: str = ""
    keep_alive_s: float | None = None
    context_length: int = 0


def ensure_pulled(ctx: Context, model: str, *, pull: bool) -> None:
    """Pull ``model`` first (with the progress display) when the store lacks it and
    the catalog knows it, as `ollama run` does. Anything else is left to the
    request, whose error says what is wrong."""
    try:
        ctx.client().models.Show(pb.ModelRef(model=model), timeout=600)
        return
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND or not pull or not in_catalog(model):
            raise
    from edged.daemon.cli.models import follow

    ctx.err(f"edged: {model} is not in the store yet; pulling it (--no-pull turns this off)")
    pulled = follow(ctx, ctx.client().models.Pull(pb.PullRequest(source=model)), "the pull")
    ctx.err(
        f"edged: pulled {render.model_name(pulled)} "
        f"({render.short_digest(pulled.digest)}, {render.human_bytes(pulled.size_bytes)})"
    )


def in_catalog(model: str) -> bool:
    """Whether ``name[:tag]`` names a catalog entry; an unknown tag of a catalog
    name raises ModelNotFound listing the tags it has."""
    try:
        name, tag = split_model_ref(model)
    except errors.InvalidArgument:
        return False
    return catalog.find(name, tag) is not None


def _ensure_variant(ctx: Context, model: str, fmt: str) -> None:
    """`--backend onnx` on a model with only a GGUF converts it first (once)."""
    from edged.daemon.cli.models import convert

    shown = ctx.client().models.Show(pb.ModelRef(model=model))
    if any(v.format == fmt for v in shown.variants):
        return
    ctx.err(f"edged: {model} has no {fmt} variant yet; converting it (once)")
    convert(ctx, model, fmt)


def stream_reply(
    call: ResponseStream[pb.GenerateChunk], out: TextIO | None
) -> tuple[str, pb.GenerationStats | None]:
    """Iterate a reply, writing each chunk to ``out`` as it arrives."""
    parts: list[str] = []
    stats: pb.GenerationStats | None = None
    for chunk in call:
        if chunk.text:
            parts.append(chunk.text)
            if out is not None:
                out.write(chunk.text)
                out.flush()
        if chunk.HasField("stats"):
            stats = chunk.stats
    return "".join(parts), stats


def _print_stats(err: TextIO, stats: pb.GenerationStats | None) -> None:
    if stats is not None:
        err.write("\n".join(render.stats_lines(stats)) + "\n")
        err.flush()


def one_shot(
    client: Client,
    model: str,
    prompt: str,
    *,
    backend: str = "",
    system: str | None,
    sampling: pb.SamplingParams,
    out: TextIO,
    err: TextIO,
    verbose: bool = False,
    as_json: bool = False,
    lifecycle: Lifecycle | None = None,
) -> int:
    life = lifecycle or Lifecycle()
    messages = [pb.ChatMessage(role="system", content=system)] if system else []
    messages.append(pb.ChatMessage(role="user", content=prompt))
    request = pb.GenerateRequest(
        model=model,
        chat=pb.ChatMessages(messages=messages),
        sampling=sampling,
        backend=backend,
        device=life.device,
        context_length=life.context_length,
    )
    if life.keep_alive_s is not None:
        request.keep_alive_s = life.keep_alive_s
    call = client.inference.Generate(request)
    try:
        text, stats = stream_reply(call, None if as_json else out)
    except KeyboardInterrupt:
        call.cancel()
        if not as_json:
            out.write("\n")
            out.flush()
        return 130
    if as_json:
        render.print_json(
            {"text": text, "stats": render.to_dict(stats or pb.GenerationStats())}, out
        )
    else:
        out.write("\n")
    out.flush()
    if verbose:
        _print_stats(err, stats)
    return 0


# ---------------------------------------------------------------- interactive


def _read_message(read_line: Callable[[str], str], out: TextIO) -> str | None:
    """One user message; ``\"\"\"`` starts and ends a multi-line one.

    Returns None when a multi-line message is abandoned with Ctrl-C.
    Raises EOFError / KeyboardInterrupt from the first prompt (meaning: exit).
    """
    line = read_line(">>> ")
    head = line.lstrip()
    if not head.startswith('"""'):
        return line
    body = head[3:]
    if body.rstrip().endswith('"""'):
        return body.rstrip()[:-3]
    lines = [body]
    while True:
        try:
            more = read_line("... ")
        except KeyboardInterrupt:
            out.write("\n")
            return None
        if more.rstrip().endswith('"""'):
            lines.append(more.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(more)


def _send(
    client: Client,
    session_id: str,
    content: str,
    *,
    sampling: pb.SamplingParams,
    out: TextIO,
    err: TextIO,
    verbose: bool,
    keep_alive_s: float | None = None,
) -> None:
    request = pb.SendRequest(session_id=session_id, content=content, sampling=sampling)
    if keep_alive_s is not None:
        request.keep_alive_s = keep_alive_s
    call = client.sessions.Send(request)
    try:
        text, stats = stream_reply(call, out)
    except KeyboardInterrupt:
        call.cancel()
        out.write("\n\n")
        out.flush()
        return
    except grpc.RpcError as exc:
        out.write("\n")
        out.flush()
        err.write(f"edged: {render.rpc_message(exc)}\n")
        err.flush()
        return
    out.write("\n" if text.endswith("\n") else "\n\n")
    out.flush()
    if verbose:
        _print_stats(err, stats)


def _delete_quietly(client: Client, session_id: str) -> None:
    with contextlib.suppress(grpc.RpcError):
        client.sessions.Delete(pb.SessionRef(session_id=session_id), timeout=5)


def repl(
    client: Client,
    model: str,
    *,
    backend: str = "",
    system: str,
    sampling: pb.SamplingParams,
    read_line: Callable[[str], str],
    out: TextIO,
    err: TextIO,
    verbose: bool = False,
    lifecycle: Lifecycle | None = None,
) -> int:
    """The interactive loop. The session is deleted on every way out."""
    life = lifecycle or Lifecycle()
    create = pb.CreateSessionRequest(
        model=model, system_prompt=system, backend=backend, device=life.device
    )
    session_id = client.sessions.Create(create).id
    try:
        while True:
            try:
                message = _read_message(read_line, out)
            except (EOFError, KeyboardInterrupt):
                out.write("\n")
                return 0
            if message is None or not message.strip():
                continue
            command = message.strip().split()[0]
            if command in ("/bye", "/exit"):
                return 0
            if command == "/clear":
                _delete_quietly(client, session_id)
                session_id = client.sessions.Create(create).id
                out.write("Cleared session context.\n")
            elif command in ("/?", "/help"):
                out.write(REPL_HELP + "\n")
            elif command.startswith("/"):
                out.write(f"Unknown command '{command}'. Type /? for help\n")
            else:
                _send(
                    client,
                    session_id,
                    message,
                    sampling=sampling,
                    out=out,
                    err=err,
                    verbose=verbose,
                    keep_alive_s=life.keep_alive_s,
                )
    finally:
        _delete_quietly(client, session_id)
