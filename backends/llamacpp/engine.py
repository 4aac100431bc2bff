"""The llama.cpp engine: one context, several sequences, one decode per step.

Each step builds a single batch holding the next token of every request that
is decoding plus a chunk of prompt for requests still prefilling, so new
requests join between steps and long prompts never stall running streams.
Sessions keep their sequence (and so their KV) between turns; a turn
evaluates only the tokens after the longest prefix already in the sequence.
Each sequence has its own KV stream, and the running sequences are kept on
consecutive ids so that a step decodes as one graph (layout.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edged.backends import speculative, toolkit
from edged.backends.base import (
    DRAFT_PREFIX,
    Capabilities,
    Engine,
    Event,
    Job,
    LoadSpec,
    TokenLogprob,
)
from edged.backends.kvstore import KVTiers, SavedState, state_key
from edged.backends.llamacpp import embedding, grammar
from edged.backends.llamacpp.draft import DraftModel
from edged.backends.llamacpp.info import INFO
from edged.backends.llamacpp.layout import compaction_swaps, keeps_one_run
from edged.backends.llamacpp.native import (
    NativeContext,
    NativeModel,
    NativeSampler,
    batch_invariance,
    gpu_offload_supported,
    offload_for,
    rpc_offload,
)
from edged.common.errors import EdgedError, FailedPrecondition, Internal, InvalidArgument
from edged.common.model_facts import is_embedding_model

log = logging.getLogger(__name__)

PREFILL_CHUNK = 512
MIN_SHARED_PREFIX = 16  # tokens; shorter common prefixes are cheaper to prefill
# A sequence's rows in one step give exactly the logits one-token decodes give
# (so a prompt's last token may go with the rest, and drafts may be verified)
# for up to TAIL_ROWS rows (bit-identical up to 48, not at 64, where llama.cpp's
# tiled attention starts). With a stock llama.cpp only below position
# EXACT_ROWS_BELOW (from there a lone sequence's one-row decode splits its KV
# cache across threads; logits up to 0.8 apart); with edged's build
# (installer/llama_build.py, EDGED_BATCH_INVARIANT=1, the default) at any
# position; with EDGED_BATCH_INVARIANT=2 for any number of rows (measured on
# SmolLM2 up to 512 rows at position 1,700).
TAIL_ROWS = 32
EXACT_ROWS_BELOW = 256
MAX_LOGPROBS = 20  # alternatives per token a request may ask for
# Infill prompts are laid out as llama-server lays them out. The window around
# the cursor is its default batch of 2048 tokens, or half the context when that
# is smaller: the prefix keeps its last 3/4, the suffix its first 1/4; extra
# files fill what the context has left after the window and max_tokens.
FIM_BATCH = 2048
FIM_NEEDED = ("pre", "suf", "mid")
NO_FIM = (
    "this model was not trained for infill: its vocabulary has no fill-in-the-middle "
    "tokens (fim_pre, fim_suf, fim_mid); use a code model that has them"
)


@dataclass
class Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV holds
    session_id: str | None = None
    busy: bool = False
    last_used: float = 0.0


@dataclass(eq=False, kw_only=True)
class Request(toolkit.Running):
    slot: Slot
    next_prefill: int  # the next prompt token to evaluate
    sampler: NativeSampler
    pending: int | None = None  # sampled, not yet evaluated
    spec: speculative.Speculator | None = None  # drafts when it speculates
    draft: list[int] = field(default_factory=list)  # carried into this step after pending


def offloaded_layers(n_gpu_layers: int, n_layer: int) -> int:
    """Layers llama.cpp puts on the GPU: the repeating ones asked for, plus the
    output layer once all of them are there (so at most ``n_layer + 1``)."""
    if n_gpu_layers == 0:
        return 0
    if n_gpu_layers < 0:
        return n_layer + 1
    return min(n_gpu_layers, n_layer + 1)


def in_sequence_order(
    entries: list[tuple[int, int, int, bool]], outputs: list[tuple[Request, list[int]]]
) -> tuple[list[tuple[int, int, int, bool]], list[tuple[Request, list[int]]]]:
    """The batch sorted by sequence (stable, so positions stay in order), with
    the output indices following their entries. llama.cpp puts consecutive
    sequence ids into one micro-batch only when they come in that order."""
    order = sorted(range(len(entries)), key=lambda i: entries[i][2])
    moved_to = {old: new for new, old in enumerate(order)}
    return [entries[i] for i in order], [(r, [moved_to[i] for i in ix]) for r, ix in outputs]


def rpc_device(servers: tuple[str, ...]) -> str:
    """What ``edged ps`` shows as the device of a model split over RPC workers."""
    return "cpu+rpc:" + ",".join(servers)


def _load_model(spec: LoadSpec) -> tuple[NativeModel, int]:
    """The model loaded as ``spec`` places it, and the layers it offloaded."""
    offload = offload_for(spec.device, spec.gpu_layers)
    if spec.rpc_servers:
        if offload.n_gpu_layers:
            raise FailedPrecondition(
                "a model runs either on this machine's GPU or split over RPC workers, not "
                f"both: unset EDGED_RPC or use --device cpu (asked for {spec.device})"
            )
        offload = rpc_offload(spec.rpc_servers, spec.rpc_layers)
        model = NativeModel.load(spec.model_path, offload=offload)
        return model, offloaded_layers(offload.n_gpu_layers, model.n_layer())
    if offload.n_gpu_layers and not gpu_offload_supported():
        raise FailedPrecondition(
            f"{spec.device} was asked for, but the installed llama.cpp cannot offload "
            "to a GPU (it was built without CUDA: reinstall with ./install.sh on a "
            "machine with the CUDA toolkit, or use --device cpu)"
        )
    model = NativeModel.load(spec.model_path, offload=offload)
    return model, offloaded_layers(offload.n_gpu_layers, model.n_layer())


def load_engine(spec: LoadSpec) -> Engine:
    """The engine for the model at ``spec.model_path``: an embedding model gets
    the embedding engine (embedding.py), any other the generation engine."""
    model, gpu_layers = _load_model(spec)
    try:
        if is_embedding_model(model.architecture(), embedding.declares_pooling(model)):
            return embedding.LlamaEmbedEngine(spec, model, gpu_layers=gpu_layers)
        return LlamaEngine(spec, loaded=(model, gpu_layers))
    except BaseException:
        model.free()
        raise


class LlamaEngine(toolkit.EngineCore[Request]):
    def __init__(self, spec: LoadSpec, *, loaded: tuple[NativeModel, int] | None = None) -> None:
        self._model, self._gpu_layers = loaded or _load_model(spec)
        train_ctx = self._model.n_ctx_train() or spec.context_length
        self._n_ctx_seq = min(spec.context_length, train_ctx)
        n_seq = max(1, spec.max_sequences)
        self._ctx = NativeContext(
            self._model,
            n_ctx=self._n_ctx_seq * n_seq,
            n_seq=n_seq,
            n_batch=PREFILL_CHUNK,
            threads=spec.threads,
            kv_type=spec.kv_type,
        )
        self._spec = spec
        self._draft: DraftModel | None = None
        if spec.draft_model_path:
            self._draft = DraftModel(
                spec.draft_model_path,
                self._model,
                name=spec.draft_model_name or "(unnamed)",
                offload=offload_for(spec.device, spec.gpu_layers),
                n_ctx=self._n_ctx_seq * n_seq,
                n_seq=n_seq,
                n_batch=PREFILL_CHUNK,
                threads=spec.threads,
            )
        self._slots = [Slot(seq=i) for i in range(n_seq)]
        self._row_cost = speculative.RowCost()
        # how drafts fared on this model lately: a new stream's starting estimate
        self._acceptance = speculative.AcceptanceRate(decay=speculative.ENGINE_RATE_DECAY)
        self._layout_changed = False  # a request started or ended since the last compaction
        # How many rows of a sequence one step may hold, and up to which position,
        # while they still give the logits one-token decodes give (what the prompt
        # tail and speculation rely on): with edged's batch-invariant build any
        # number anywhere; with a stock build few, below EXACT_ROWS_BELOW; on a GPU
        # nothing is relied on (the last prompt token is decoded alone).
        self._tail_rows = 1
        self._exact_below = 0
        if spec.device in ("", "cpu"):
            level = batch_invariance()
            self._tail_rows = PREFILL_CHUNK if level >= 2 else TAIL_ROWS
            self._exact_below = self._n_ctx_seq if level >= 1 else EXACT_ROWS_BELOW
            if level == 0:
                log.warning(
                    "llama.cpp without batch-invariant attention (not built by edged's "
                    "installer, or EDGED_BATCH_INVARIANT=0): speculation and the prompt "
                    "tail only below position %d",
                    EXACT_ROWS_BELOW,
                )
        self._fim = self._model.fim_tokens()
        can_infill = all(k in self._fim for k in FIM_NEEDED)
        caps = Capabilities(
            backend=INFO.name,
            device=spec.device if not spec.rpc_servers else rpc_device(spec.rpc_servers),
            formats=("gguf",),
            context_length=self._n_ctx_seq,
            max_sequences=n_seq,
            batching=True,
            session_kv=True,
            gpu_layers=self._gpu_layers,
            response_formats=("json_object", "json_schema", "grammar", "regex"),
            grammar_syntaxes=("gbnf",),
            tools=True,
            infill=can_infill,
            infill_refusal="" if can_infill else NO_FIM,
            max_logprobs=MAX_LOGPROBS,
            tokenize=True,
            kv_types=INFO.kv_types,
            kv_type=spec.kv_type,
        )
        super().__init__(
            caps,
            toolkit.PromptFormat(
                chat_template=self._model.meta("tokenizer.chat_template"),
                bos_token=self._model.token_text(self._model.bos()),
                eos_token=self._model.token_text(self._model.eos()),
                add_bos=self._model.add_bos(),
                metadata=self._model.metadata(),
            ),
        )
        self._tiers = KVTiers(
            self._state_key(),
            Path(spec.kv_dir) if spec.kv_dir else None,
            ram_budget=spec.kv_ram_budget,
            disk_budget=spec.kv_disk_budget,
        )

    # ------------------------------------------------------------ interface

    def drop_session(self, session_id: str) -> None:
        for slot in self._slots:
            if slot.session_id == session_id and not slot.busy:
                self._clear(slot)
        self._tiers.drop(session_id)

    def fork_session(self, source_id: str, new_id: str) -> str:
        self.drop_session(new_id)
        src = next((s for s in self._slots if s.session_id == source_id), None)
        if src is not None and not src.busy:
            target = self._free_slot(exclude=src)
            if target is not None:
                self._ctx.copy_seq(src.seq, target.seq)
                target.tokens = list(src.tokens)
                target.session_id = new_id
                target.last_used = time.monotonic()
                return "resident"
            state = SavedState(tuple(src.tokens), self._ctx.seq_state(src.seq))
            return self._tiers.put(new_id, state).replace("dropped", "none")
        if self._tiers.copy(source_id, new_id):
            return self._tiers.location(new_id) or "none"
        return "none"

    def kv_locations(self) -> dict[str, str]:
        out = self._tiers.entries()
        out.update({s.session_id: "resident" for s in self._slots if s.session_id})
        return out

    def kv_bytes(self) -> dict[str, int]:
        resident = sum(
            self._ctx.seq_state_size(s.seq) for s in self._slots if s.session_id and s.tokens
        )
        return {"resident": resident, "ram": self._tiers.ram_bytes, "disk": self._tiers.disk_bytes}

    def _advance(self, events: list[Event]) -> None:
        if self._layout_changed:
            self._layout_changed = False
            self._compact(events)
        if self._active:
            self._decode_step(events)

    def close(self) -> None:
        super().close()
        for slot in self._slots:  # keep resident sessions across a restart
            if slot.session_id and slot.tokens:
                state = SavedState(tuple(slot.tokens), self._ctx.seq_state(slot.seq))
                self._tiers.put_disk(slot.session_id, state)
        if self._draft is not None:
            self._draft.free()
        self._ctx.free()
        self._model.free()

    # ------------------------------------------------------------ admission

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=True)

    def _tokenize_parts(self, parts: list[tuple[str, bool]], add_special: bool) -> list[int]:
        """The template's text may spell control tokens; message content never does."""
        tokens: list[int] = []
        for i, (text, is_content) in enumerate(parts):
            bos = add_special and i == 0
            tokens += self._model.tokenize(text, add_special=bos, parse_special=not is_content)
        return tokens

    def _prepare(self, job: Job) -> object:
        """The job's grammar, parsed once to refuse a bad one before it waits."""
        c = toolkit.effective_constraint(job)
        if c is None:
            return None
        gbnf = grammar.to_gbnf(c)
        grammar.check_gbnf(self._model.vocab, gbnf)
        return gbnf

    def _encode_infill(self, job: Job) -> list[int]:
        """Tokens exactly as llama-server's format_prompt_infill lays them out
        (repo-level FIM: extra files first, then prefix, suffix, middle)."""
        fill = job.infill
        assert fill is not None
        if not all(k in self._fim for k in FIM_NEEDED):
            raise FailedPrecondition(NO_FIM)

        def text(t: str) -> list[int]:
            return self._model.tokenize(t, add_special=False, parse_special=False)

        fim = self._fim
        extra: list[int] = []
        if "rep" in fim:
            extra += [fim["rep"], *text("myproject\n")]
        for filename, chunk in fill.extra:
            if "sep" in fim:
                extra += [fim["sep"], *text((filename or "tmp") + "\n")]
            else:
                extra += text("\n\n--- snippet ---\n\n")
            extra += text(chunk)
        if "sep" in fim:
            extra += [fim["sep"], *text("filename\n")]
        prefix, suffix, typed = text(fill.prefix), text(fill.suffix), text(fill.prompt)
        n_batch = min(FIM_BATCH, self._n_ctx_seq // 2)
        n_prefix = min(len(prefix), 3 * (n_batch // 4))
        n_suffix = min(len(suffix), max(0, n_batch // 4 - (2 + len(typed))))
        n_predict = job.sampling.max_tokens or self._n_ctx_seq // 4
        n_extra = min(max(0, self._n_ctx_seq - n_batch - n_predict), len(extra))
        head = [fim["pre"], *prefix[len(prefix) - n_prefix :], *typed]
        if self._model.add_bos():
            head.insert(0, self._model.bos())
        tail = [fim["suf"], *suffix[:n_suffix]]
        return [*extra[len(extra) - n_extra :], *head, *tail, fim["mid"]]

    def _pick_slot(self, job: Job, prompt: list[int]) -> Slot | None:
        if job.session_id is not None:
            for slot in self._slots:
                if slot.session_id == job.session_id:
                    return None if slot.busy else slot
        free = [s for s in self._slots if not s.busy and s.session_id is None]
        if free:
            busy = self._busy()

            # a slot holding a long part of the prompt saves its prefill; a
            # short one is not worth a gap in the layout, unless it is the
            # whole prompt (a short prompt asked again: its first token then
            # needs one row, not the prompt's)
            enough = min(MIN_SHARED_PREFIX, len(prompt) - 1)

            def preference(s: Slot) -> tuple[int, bool, float]:
                cached = toolkit.common_prefix(s.tokens, prompt)
                useful = cached if cached >= enough else 0
                return (useful, keeps_one_run(busy, s.seq), -s.last_used)

            return max(free, key=preference)
        return self._free_slot(exclude=None)

    def _free_slot(self, exclude: Slot | None) -> Slot | None:
        """An unowned idle slot, else the least recently used idle session's (saved)."""
        idle = [s for s in self._slots if not s.busy and s is not exclude]
        if not idle:
            return None
        busy = self._busy()
        unowned = [s for s in idle if s.session_id is None]
        if unowned:
            slot = min(unowned, key=lambda s: (not keeps_one_run(busy, s.seq), s.last_used))
        else:
            slot = min(idle, key=lambda s: s.last_used)
            self._evict(slot)
        self._clear(slot)
        return slot

    def _evict(self, slot: Slot) -> None:
        """Save a session's sequence to the RAM/disk tiers and free the slot."""
        sid = slot.session_id
        if sid is not None and slot.tokens:
            state = SavedState(tuple(slot.tokens), self._ctx.seq_state(slot.seq))
            where = self._tiers.put(sid, state)
            log.info("evicted session %s (%d tokens) to %s", sid, len(slot.tokens), where)
        self._clear(slot)

    def _restore(self, job: Job, slot: Slot) -> str:
        """Load the session's saved state into ``slot``; returns the tier or ""."""
        if job.session_id is None:
            return ""
        saved = self._tiers.take(job.session_id)
        if saved is None:
            return ""
        state, tier = saved
        self._clear(slot)
        if not self._ctx.set_seq_state(slot.seq, state.data):
            log.warning("llama.cpp refused a saved state; rebuilding %s", job.session_id)
            self._clear(slot)
            return ""
        slot.tokens = list(state.tokens)
        return tier

    def _share_prefix(self, target: Slot, prompt: list[int]) -> None:
        """Copy the longest matching prompt prefix held by another sequence."""
        best: Slot | None = None
        best_n = max(toolkit.common_prefix(target.tokens, prompt), MIN_SHARED_PREFIX - 1)
        for s in self._slots:
            if s is not target:
                n = toolkit.common_prefix(s.tokens, prompt)
                if n > best_n:
                    best, best_n = s, n
        if best is None:
            return
        self._clear(target)
        self._ctx.copy_seq(best.seq, target.seq)
        self._ctx.seq_rm(target.seq, best_n, -1)
        target.tokens = list(prompt[:best_n])

    def _start(self, job: Job, prompt: list[int], prepared: object) -> Request | None:
        slot = self._pick_slot(job, prompt)
        if slot is None:
            return None
        seed = toolkit.request_seed(job.sampling)
        if isinstance(prepared, str):
            sampler: NativeSampler = grammar.ConstrainedSampler(
                self._model, job.sampling, seed, prepared
            )
        else:
            sampler = NativeSampler(self._model, job.sampling, seed)
        try:
            resident = job.session_id is not None and slot.session_id == job.session_id
            restored = "" if resident else self._restore(job, slot)
            if not (resident or restored):
                if slot.session_id is not None:
                    self._clear(slot)
                self._share_prefix(slot, prompt)
            cached = toolkit.common_prefix(slot.tokens, prompt)
            if cached == len(prompt):
                cached -= 1  # re-evaluate the last token to get fresh logits
            self._ctx.seq_rm(slot.seq, cached, -1)
            del slot.tokens[cached:]
        except BaseException:
            sampler.free()
            raise
        slot.busy = True
        self._layout_changed = True
        slot.session_id = job.session_id
        source = toolkit.kv_source(job, resident=resident, restored=restored, cached=cached)
        mode = speculative.mode_of(job.sampling, self._spec.speculative)
        if mode.startswith(DRAFT_PREFIX) and self._draft is None:
            sampler.free()
            raise FailedPrecondition(f"speculative {mode!r}: no draft model is loaded")
        return Request.begin(
            job,
            prompt,
            cached=cached,
            source=source,
            slot=slot,
            next_prefill=cached,
            sampler=sampler,
            spec=speculative.Speculator.for_prompt(prompt, mode, self._acceptance.rate),
        )

    # ------------------------------------------------------------ layout

    def _busy(self) -> list[bool]:
        return [s.busy for s in self._slots]

    def _compact(self, events: list[Event]) -> None:
        """Swap contents so the running sequences sit on consecutive ids.

        A gap (a request finished between two running ones, or a session
        resident away from the others) would make every following step decode
        as one more graph; one copy of the cached tokens is cheaper.
        """
        weights = [len(s.tokens) for s in self._slots]
        swaps = compaction_swaps(self._busy(), weights)
        try:
            for a, b in swaps:
                self._swap(self._slots[a], self._slots[b])
        except EdgedError as exc:  # never seen; fail what runs rather than mix sequences
            log.error("moving sequences failed: %s", exc)
            self._fail_all(exc, events)
            for slot in self._slots:
                self._clear(slot)

    def _swap(self, a: Slot, b: Slot) -> None:
        """Exchange two slots' KV and bookkeeping (requests follow their slot)."""
        saved_b = self._ctx.seq_state(b.seq) if b.tokens else None
        if a.tokens:
            self._ctx.copy_seq(a.seq, b.seq)
        else:
            self._ctx.seq_rm(b.seq, 0, -1)
        if saved_b is None:
            self._ctx.seq_rm(a.seq, 0, -1)
        elif not self._ctx.set_seq_state(a.seq, saved_b):
            raise Internal(f"llama.cpp could not move sequence {b.seq} to {a.seq}")
        if self._draft is not None:
            self._draft.forget(a.seq)
            self._draft.forget(b.seq)
        a.tokens, b.tokens = b.tokens, a.tokens
        a.session_id, b.session_id = b.session_id, a.session_id
        a.busy, b.busy = b.busy, a.busy
        a.last_used, b.last_used = b.last_used, a.last_used
        for r in self._active:
            if r.slot is a:
                r.slot = b
            elif r.slot is b:
                r.slot = a

    # ------------------------------------------------------------ decoding

    def _decode_step(self, events: list[Event]) -> None:
        entries: list[tuple[int, int, int, bool]] = []
        # each request's batch indices with logits: its pending token's (or its
        # last prompt token's), then one per draft token
        outputs: list[tuple[Request, list[int]]] = []
        full: list[Request] = []
        appended: list[tuple[Slot, list[int]]] = []
        decoding = [r for r in self._active if r.pending is not None]
        for r in decoding:
            if len(r.slot.tokens) >= self._n_ctx_seq:
                full.append(r)
        decoding = [r for r in decoding if r not in full]
        self._propose(decoding)
        for r in decoding:
            assert r.pending is not None
            base = len(r.slot.tokens)
            first = len(entries)
            outputs.append((r, list(range(first, first + 1 + len(r.draft)))))
            for k, token in enumerate([r.pending, *r.draft]):
                entries.append((token, base + k, r.slot.seq, True))
            appended.append((r.slot, [r.pending, *r.draft]))
        budget = self._ctx.n_batch - len(entries)
        for r in self._active:
            if r.pending is not None or budget <= 0:
                continue
            start = r.next_prefill
            # The last prompt token's logits must come from the same computation
            # whether the rest of the prompt was prefilled now or found in the
            # cache, so that an identical request at temperature 0 gives
            # identical tokens. Where rows in a step are computed exactly as
            # one-token decodes (TAIL_ROWS on the CPU, any number with
            # EDGED_BATCH_INVARIANT=2, none on a GPU) the last token goes with
            # the rest; otherwise it is decoded on its own, one step later.
            last_index = len(r.prompt) - 1
            short = (
                len(r.prompt) - start <= min(self._tail_rows, budget)
                and len(r.prompt) <= self._exact_below
            )
            end = last_index if start < last_index and not short else len(r.prompt)
            take = min(budget, end - start)
            if take <= 0:
                continue
            base = len(r.slot.tokens)
            for k in range(take):
                last = start + k == len(r.prompt) - 1
                entries.append((r.prompt[start + k], base + k, r.slot.seq, last))
            appended.append((r.slot, r.prompt[start : start + take]))
            r.next_prefill += take
            budget -= take
            if r.next_prefill == len(r.prompt):
                outputs.append((r, [len(entries) - 1]))
        for r in full:
            self._finish(r, "context_full", events)
        if not entries:
            return
        decode_only = len(entries) == sum(1 + len(r.draft) for r in decoding)
        entries, outputs = in_sequence_order(entries, outputs)
        started = time.perf_counter()
        try:
            self._ctx.decode(entries)
        except EdgedError as exc:
            self._fail_all(exc, events)
            return
        if decode_only:  # what a row costs, for speculation's auto mode
            self._row_cost.observe(len(entries), time.perf_counter() - started)
        for slot, toks in appended:
            slot.tokens.extend(toks)
        now = time.perf_counter()
        for r, indices in outputs:
            if r.pending is None:
                r.t.t_prefilled = now
            self._verify(r, indices, now, events)

    def _propose(self, decoding: list[Request]) -> None:
        """Set the draft tokens each decoding request carries into this step:
        prompt lookup, or the draft model for all that use it at once. Each
        gets at most what the batch, its context and its ``max_tokens`` leave
        room for (a verified draft of k gives up to k + 1 tokens)."""
        spare = self._ctx.n_batch - len(decoding)
        row_cost = self._row_cost.relative(len(decoding))
        wants: list[tuple[Request, int]] = []
        # With several streams in the step, a draft would split it: llama.cpp
        # evaluates equal rows per sequence in one graph (per-sequence KV
        # streams), so a stream's extra rows become a second graph, which costs
        # about a whole step where decoding is memory-bound and its rows where
        # it is compute-bound (measured at 4 streams: 0.86-0.89x with drafts).
        # No draft pays for that, so auto only drafts for a stream decoding alone.
        crowded = len(decoding) > 1
        for r in decoding:
            if r.spec is None or (crowded and r.spec.adaptive):
                continue
            room = min(self._n_ctx_seq, self._exact_below) - len(r.slot.tokens) - 1
            limit = min(spare, room)
            max_tokens = r.job.sampling.max_tokens
            if max_tokens:
                limit = min(limit, max_tokens - r.t.completion - 1)
            if r.spec.drafter is not None:
                r.draft = r.spec.propose(limit, row_cost)
                spare -= len(r.draft)
            elif (k := r.spec.length(limit, row_cost)) > 0:
                wants.append((r, k))
                spare -= k
        if wants and self._draft is not None:
            texts = [
                (r.slot.seq, [*r.slot.tokens, r.pending if r.pending is not None else 0], k)
                for r, k in wants
            ]
            try:
                drafts = self._draft.draft(texts)
            except EdgedError as exc:  # a draft that fails costs only its speed-up
                log.warning("the draft model failed to draft: %s", exc)
                return
            for (r, _), d in zip(wants, drafts, strict=True):
                r.draft = d

    def _verify(self, r: Request, indices: list[int], now: float, events: list[Event]) -> None:
        """Sample ``r``'s tokens from this step's rows in order, as plain decoding
        would one step at a time: each drafted token the sampler agrees with lets
        the next row count; the first disagreement (or the end of the request)
        stops it. The sequence's KV keeps only the rows that were used."""
        draft, r.draft = r.draft, []
        r.t.drafted += len(draft)  # counted before a token may end r (its stats go then)
        used = accepted = 0
        for k, index in enumerate(indices):
            token = r.sampler.sample(self._ctx, index)
            if r.job.logprobs is not None and not self._model.is_eog(token):
                r.logprobs.append(self._logprob(index, token, r.job.logprobs))
            used = k + 1
            hit = k < len(draft) and token == draft[k]
            accepted += hit
            r.t.accepted += hit
            if self._on_token(r, token, now, events) or not hit:
                break
        if not draft:
            return
        self._acceptance.add(len(draft), accepted)
        if r.spec is not None:
            r.spec.verified(len(draft), accepted)
        slot = r.slot
        keep = len(slot.tokens) - len(indices) + used
        if keep < len(slot.tokens):
            self._ctx.seq_rm(slot.seq, keep, -1)
            del slot.tokens[keep:]

    def _on_token(self, r: Request, token: int, now: float, events: list[Event]) -> bool:
        """Report one sampled token; True when it ended ``r``."""
        if r.t.completion == 0:
            r.t.t_first = now
        if self._model.is_eog(token):
            self._finish(r, "stop", events)
            return True
        if self._on_text_token(r, self._model.piece(token), events):
            return True
        r.pending = token
        if r.spec is not None:
            r.spec.push(token)
        return False

    def _logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        """The model's log-probabilities at batch entry ``index``: a log-softmax of
        its logits (before temperature, truncation and penalties)."""
        logits = self._ctx.logits(index).astype(np.float64)
        peak = float(logits.max())
        logz = peak + float(np.log(np.exp(logits - peak).sum()))
        alternatives: tuple[tuple[int, bytes, float], ...] = ()
        if top:
            best = np.argpartition(logits, -top)[-top:]
            best = best[np.argsort(-logits[best], kind="stable")]
            alternatives = tuple(
                (int(t), self._model.piece(int(t)), float(logits[t]) - logz) for t in best
            )
        return TokenLogprob(
            token, self._model.piece(token), float(logits[token]) - logz, alternatives
        )

    # ------------------------------------------------------------ tokens

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def pieces(self, tokens: list[int], *, special: bool) -> list[bytes]:
        bad = [t for t in tokens if not self._model.valid_token(t)]
        if bad:
            raise InvalidArgument(
                f"token {bad[0]} is not in the vocabulary (0-{self._model.n_vocab() - 1})"
            )
        return self._model.pieces(tokens, special=special)

    def _release(self, r: Request, reason: str) -> None:
        r.sampler.free()
        slot = r.slot
        slot.busy = False
        self._layout_changed = True
        slot.last_used = time.monotonic()
        if r.job.session_id is None:
            slot.session_id = None

    def _clear(self, slot: Slot) -> None:
        slot.session_id = None
        if slot.tokens:
            self._ctx.seq_rm(slot.seq, 0, -1)
            slot.tokens.clear()

    def _state_key(self) -> str:
        """Saved states are only ever restored into the same model and settings."""
        return state_key(
            self._spec.model_digest,
            context=self._n_ctx_seq,
            # a state records the stream count, and llama.cpp refuses one saved
            # with another
            streams=len(self._slots),
            template=self._template.source,
            kv_type=self._spec.kv_type,
        )
