"""Thin, typed wrappers over llama-cpp-python's low-level (ctypes) API.

Only this module and :mod:`edged.backends.llamacpp.engine` touch ``llama_cpp``;
no llama.cpp type leaves the backend package.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as lc
import numpy as np

from edged.backends.base import Sampling
from edged.backends.llamacpp import threadpool
from edged.common.errors import (
    ContextOverflow,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    InvalidModelFile,
)

_BACKEND_READY = False


def _log_callback_silence() -> None:
    """Keep llama.cpp's chatter off the worker's stderr unless asked for."""
    if os.environ.get("EDGED_LLAMA_VERBOSE") == "1":
        return

    @lc.llama_log_callback  # type: ignore[untyped-decorator]
    def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        return None

    global _QUIET
    _QUIET = _quiet
    lc.llama_log_set(_quiet, ctypes.c_void_p(0))


_QUIET: Any = None


def restore_log_callback() -> None:
    """Back to edged's log callback after a call that captured llama.cpp's log."""
    lc.llama_log_set(_QUIET, ctypes.c_void_p(0))


# llama_get_logits returning the address as an int: llama-cpp-python's binding
# returns a float pointer, and turning that into an address (ctypes.cast) costs
# more than the call itself right after a decode, when Python's caches are cold.
def _logits_address_getter() -> Any:
    address = ctypes.cast(lc.llama_get_logits, ctypes.c_void_p).value
    if not address:
        raise ImportError("llama_cpp has no llama_get_logits")
    return ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(address)


_GET_LOGITS_ADDR = _logits_address_getter()


def backend_init() -> None:
    global _BACKEND_READY
    if not _BACKEND_READY:
        _log_callback_silence()
        lc.llama_backend_init()
        _BACKEND_READY = True


@dataclass(frozen=True)
class Offload:
    """How llama.cpp places a model: layers on the GPU and which GPU."""

    n_gpu_layers: int  # llama_model_params.n_gpu_layers: 0 = CPU only, negative = all
    main_gpu: int | None = None  # None: llama.cpp's default (split over every GPU)
    # llama.cpp RPC servers: their devices are the offload devices (layers split
    # by their free memory), the other layers stay on this machine's CPU
    rpc: tuple[str, ...] = ()


def rpc_offload(servers: tuple[str, ...], layers: int) -> Offload:
    """``layers`` layers (negative: all) on the RPC servers' devices."""
    return Offload(layers if layers >= 0 else -1, rpc=servers)


def offload_for(device: str, gpu_layers: int) -> Offload:
    """``LoadSpec.device``/``gpu_layers`` -> llama.cpp's placement.

    "cpu" keeps every layer on the CPU whatever ``gpu_layers`` says; "cuda" and
    "cuda:N" offload ``gpu_layers`` layers (negative, or 0 meaning "not said",
    offload all of them) to all GPUs or to GPU N only.
    """
    kind, _, index = device.partition(":")
    if kind in ("", "cpu"):
        return Offload(0)
    if kind != "cuda":
        raise FailedPrecondition(
            f"the llama.cpp backend runs on cpu or cuda[:N], not on {device!r}"
        )
    if index and not index.isdigit():
        raise FailedPrecondition(f"{device!r} is not a CUDA device (use cuda:0, cuda:1, ...)")
    layers = gpu_layers if gpu_layers > 0 else -1
    return Offload(layers, int(index) if index else None)


def gpu_offload_supported() -> bool:
    backend_init()
    return bool(lc.llama_supports_gpu_offload())


@dataclass
class NativeModel:
    model: Any
    vocab: Any
    # Per-token answers that never change for a loaded model, filled as tokens
    # are generated (at most one entry per vocabulary token): a ctypes call
    # right after a decode costs ~10 us, and every stream makes two a token.
    _pieces: dict[int, bytes] = field(default_factory=dict, repr=False)
    _eog: dict[int, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str, *, offload: Offload) -> NativeModel:
        backend_init()
        params = lc.llama_model_default_params()
        params.n_gpu_layers = offload.n_gpu_layers
        if offload.main_gpu is not None:
            # one named GPU ("cuda:1"): everything on it, no split across GPUs
            params.split_mode = lc.LLAMA_SPLIT_MODE_NONE
            params.main_gpu = offload.main_gpu
        params.use_mmap = True
        devices = None
        if offload.rpc:
            from edged.backends.llamacpp import rpc

            devices = rpc.device_array([h for _, h in rpc.devices(offload.rpc)])
            params.devices = ctypes.cast(devices, ctypes.c_void_p)
        model = lc.llama_model_load_from_file(path.encode(), params)
        del devices  # llama.cpp copied the list while loading
        if not model:
            raise InvalidModelFile(
                "llama.cpp could not load this model file (corrupt, truncated or unsupported)"
            )
        vocab = lc.llama_model_get_vocab(model)
        return cls(model=model, vocab=vocab)

    def meta(self, key: str) -> str:
        buf = ctypes.create_string_buffer(1 << 16)
        n = lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return ""
        if n >= len(buf):  # very long value (a chat template): retry with the exact size
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(lc.llama_model_meta_count(self.model)):
            kbuf = ctypes.create_string_buffer(256)
            if lc.llama_model_meta_key_by_index(self.model, i, kbuf, len(kbuf)) < 0:
                continue
            key = kbuf.value.decode("utf-8", errors="replace")
            if key.startswith("tokenizer.ggml.") or key == "tokenizer.chat_template":
                continue
            vbuf = ctypes.create_string_buffer(1024)
            if lc.llama_model_meta_val_str_by_index(self.model, i, vbuf, len(vbuf)) >= 0:
                out[key] = vbuf.value.decode("utf-8", errors="replace")
        return out

    def n_layer(self) -> int:
        return int(lc.llama_model_n_layer(self.model))

    def n_ctx_train(self) -> int:
        return int(lc.llama_model_n_ctx_train(self.model))

    def n_vocab(self) -> int:
        return int(lc.llama_vocab_n_tokens(self.vocab))

    def fim_tokens(self) -> dict[str, int]:
        """The vocabulary's fill-in-the-middle tokens that exist ("pre", "suf",
        "mid", "pad", "rep", "sep"); -1 from llama.cpp means absent."""
        found = {
            "pre": lc.llama_vocab_fim_pre(self.vocab),
            "suf": lc.llama_vocab_fim_suf(self.vocab),
            "mid": lc.llama_vocab_fim_mid(self.vocab),
            "pad": lc.llama_vocab_fim_pad(self.vocab),
            "rep": lc.llama_vocab_fim_rep(self.vocab),
            "sep": lc.llama_vocab_fim_sep(self.vocab),
        }
        return {k: int(v) for k, v in found.items() if int(v) >= 0}

    def token_text(self, token: int) -> str:
        raw = lc.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def bos(self) -> int:
        return int(lc.llama_vocab_bos(self.vocab))

    def eos(self) -> int:
        return int(lc.llama_vocab_eos(self.vocab))

    def add_bos(self) -> bool:
        return bool(lc.llama_vocab_get_add_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(lc.llama_vocab_is_eog(self.vocab, token))
        return eog

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
            if n < 0:
                raise Internal("tokenization failed")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """A generated token's bytes (special tokens render as empty)."""
        data = self._pieces.get(token)
        if data is None:
            data = self._pieces[token] = self._piece(token)
        return data

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def pieces(self, tokens: list[int], *, special: bool) -> list[bytes]:
        """Each token's bytes; ``special`` renders control tokens as their text."""
        return [self._piece(t, special) for t in tokens]

    def valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab()

    def architecture(self) -> str:
        return self.meta("general.architecture")

    def n_embd(self) -> int:
        return int(lc.llama_model_n_embd(self.model))

    def adds_end_token(self) -> bool:
        """The tokenizer ends every text with a token of its own ([SEP], EOS)."""
        return bool(
            lc.llama_vocab_get_add_sep(self.vocab) or lc.llama_vocab_get_add_eos(self.vocab)
        )

    def encoder_only(self) -> bool:
        """T5-style encoders run llama_encode; every other model llama_decode."""
        return bool(lc.llama_model_has_encoder(self.model)) and not bool(
            lc.llama_model_has_decoder(self.model)
        )

    def free(self) -> None:
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None


# KV cache element types edged offers -> llama.cpp's ggml type ids
KV_GGML_TYPES = {
    "f16": lc.GGML_TYPE_F16,
    "q8_0": lc.GGML_TYPE_Q8_0,
    "q4_0": lc.GGML_TYPE_Q4_0,
}


def kv_ggml_type(kv_type: str) -> int:
    try:
        return int(KV_GGML_TYPES[kv_type])
    except KeyError:
        raise InvalidArgument(
            f"KV cache type {kv_type!r} is not one of {', '.join(KV_GGML_TYPES)}"
        ) from None


def batch_invariance() -> int:
    """How far this llama.cpp computes a sequence's rows alike whatever the batch
    (edged's installer patches, EDGED_BATCH_INVARIANT, read by ggml itself):
    0 = stock; 1 = up to 63 rows of a sequence in a step give the logits
    one-token decodes give, at any position; 2 = any number of rows."""
    patches = getattr(lc, "EDGED_PATCHES", ())
    if "fa-no-split-kv" not in patches or "fa-no-tiles" not in patches:
        return 0
    raw = os.environ.get("EDGED_BATCH_INVARIANT", "") or "1"
    return min(max(int(raw), 0), 2) if raw.isdigit() else 1


def _context_params(*, n_ctx: int, n_seq: int, n_batch: int, threads: int) -> Any:
    """llama.cpp context parameters both context kinds share: the micro-batch is
    the whole batch, one thread count for decode and prefill, no perf counters."""
    params = lc.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = n_seq
    params.n_threads = threads
    params.n_threads_batch = threads
    params.no_perf = True
    return params


class NativeContext:
    """One llama.cpp context with ``n_seq`` sequences, each with its own KV stream.

    Per-sequence streams (``kv_unified = false``) keep an idle session's cells
    out of every other sequence's attention: with one unified cache a lone
    stream scans the cells of every resident session (measured: 5-8% slower
    decode after a multi-session load, bench/README.md). The price is that a
    batch only decodes as one graph when its sequences are consecutive (see
    layout.py), and copies between sequences move data instead of sharing
    cells (``copy_seq``).
    """

    def __init__(
        self,
        model: NativeModel,
        *,
        n_ctx: int,
        n_seq: int,
        n_batch: int,
        threads: int,
        kv_type: str = "f16",
        flash_attn: bool | None = None,
    ) -> None:
        params = _context_params(n_ctx=n_ctx, n_seq=n_seq, n_batch=n_batch, threads=threads)
        params.kv_unified = False
        ggml_type = kv_ggml_type(kv_type)
        params.type_k = ggml_type
        params.type_v = ggml_type
        if flash_attn is None:
            # llama.cpp only quantizes the V cache with flash attention on
            flash_attn = kv_type != "f16"
        if flash_attn:
            params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = lc.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise FailedPrecondition(
                f"llama.cpp could not create a context of {n_ctx} tokens with a {kv_type} "
                "KV cache (not enough memory, or no flash attention for this model?)"
            )
        self.kv_type = kv_type
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_batch = n_batch
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.n_ctx = int(lc.llama_n_ctx(self.ctx))
        self._pool = threadpool.attach(self.ctx, threads)
        self._n_vocab = int(lc.llama_vocab_n_tokens(model.vocab))
        self._rows: dict[int, int] = {}  # batch index -> row of the last decode's logits
        self._logits: Any = None  # numpy view of those rows, made on first use
        self._view: tuple[int, int, Any] = (0, 0, None)  # (address, rows, view) kept across decodes
        self._best: Any = None  # argmax of every row of the last decode, made on first use

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> None:
        if not lc.llama_memory_seq_rm(self.mem, seq, p0, p1):
            raise Internal("llama.cpp refused to trim a sequence")

    def _read_state(self, seq: int) -> tuple[Any, int]:
        """One sequence's KV state in a fresh buffer: (buffer, bytes used).

        Not kept between calls: a long session's state is as large as its KV
        (~23 KB a token on SmolLM2), memory the daemon's accounting does not
        hold for the worker."""
        size = int(lc.llama_state_seq_get_size(self.ctx, seq))
        buf = (ctypes.c_uint8 * size)()
        n = int(lc.llama_state_seq_get_data(self.ctx, buf, size, seq))
        if n == 0 and size:
            raise Internal("llama.cpp could not save a sequence state")
        return buf, n

    def seq_state_size(self, seq: int) -> int:
        """The bytes one sequence's KV state takes (counted, not copied)."""
        return int(lc.llama_state_seq_get_size(self.ctx, seq))

    def seq_state(self, seq: int) -> bytes:
        """A copy of one sequence's KV state (llama_state_seq_get_data)."""
        buf, n = self._read_state(seq)
        return bytes(memoryview(buf)[:n])

    def set_seq_state(self, seq: int, data: bytes) -> bool:
        """Load a saved state into ``seq``; False when llama.cpp refuses it."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return int(lc.llama_state_seq_set_data(self.ctx, buf, len(data), seq)) > 0

    def copy_seq(self, src: int, dst: int) -> None:
        """Make ``dst`` hold exactly what ``src`` holds, now.

        llama.cpp's own ``seq_cp`` between streams only takes whole buffers
        (a partial range aborts the process) and defers the copy to the next
        decode, so a state read before then would see stale data. Going
        through the sequence state is synchronous and costs what the source
        holds, not the whole stream.
        """
        buf, n = self._read_state(src)
        if int(lc.llama_state_seq_set_data(self.ctx, buf, n, dst)) <= 0:
            raise Internal(f"llama.cpp could not copy sequence {src} to {dst}")

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode ``(token, pos, seq, want_logits)`` entries as one batch."""
        b = self.batch
        tok, pos, nseq, seqs, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        for i, (t, p, s, want) in enumerate(entries):
            tok[i] = t
            pos[i] = p
            nseq[i] = 1
            seqs[i][0] = s
            logits[i] = want
        b.n_tokens = len(entries)
        self._rows = {i: row for row, i in enumerate(i for i, e in enumerate(entries) if e[3])}
        self._logits = None
        self._best = None
        rc = lc.llama_decode(self.ctx, b)
        if rc == 1:
            raise ContextOverflow("the KV cache is full: too many tokens in flight at once")
        if rc != 0:
            raise Internal(f"llama.cpp decode failed (code {rc})")

    def _all_rows(self) -> Any:
        """The last decode's logits as one (rows, vocab) numpy view, valid until
        the next decode. One llama_get_logits call per decode serves every row:
        llama.cpp stores them in batch order."""
        if self._logits is None:
            rows = len(self._rows)
            addr = _GET_LOGITS_ADDR(self.ctx)
            if not addr:
                raise Internal("llama.cpp returned no logits")
            if self._view[:2] != (addr, rows):
                # llama.cpp keeps its logits buffer until it needs a larger one
                flat = (ctypes.c_float * (rows * self._n_vocab)).from_address(addr)
                view = np.frombuffer(memoryview(flat), dtype=np.float32)
                self._view = (addr, rows, view.reshape(rows, self._n_vocab))
            self._logits = self._view[2]
        return self._logits

    def all_logits(self) -> Any:
        """Every logits row of the last decode, in batch order: a (rows, vocab)
        float32 numpy view, valid until the next decode."""
        return self._all_rows()

    def logits(self, index: int) -> Any:
        """The last decode's logits for batch entry ``index`` (a numpy view,
        valid until the next decode)."""
        return self._all_rows()[self._rows[index]]

    def greedy(self, index: int) -> int:
        """The most likely token for batch entry ``index`` (the first maximum).
        One argmax over every row of the decode serves all greedy requests."""
        if self._best is None:
            self._best = self._all_rows().argmax(axis=1)
        return int(self._best[self._rows[index]])

    def free(self) -> None:
        if self.ctx:
            if self._pool is not None:
                self._pool.free()
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            self.ctx = None


# llama_pooling_type -> the name edged reports; NONE (per-token vectors) and
# RANK (a reranker's score) are not sentence embeddings.
POOLING_NAMES = {
    lc.LLAMA_POOLING_TYPE_MEAN: "mean",
    lc.LLAMA_POOLING_TYPE_CLS: "cls",
    lc.LLAMA_POOLING_TYPE_LAST: "last",
}


class EmbeddingContext:
    """A llama.cpp context that pools each sequence into one vector.

    Its pooling is the model's own (``<arch>.pooling_type`` in the GGUF).
    A batch holds up to ``n_seq`` inputs, one sequence id each, and
    ``n_batch`` tokens in all; the micro-batch is the whole batch (a
    non-causal model must see every token of a sequence at once). Nothing is
    kept between batches.
    """

    def __init__(
        self, model: NativeModel, *, n_ctx: int, n_seq: int, n_batch: int, threads: int
    ) -> None:
        params = _context_params(n_ctx=n_ctx, n_seq=n_seq, n_batch=n_batch, threads=threads)
        params.embeddings = True
        params.pooling_type = lc.LLAMA_POOLING_TYPE_UNSPECIFIED  # the model's
        params.kv_unified = True
        self.ctx = lc.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise FailedPrecondition(
                f"llama.cpp could not create an embedding context of {n_ctx} tokens "
                "(not enough memory?)"
            )
        self.pooling = POOLING_NAMES.get(int(lc.llama_pooling_type(self.ctx)), "")
        self.n_embd = model.n_embd()
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self._encode = model.encoder_only()
        self._pool = threadpool.attach(self.ctx, threads)

    def embed(self, seqs: list[list[int]]) -> Any:
        """One decode of ``seqs`` (one sequence each): their pooled vectors as a
        (len(seqs), n_embd) float32 array."""
        b = self.batch
        tok, pos, nseq, seq_ids, out = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        i = 0
        for s, tokens in enumerate(seqs):
            for p, t in enumerate(tokens):
                tok[i] = t
                pos[i] = p
                nseq[i] = 1
                seq_ids[i][0] = s
                out[i] = True
                i += 1
        b.n_tokens = i
        if self.mem:
            lc.llama_memory_clear(self.mem, True)
        rc = (lc.llama_encode if self._encode else lc.llama_decode)(self.ctx, b)
        if rc != 0:
            raise Internal(f"llama.cpp embedding failed (code {rc})")
        rows = np.empty((len(seqs), self.n_embd), dtype=np.float32)
        for s in range(len(seqs)):
            ptr = lc.llama_get_embeddings_seq(self.ctx, s)
            if not ptr:
                raise Internal("llama.cpp returned no pooled embedding")
            rows[s] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        return rows

    def free(self) -> None:
        if self.ctx:
            if self._pool is not None:
                self._pool.free()
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            self.ctx = None


class NativeSampler:
    """llama.cpp's own sampler chain (no per-token Python work beyond one call)."""

    def __init__(self, model: NativeModel, s: Sampling, seed: int) -> None:
        # Plain greedy decoding is an argmax over the logits: done with numpy
        # it skips building llama.cpp's 49k-entry candidate array every token
        # (~0.2 ms here, 2% of a decode step). Same result: the first maximum.
        self._argmax = s.temperature <= 0.0 and s.repeat_penalty == 1.0
        chain = new_chain(truncation(model, s))
        lc.llama_sampler_chain_add(chain, final_choice(s, seed))
        self.chain = chain

    def sample(self, ctx: NativeContext, index: int) -> int:
        if self._argmax:
            return ctx.greedy(index)
        return int(lc.llama_sampler_sample(self.chain, ctx.ctx, index))

    def free(self) -> None:
        if self.chain:
            lc.llama_sampler_free(self.chain)
            self.chain = None


def new_chain(samplers: list[Any]) -> Any:
    """A llama.cpp sampler chain of ``samplers`` (the chain owns them)."""
    params = lc.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = lc.llama_sampler_chain_init(params)
    for sampler in samplers:
        lc.llama_sampler_chain_add(chain, sampler)
    return chain


def truncation(model: NativeModel, s: Sampling) -> list[Any]:
    """A request's samplers before the final choice: penalties, then (when it
    samples) top-k, top-p, min-p and temperature."""
    out = []
    if s.repeat_penalty != 1.0:
        out.append(lc.llama_sampler_init_penalties(model.n_vocab(), 64, s.repeat_penalty, 0.0, 0.0))
    if s.temperature > 0.0:
        if s.top_k > 0:
            out.append(lc.llama_sampler_init_top_k(s.top_k))
        out.append(lc.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            out.append(lc.llama_sampler_init_min_p(s.min_p, 1))
        out.append(lc.llama_sampler_init_temp(s.temperature))
    return out


def final_choice(s: Sampling, seed: int) -> Any:
    """Greedy at temperature 0, else a seeded draw."""
    return (
        lc.llama_sampler_init_greedy() if s.temperature <= 0.0 else lc.llama_sampler_init_dist(seed)
    )
