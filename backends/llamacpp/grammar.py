"""Constrained output for llama.cpp: a request's constraint as a GBNF grammar, and
a sampler that never picks a token the grammar forbids.

Conversion uses llama-cpp-python's own JSON-schema-to-GBNF converter (a port of
llama.cpp's ``json_schema_to_grammar``); parsing and matching are llama.cpp's
grammar sampler. Sampling follows llama.cpp's ``common_sampler``: the request's
own chain proposes a token, the grammar checks that one token, and only when it
is refused is the grammar applied to the whole vocabulary and the token drawn
again from what it allows. The result is the chain's distribution restricted to
allowed tokens, at the cost of one token check on most steps.
"""

from __future__ import annotations

import ctypes
import json
import threading
from typing import Any

import llama_cpp as lc
import numpy as np
from llama_cpp.llama_grammar import SchemaConverter, json_schema_to_gbnf

from edged.backends.base import Constraint, Sampling
from edged.backends.llamacpp import native
from edged.common.errors import InvalidArgument

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
_NEG_INF = float("-inf")
_log_lock = threading.Lock()


# Schema keywords llama-cpp-python's converter ignores (measured: the grammar
# comes out as without them). A grammar that does not enforce a keyword could
# let through a reply that ends with "stop" and still fails the schema, so a
# schema using one is refused, except integer bounds that fit an enum.
UNENFORCED = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "patternProperties",
)
MAX_ENUM_RANGE = 1024  # integer bounds enforced by listing every allowed value


def enforceable(schema: Any, path: str = "") -> Any:
    """``schema`` with bounded integer ranges as enums; InvalidArgument naming the
    first keyword the grammar could not enforce."""
    if isinstance(schema, list):
        return [enforceable(v, f"{path}/{i}") for i, v in enumerate(schema)]
    if not isinstance(schema, dict):
        return schema
    node = {k: enforceable(v, f"{path}/{k}") for k, v in schema.items()}
    if node.get("type") == "integer" and any(k in node for k in UNENFORCED[:4]):
        node = _integer_range(node, path or "/")
    found = next((k for k in UNENFORCED if k in node and not _names_schemas(path)), None)
    if found is not None:
        raise InvalidArgument(
            f"the schema uses {found!r} (at {path or '/'}), which the llama.cpp backend cannot "
            "enforce while it generates; bound integers on both sides (at most "
            f"{MAX_ENUM_RANGE} values), use an enum, or leave it out"
        )
    return node


def _names_schemas(path: str) -> bool:
    """The node maps names to schemas ("properties", "$defs"): its keys are names."""
    return path.rsplit("/", 1)[-1] in ("properties", "$defs", "definitions")


def _integer_range(node: dict[str, Any], where: str) -> dict[str, Any]:
    lo, hi = node.get("minimum"), node.get("maximum")
    if "exclusiveMinimum" in node:
        lo = node["exclusiveMinimum"] + 1
    if "exclusiveMaximum" in node:
        hi = node["exclusiveMaximum"] - 1
    step = node.get("multipleOf", 1)
    numbers = (lo, hi, step)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in numbers) or step < 1:
        return node  # unbounded or not whole numbers: refused by the caller
    assert isinstance(lo, int) and isinstance(hi, int)
    if hi < lo or (hi - lo) // step + 1 > MAX_ENUM_RANGE:
        return node
    allowed = [v for v in range(lo, hi + 1) if v % step == 0]
    if "enum" in node:
        allowed = [v for v in allowed if v in node["enum"]]
    kept = {k: v for k, v in node.items() if k not in UNENFORCED[:5] and k != "type"}
    return {**kept, "enum": allowed}


def to_gbnf(c: Constraint) -> str:
    """The GBNF grammar for a constraint (InvalidArgument when it cannot be made)."""
    try:
        if c.kind == "json_object":
            return str(json_schema_to_gbnf(json.dumps({"type": "object"})))
        if c.kind == "json_schema":
            return str(json_schema_to_gbnf(json.dumps(enforceable(json.loads(c.text)))))
        if c.kind == "regex":
            conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=True)
            conv._visit_pattern(f"^{c.text}$", "root")
            return str(conv.format_grammar())
    except (
        ValueError,
        KeyError,
        TypeError,
        RecursionError,
        AssertionError,
        NotImplementedError,
    ) as exc:
        raise InvalidArgument(f"the {c.kind} cannot be turned into a grammar: {exc}") from exc
    if c.kind == "grammar":
        return c.text
    raise InvalidArgument(f"unknown constraint kind {c.kind!r}")


def parse_grammar(vocab: Any, gbnf: str) -> Any:
    """A llama.cpp grammar sampler for ``gbnf``; InvalidArgument with llama.cpp's
    own parse error when it is not a grammar (it logs the reason, captured here)."""
    captured: list[str] = []

    @lc.llama_log_callback  # type: ignore[untyped-decorator]
    def capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        captured.append(text.decode("utf-8", "replace"))

    with _log_lock:
        lc.llama_log_set(capture, ctypes.c_void_p(0))
        try:
            grammar = lc.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        finally:
            native.restore_log_callback()
    if not grammar:
        why = " ".join(" ".join(captured).split())[:400] or "llama.cpp could not parse it"
        raise InvalidArgument(f"the grammar is not valid GBNF: {why}")
    return grammar


def check_gbnf(vocab: Any, gbnf: str) -> None:
    lc.llama_sampler_free(parse_grammar(vocab, gbnf))


class ConstrainedSampler(native.NativeSampler):
    """A request's sampler chain with a grammar: only tokens it allows are drawn.

    A full pass of the grammar over the vocabulary costs milliseconds (5.7 ms
    on SmolLM2's 49k tokens, measured), and every stream in the batch waits
    for it, so the grammar only sees the tokens that could be chosen:

    - greedy: the likeliest token, else the likeliest allowed among the
      :data:`SHORTLIST` best (exactly greedy decoding under the grammar);
    - sampling: the request's chain without its final draw (penalties,
      top-k, top-p, min-p, temperature) shortlists the candidates, the grammar
      strikes the ones it refuses, and the draw picks among the rest.

    Only when no shortlisted token is allowed does the grammar see the whole
    vocabulary (then the chain and the draw run on what it allows). Without
    truncation (top_k 0, top_p 1) the shortlist is the :data:`SHORTLIST`
    likeliest tokens.
    """

    def __init__(self, model: native.NativeModel, s: Sampling, seed: int, gbnf: str) -> None:
        super().__init__(model, s, seed)  # self.chain: the unconstrained chain, unused here
        self.grammar = parse_grammar(model.vocab, gbnf)
        self._trunc = native.new_chain(native.truncation(model, s))
        self._pick = native.final_choice(s, seed)
        n = model.n_vocab()
        self._ids = np.arange(n, dtype=np.int32)
        self._cands = np.zeros(n, dtype=TOKEN_DATA)
        data = ctypes.cast(self._cands.ctypes.data, ctypes.POINTER(lc.llama_token_data))
        self._all = lc.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
        self._one = (lc.llama_token_data * 1)()
        self._single = lc.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)

    def sample(self, ctx: native.NativeContext, index: int) -> int:
        logits = ctx.logits(index)
        if self._argmax:
            token = ctx.greedy(index)
            if not self._allowed(token, float(logits[token])):
                token = self._best_allowed(logits)
        else:
            token = self._draw(logits)
        lc.llama_sampler_accept(self.grammar, token)
        lc.llama_sampler_accept(self._trunc, token)
        lc.llama_sampler_accept(self._pick, token)
        return token

    def _allowed(self, token: int, logit: float) -> bool:
        one = self._one[0]
        one.id, one.logit, one.p = token, logit, 0.0
        self._single.size, self._single.selected, self._single.sorted = 1, -1, False
        lc.llama_sampler_apply(self.grammar, ctypes.byref(self._single))
        return bool(self._one[0].logit != _NEG_INF)

    def _fill(self, logits: Any, ids: Any | None = None) -> int:
        """Load candidates (all tokens, or ``ids``) into the array; returns its size."""
        cands, arr = self._cands, self._all
        n = len(ids) if ids is not None else len(cands)
        cands["id"][:n] = ids if ids is not None else self._ids
        cands["logit"][:n] = logits[ids] if ids is not None else logits
        cands["p"][:n] = 0.0
        arr.size, arr.selected, arr.sorted = n, -1, False
        return n

    def _grammar_keeps_some(self) -> bool:
        lc.llama_sampler_apply(self.grammar, ctypes.byref(self._all))
        # The grammar sets refused logits to -inf but leaves the array marked
        # sorted; llama.cpp's dist then takes the first (now -inf) logit as the
        # maximum and every probability comes out NaN.
        self._all.sorted = False
        return bool(np.isfinite(self._cands["logit"][: self._all.size]).any())

    def _best_allowed(self, logits: Any) -> int:
        best = np.argpartition(logits, -SHORTLIST)[-SHORTLIST:]
        self._fill(logits, best)
        if not self._grammar_keeps_some():
            self._fill(logits)
            lc.llama_sampler_apply(self.grammar, ctypes.byref(self._all))
        live = self._cands[: self._all.size]
        return int(live["id"][int(np.argmax(live["logit"]))])

    def _draw(self, logits: Any) -> int:
        arr = self._all
        self._fill(logits)
        lc.llama_sampler_apply(self._trunc, ctypes.byref(arr))
        if arr.size > SHORTLIST:  # no truncation: shortlist the likeliest
            keep = np.argpartition(self._cands["logit"][: arr.size], -SHORTLIST)[-SHORTLIST:]
            ids = self._cands["id"][keep].copy()
            self._fill(logits, ids)
            lc.llama_sampler_apply(self._trunc, ctypes.byref(arr))
        if not self._grammar_keeps_some():  # nothing shortlisted is allowed: all tokens
            self._fill(logits)
            lc.llama_sampler_apply(self.grammar, ctypes.byref(arr))
            arr.sorted = False
            lc.llama_sampler_apply(self._trunc, ctypes.byref(arr))
        lc.llama_sampler_apply(self._pick, ctypes.byref(arr))
        return int(self._cands["id"][arr.selected])

    def free(self) -> None:
        super().free()
        for name in ("grammar", "_trunc", "_pick"):
            sampler = getattr(self, name, None)
            if sampler:
                lc.llama_sampler_free(sampler)
                setattr(self, name, None)


SHORTLIST = 256  # candidates the grammar sees before it sees the whole vocabulary
