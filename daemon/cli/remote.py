"""`edged remote add|list|rm`: models served by an OpenAI-compatible upstream.

Like the store commands they work on the model store directly (a running
daemon sees a new remote at its next request). `add` probes the upstream
first: it must list the model, and what it declares (or accepts) becomes the
model's capabilities.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from edged.common import errors
from edged.daemon.cli import render
from edged.daemon.cli.context import Context
from edged.daemon.cli.store import open_store
from edged.daemon.remote import upstream
from edged.models_registry import remote
from edged.models_registry.names import parse_model_ref

_DESCRIPTION = """\
edged remote add NAME URL [--model UPSTREAM_MODEL] [--token-file F] [--insecure]
  Register NAME as a model served by an OpenAI-compatible upstream (vLLM,
  SGLang, llama-server, another edged) at URL (its base URL, /v1 added when
  missing). Clients then use NAME through every door like a local model;
  sessions keep their history in edged and send it whole, so the upstream's
  prefix cache reuses it. The upstream is probed now: it must list the model
  (--model, default NAME) in /v1/models; the context length, tools, JSON
  output and embeddings are what it declares or accepts, stored with the model.
  The bearer token is read from F, which must be mode 0600; edged keeps the
  path, never the token. TLS certificates are verified unless --insecure.

edged remote list
  The remote models: URL, upstream model, token file, probed capabilities.

edged remote rm NAME
  Forget a remote model (the upstream is not touched)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "remote",
        help="models served by an OpenAI-compatible upstream (add, list, rm)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = p.add_subparsers(dest="remote_command", metavar="VERB", required=True)
    a = verbs.add_parser("add", help="register NAME as a model the upstream at URL serves")
    a.add_argument("name", metavar="NAME[:TAG]")
    a.add_argument("url", metavar="URL", help="the upstream's base URL, e.g. http://gpu:8000/v1")
    a.add_argument(
        "--model", metavar="UPSTREAM_MODEL", help="the upstream's model id (default: NAME)"
    )
    a.add_argument(
        "--token-file", dest="remote_token_file", metavar="F", help="bearer token file (0600)"
    )
    a.add_argument(
        "--insecure", action="store_true", help="do not verify the upstream's TLS certificate"
    )
    a.add_argument("--replace", action="store_true", help="replace a remote of that name")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=cmd_add)
    ls = verbs.add_parser("list", help="the remote models")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)
    rm = verbs.add_parser("rm", help="forget a remote model")
    rm.add_argument("name", metavar="NAME[:TAG]")
    rm.set_defaults(func=cmd_rm)


def cmd_add(ctx: Context, args: argparse.Namespace) -> int:
    ref = parse_model_ref(args.name)
    token_file = os.path.abspath(args.remote_token_file) if args.remote_token_file else ""
    token = upstream.read_token(token_file) if token_file else ""
    spec = remote.RemoteSpec(
        url=args.url,
        model=args.model or args.name,
        token_file=token_file,
        insecure=args.insecure,
    )
    probed = asyncio.run(upstream.probe(spec, token))
    spec = remote.RemoteSpec(spec.url, spec.model, spec.token_file, spec.insecure, probed)
    store = open_store()
    remote.put_remote(store, ref, spec, replace=args.replace)
    shown = {"name": str(ref), **remote.describe(spec)}
    if args.json:
        render.print_json(shown, ctx.stdout)
    else:
        ctx.out(f"added {ref}: {spec.model} at {spec.url}")
        for line in probed.evidence:
            ctx.out(f"  {line}")
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    found = remote.list_remotes(open_store())
    rows = [{"name": str(ref), **remote.describe(spec)} for ref, spec in found]
    if args.json:
        render.print_json(rows, ctx.stdout)
        return 0
    if not rows:
        ctx.out("no remote models (add one with `edged remote add NAME URL`)")
    for r in rows:
        caps = [k for k in ("tools", "json_output", "embeddings") if r[k]]
        ctx.out(
            f"{r['name']}\t{r['url']}\tmodel {r['upstream_model']}\ttoken {r['token']}\t"
            f"context {r['context_length'] or '?'}\t{', '.join(caps) or 'chat only'}"
        )
    return 0


def cmd_rm(ctx: Context, args: argparse.Namespace) -> int:
    store = open_store()
    ref, manifest = store.resolve(args.name)
    if remote.remote_variant(manifest) is None:
        raise errors.FailedPrecondition(
            f"{ref} is a local model, not a remote one (use `edged rm`)"
        )
    store.delete(ref)
    ctx.out(f"removed remote model {ref}")
    return 0
