"""Hypothesis strategies that build hostile GGUF files from a real one.

A real GGUF header (SmolLM2's) is split into its fields here, independently of
edged's reader: the preamble, every metadata entry, every tensor description,
and where each count, length, type and offset sits. The "compact" seed keeps
every entry but cuts long arrays (the 49k-token vocabulary) to a few elements,
so one example parses in milliseconds; the "full" seed is the header as it is.
Files keep the real tensor data size as a sparse tail, so a sound header
still parses.

Mutations: bad magic and version, truncation at (or near) every field boundary,
huge or off-by-one counts and lengths, bad alignment values and types, duplicate
keys, tensor offsets past the end or misaligned, unknown value and tensor types,
and random byte overwrites, one to three at a time.

Used by tests/unit/registry/test_fuzz_gguf.py (a short run in CI) and by
scripts/fuzz_gguf.py (the long run).
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from edged.common.errors import InvalidModelHeader
from edged.common.gguf import read_gguf_info

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32, INT32 = 8, 9, 4, 5
KEEP_ARRAY = 8  # elements kept per array in the compact seed
MAX_CPU_SECONDS = 5.0  # per example (CPU time: a busy shared machine does not count)
MAX_WALL_SECONDS = 60.0
MAX_PEAK_BYTES = 64 << 20  # Python allocations while parsing one example


@dataclass
class Entry:
    """One metadata entry or tensor description: its bytes and its field positions."""

    raw: bytes
    # (offset inside raw, struct format) of each count/length/type/offset field
    fields: list[tuple[int, str, str]] = field(default_factory=list)  # (pos, fmt, kind)
    key: str = ""


@dataclass
class Seed:
    version: int
    kv: list[Entry]
    tensors: list[Entry]
    alignment: int
    data_size: int  # bytes of tensor data after the header

    def __repr__(self) -> str:  # hypothesis prints the strategy's arguments
        return f"Seed({len(self.kv)} kv, {len(self.tensors)} tensors)"

    def header(self, kv: list[Entry] | None = None, tensors: list[Entry] | None = None) -> bytes:
        kv = self.kv if kv is None else kv
        tensors = self.tensors if tensors is None else tensors
        out = b"GGUF" + struct.pack("<IQQ", self.version, len(tensors), len(kv))
        return out + b"".join(e.raw for e in kv) + b"".join(t.raw for t in tensors)


class _Cursor:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> bytes:
        n = self.take("<Q")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw


def split_header(data: bytes, file_size: int, *, compact: bool) -> Seed:
    """Split a sound GGUF file's header; ``data`` holds at least the whole header."""
    c = _Cursor(data)
    assert data[:4] == b"GGUF"
    c.pos = 4
    version = c.take("<I")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    kv: list[Entry] = []
    alignment = 32
    for _ in range(n_kv):
        entry = _kv_entry(c, compact)
        if entry.key == "general.alignment":
            alignment = struct.unpack_from("<I", entry.raw, len(entry.raw) - 4)[0]
        kv.append(entry)
    tensors = [_tensor_entry(c) for _ in range(n_tensors)]
    data_offset = -(-c.pos // alignment) * alignment
    return Seed(version, kv, tensors, alignment, file_size - data_offset)


def _kv_entry(c: _Cursor, compact: bool) -> Entry:
    start = c.pos
    key = c.string()
    fields = [(0, "<Q", "length")]
    type_pos = c.pos - start
    vtype = c.take("<I")
    fields.append((type_pos, "<I", "type"))
    if vtype != ARRAY:
        value_start = c.pos
        _skip_value(c, vtype)
        if vtype == STRING:
            fields.append((value_start - start, "<Q", "length"))
        return Entry(c.data[start : c.pos], fields, key.decode("utf-8", "replace"))
    head = c.data[start : c.pos]
    etype_pos = c.pos - start
    etype, count = c.take("<I"), c.take("<Q")
    fields += [(etype_pos, "<I", "type"), (etype_pos + 4, "<Q", "count")]
    keep = min(count, KEEP_ARRAY) if compact else count
    body_start = c.pos
    kept_end = c.pos
    for i in range(count):
        _skip_value(c, etype)
        if i + 1 == keep:
            kept_end = c.pos
    if keep == 0:
        kept_end = body_start
    raw = head + struct.pack("<IQ", etype, keep) + c.data[body_start:kept_end]
    return Entry(raw, fields, key.decode("utf-8", "replace"))


def _skip_value(c: _Cursor, vtype: int) -> None:
    size = _SCALAR_SIZES.get(vtype)
    if size is not None:
        c.pos += size
    elif vtype == STRING:
        c.string()
    elif vtype == ARRAY:
        etype, count = c.take("<I"), c.take("<Q")
        for _ in range(count):
            _skip_value(c, etype)
    else:
        raise ValueError(f"the seed file has an unknown value type {vtype}")


def _tensor_entry(c: _Cursor) -> Entry:
    start = c.pos
    c.string()
    fields = [(0, "<Q", "length"), (c.pos - start, "<I", "dims")]
    n_dims = c.take("<I")
    for _ in range(n_dims):
        fields.append((c.pos - start, "<Q", "dim"))
        c.take("<Q")
    fields.append((c.pos - start, "<I", "ggml_type"))
    c.take("<I")
    fields.append((c.pos - start, "<Q", "offset"))
    c.take("<Q")
    return Entry(c.data[start : c.pos], fields)


# --- building a file -------------------------------------------------------------------


def build(seed: Seed, header: bytes, *, alignment: int | None = None) -> tuple[bytes, int]:
    """The header padded to the alignment, and the total file size (a sparse tail)."""
    align = alignment or seed.alignment
    padded = header + bytes(-len(header) % max(align, 1))
    return padded, len(padded) + seed.data_size


def write(path: Path, head: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(max(size, len(head)))


# --- mutations ---------------------------------------------------------------------------

HUGE = [
    0,
    1,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**40,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
]


def _set(raw: bytes, pos: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    limit = 1 << (8 * size)
    return raw[:pos] + struct.pack(fmt, value % limit) + raw[pos + size :]


@dataclass(frozen=True)
class Example:
    """One hostile file; its repr stays short (hypothesis prints it on failure)."""

    label: str
    head: bytes
    size: int

    def __repr__(self) -> str:
        return f"Example({self.label!r}, head={len(self.head)} bytes, size={self.size})"


@st.composite
def hostile_file(draw: Any, seeds: dict[str, Seed]) -> Example:
    """A hostile file: the header bytes (a sparse tail follows) and what was done."""
    name = draw(st.sampled_from(sorted(seeds))) if len(seeds) > 1 else next(iter(seeds))
    seed = seeds[name]
    kv = list(seed.kv)
    tensors = list(seed.tensors)
    labels: list[str] = [name]
    alignment: int | None = None
    version = seed.version
    cut: int | None = None
    flips: list[tuple[int, int]] = []
    magic = b"GGUF"
    counts: tuple[int | None, int | None] = (None, None)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                [
                    "magic",
                    "version",
                    "truncate",
                    "count",
                    "field",
                    "alignment",
                    "duplicate",
                    "drop",
                    "offset",
                    "flip",
                ]
            )
        )
        labels.append(op)
        if op == "magic":
            magic = draw(st.binary(min_size=0, max_size=4).filter(lambda b: b != b"GGUF"))
        elif op == "version":
            version = draw(st.sampled_from([0, 1, 4, 2**24 * 3, 2**32 - 1]))
        elif op == "truncate":
            cut = draw(st.integers(0, 1 << 30))  # resolved against the boundaries below
        elif op == "count":
            counts = (
                draw(st.sampled_from([None, *HUGE, len(tensors) + 1, max(len(tensors) - 1, 0)])),
                draw(st.sampled_from([None, *HUGE, len(kv) + 1, max(len(kv) - 1, 0)])),
            )
        elif op == "field":
            group = kv if draw(st.booleans()) or not tensors else tensors
            i = draw(st.integers(0, len(group) - 1))
            e = group[i]
            pos, fmt, kind = draw(st.sampled_from(e.fields))
            current = struct.unpack_from(fmt, e.raw, pos)[0]
            value = draw(
                st.one_of(
                    st.sampled_from(HUGE),
                    st.sampled_from([current + 1, current - 1, current * 2, current + 32]),
                    st.integers(0, 2**64 - 1),
                    st.integers(0, 40),
                )
            )
            group[i] = Entry(_set(e.raw, pos, fmt, value), e.fields, e.key)
            labels[-1] = f"field:{kind}"
        elif op == "alignment":
            vtype = draw(st.sampled_from([UINT32, UINT32, INT32, STRING, 10, 6]))
            value = draw(st.sampled_from([0, 1, 3, 7, 16, 64, 1 << 20, 1 << 21, 2**31, 2**32 - 1]))
            if vtype == STRING:
                payload = struct.pack("<Q", 2) + b"32"
            elif vtype == 6:  # float32
                payload = struct.pack("<f", float(value))
            else:
                payload = _set(
                    bytes(8 if vtype == 10 else 4), 0, "<Q" if vtype == 10 else "<I", value
                )
            key = b"general.alignment"
            raw = struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + payload
            kv = [e for e in kv if e.key != "general.alignment"]
            fields = [(0, "<Q", "length"), (8 + len(key), "<I", "type")]
            kv.insert(draw(st.integers(0, len(kv))), Entry(raw, fields, "general.alignment"))
            if vtype == UINT32 and value and not value & (value - 1) and value <= 1 << 20:
                alignment = value
        elif op == "duplicate":
            group = kv if draw(st.booleans()) or not tensors else tensors
            e = group[draw(st.integers(0, len(group) - 1))]
            group.insert(draw(st.integers(0, len(group))), e)
        elif op == "drop":
            group = kv if draw(st.booleans()) or not tensors else tensors
            if group:
                del group[draw(st.integers(0, len(group) - 1))]
        elif op == "offset" and tensors:
            i = draw(st.integers(0, len(tensors) - 1))
            e = tensors[i]
            pos = e.fields[-1][0]
            value = draw(
                st.one_of(
                    st.sampled_from([seed.data_size, seed.data_size + 32, 2**63, 2**64 - 32]),
                    st.integers(0, 2**64 - 1),
                    st.integers(0, seed.data_size + 4096).map(lambda v: v - v % 32),
                )
            )
            tensors[i] = Entry(_set(e.raw, pos, "<Q", value), e.fields, e.key)
        elif op == "flip":
            flips = draw(
                st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=8)
            )
    header = seed.header(kv, tensors)
    header = magic + struct.pack("<I", version % 2**32) + header[8:]
    if counts[0] is not None:
        header = _set(header, 8, "<Q", counts[0])
    if counts[1] is not None:
        header = _set(header, 16, "<Q", counts[1])
    head, size = build(seed, header, alignment=alignment)
    if flips:
        data = bytearray(head)
        for pos, byte in flips:
            data[pos % len(data)] = byte
        head = bytes(data)
    if cut is not None:
        bounds = boundaries(len(magic), kv, tensors, len(head))
        point = bounds[cut % len(bounds)] + draw(st.sampled_from([0, 0, 0, -1, 1]))
        point = max(0, min(point, len(head)))
        head, size = head[:point], point
    return Example("+".join(labels), head, size)


def boundaries(magic_len: int, kv: list[Entry], tensors: list[Entry], total: int) -> list[int]:
    """Every field boundary of a header: after the magic, the counts, each entry's fields."""
    out = [0, magic_len, magic_len + 4, magic_len + 12, magic_len + 20]
    pos = magic_len + 20
    for e in [*kv, *tensors]:
        out += [pos + p for p, _fmt, _kind in e.fields]
        pos += len(e.raw)
        out.append(pos)
    out.append(total)
    return sorted(set(out))


# --- the check ------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: int = 0
    invalid: int = 0
    slowest: float = 0.0
    peak: int = 0


def check_one(path: Path, head: bytes, size: int, outcome: Outcome, *, trace: bool) -> None:
    """Parse one file: only success or InvalidModelHeader, bounded time and memory."""
    write(path, head, size)
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    cpu = time.process_time()
    try:
        read_gguf_info(path)
        outcome.ok += 1
    except InvalidModelHeader:
        outcome.invalid += 1
    finally:
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            outcome.peak = max(outcome.peak, peak)
            assert peak < MAX_PEAK_BYTES, f"parsing took {peak} bytes"
        outcome.slowest = max(outcome.slowest, cpu)
    assert cpu < MAX_CPU_SECONDS, f"parsing took {cpu:.2f} s of CPU"
    assert elapsed < MAX_WALL_SECONDS, f"parsing took {elapsed:.2f} s"
