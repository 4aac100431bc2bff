"""``edged embed``: embeddings of texts from an embedding model (Inference.Embed)."""

from __future__ import annotations

import argparse
import json

from edged.common import errors
from edged.daemon.cli.context import Context
from edged.v1 import edged_pb2 as pb


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "embed",
        help="print the embedding vectors of texts",
        description=(
            "Embed each TEXT with an embedding model (for example all-minilm) and print "
            "one JSON array per line, in order. Without TEXT, each line of stdin is one "
            "text (empty lines are skipped)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="an embedding model, e.g. all-minilm")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to embed")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object: model, embeddings, dimensions, prompt_tokens, truncated",
    )
    p.add_argument(
        "--no-truncate",
        dest="truncate",
        action="store_false",
        help="refuse a text longer than the model's context instead of cutting it",
    )
    p.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="the model's raw pooled vectors, not scaled to unit length",
    )
    p.set_defaults(func=cmd_embed)


def texts_of(args: argparse.Namespace, ctx: Context) -> list[str]:
    """The texts from the command line, else one per line of piped stdin."""
    if args.texts:
        return list(args.texts)
    if ctx.stdin is not None and not ctx.stdin.isatty():
        lines = [line.rstrip("\r\n") for line in ctx.stdin]
        texts = [line for line in lines if line.strip()]
        if texts:
            return texts
    raise errors.InvalidArgument("give a TEXT to embed, or pipe texts on stdin (one per line)")


def cmd_embed(ctx: Context, args: argparse.Namespace) -> int:
    request = pb.EmbedRequest(
        model=args.model,
        inputs=texts_of(args, ctx),
        truncate=args.truncate,
        normalize=args.normalize,
    )
    reply = ctx.client().inference.Embed(request)
    vectors = [list(e.values) for e in reply.embeddings]
    if args.json:
        ctx.out(
            json.dumps(
                {
                    "model": reply.model,
                    "embeddings": vectors,
                    "dimensions": reply.dimensions,
                    "prompt_tokens": reply.prompt_tokens,
                    "truncated": list(reply.truncated),
                }
            )
        )
        return 0
    for vector in vectors:
        ctx.out(json.dumps(vector))
    return 0
