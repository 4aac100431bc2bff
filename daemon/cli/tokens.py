"""``edged token create|list|revoke``: scoped tokens for the network listeners.

They work on the token file (EDGED_TOKENS_FILE) directly, not through the
daemon; a running daemon sees a change at its next request.
"""

from __future__ import annotations

import argparse

from edged.common import errors
from edged.daemon import config
from edged.daemon.cli import render
from edged.daemon.cli.context import Context
from edged.daemon.tokens import TokenInfo, TokenStore, check_scopes

_SCOPES_HELP = (
    "generate (Inference, Sessions), read (list/show models, tokenize, System), "
    "models (pull, delete, configure, convert, load, unload), admin (everything)"
)

_DESCRIPTION = """\
Tokens for the loopback TCP listeners, each with its own scopes:
  generate  Inference and Sessions (generate, chat)
  read      list and show models, tokenize, System, health
  models    pull, delete, configure, convert, load and unload models
  admin     everything
Only a hash of each token is stored (EDGED_TOKENS_FILE); a running daemon
accepts a new token, and refuses a revoked one, from its next request."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "token",
        help="create, list and revoke scoped access tokens for TCP clients",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="make a token and print it (once)",
        description="Make a token named NAME with the given scopes and print it. It is "
        "shown only this once: the token file keeps a hash of it.",
    )
    create.add_argument("name", metavar="NAME", help="a-z, 0-9, '_' and '-' (at most 64)")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        metavar="SCOPE[,SCOPE]",
        help=f"what the token may do (repeatable or comma-separated): {_SCOPES_HELP}",
    )
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(func=cmd_create)
    listing = actions.add_parser(
        "list",
        help="the tokens, their scopes and when they were made (never the tokens)",
        description="List the tokens: name, scopes and creation time. Tokens themselves "
        "are never shown again.",
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_list)
    revoke = actions.add_parser(
        "revoke",
        help="delete a token; clients using it are refused from their next request",
        description="Delete the token named NAME. A running daemon refuses it from the "
        "next request on.",
    )
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(func=cmd_revoke)


def open_tokens() -> TokenStore:
    try:
        paths = config.load_paths()
    except ValueError as exc:  # a malformed EDGED_* variable
        raise errors.InvalidArgument(str(exc)) from exc
    return TokenStore(paths.tokens_file)


def _scopes(info: TokenInfo) -> list[str]:
    return sorted(info.scopes, key=config.SCOPES.index)


def cmd_create(ctx: Context, args: argparse.Namespace) -> int:
    scopes = sorted(check_scopes(args.scopes), key=config.SCOPES.index)
    secret = open_tokens().create(args.name, scopes)
    if args.json:
        render.print_json({"name": args.name, "scopes": scopes, "token": secret}, ctx.stdout)
        return 0
    # the token alone on stdout (TOKEN=$(edged token create ...) works), the notes on stderr
    ctx.err(f"created token {args.name!r} (scopes: {', '.join(scopes)}):")
    ctx.out(secret)
    ctx.err(
        "It will not be shown again: copy it now. Clients send it as "
        "'Authorization: Bearer <token>', 'x-api-key: <token>', or as the OpenAI SDK's "
        "api_key."
    )
    return 0


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    tokens = open_tokens().list()
    if args.json:
        render.print_json(
            {
                "tokens": [
                    {"name": t.name, "scopes": _scopes(t), "created_unix_ms": t.created_unix_ms}
                    for t in tokens
                ]
            },
            ctx.stdout,
        )
        return 0
    if not tokens:
        ctx.out("no tokens (edged token create NAME --scope generate,read makes one)")
        return 0
    rows = [[t.name, ",".join(_scopes(t)), render.ago(t.created_unix_ms)] for t in tokens]
    ctx.out(render.table(["NAME", "SCOPES", "CREATED"], rows))
    return 0


def cmd_revoke(ctx: Context, args: argparse.Namespace) -> int:
    if not open_tokens().revoke(args.name):
        raise errors.NotFound(f"no token named {args.name!r} (edged token list shows them)")
    ctx.out(f"revoked token {args.name!r}")
    return 0
