from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import pytest

from edged.common.errors import InvalidModelFile, NotFound
from edged.models_registry import read_gguf_info


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def expect_invalid(path: Path, match: str | None = None) -> InvalidModelFile:
    with pytest.raises(InvalidModelFile, match=match) as info:
        read_gguf_info(path)
    assert str(path.parent) not in str(info.value)
    return info.value


def test_reads_a_tiny_model(tmp_path: Path, tiny_gguf: bytes) -> None:
    info = read_gguf_info(write(tmp_path, tiny_gguf))
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.name == "Tiny Test Model"
    assert info.quantization == "Q4_1"
    assert info.parameters == 12 + 64
    assert info.context_length == 256
    assert info.chat_template.startswith("{% for m in messages %}")
    assert info.tensor_count == 2
    assert [t.name for t in info.tensors] == ["token_embd.weight", "blk.0.attn_q.weight"]
    assert info.tensors[1].ggml_type == "Q4_1"
    assert info.tensors[1].n_bytes == 40
    assert info.data_offset % 32 == 0
    assert info.data_offset + info.tensors[-1].offset + 40 == len(tiny_gguf)


def test_metadata_is_scalars_as_strings(tmp_path: Path, tiny_gguf: bytes) -> None:
    md = read_gguf_info(write(tmp_path, tiny_gguf)).metadata
    assert md["general.architecture"] == "llama"
    assert md["llama.context_length"] == "256"
    assert md["general.some_flag"] == "true"
    assert md["general.big"] == str(-(2**40))
    assert md["llama.attention.layer_norm_rms_epsilon"] == "1e-05"
    assert md["general.long_text"] == "x" * 1024
    for skipped in ("tokenizer.chat_template", "tokenizer.ggml.tokens", "general.nested"):
        assert skipped not in md


def test_version_2_and_custom_alignment(tmp_path: Path, kit: Any) -> None:
    kv = [*kit.default_kv(), ("general.alignment", kit.UINT32, 64)]
    info = read_gguf_info(write(tmp_path, kit.build_gguf(kv, version=2, alignment=64)))
    assert info.version == 2
    assert info.data_offset % 64 == 0


def test_quantization_falls_back_to_the_heaviest_tensor_type(tmp_path: Path, kit: Any) -> None:
    kv = [e for e in kit.default_kv() if e[0] != "general.file_type"]
    assert read_gguf_info(write(tmp_path, kit.build_gguf(kv))).quantization == "Q4_1"
    kv.append(("general.file_type", kit.UINT32, 9999))
    assert read_gguf_info(write(tmp_path, kit.build_gguf(kv))).quantization == "Q4_1"


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_gguf_info(tmp_path / "nope.gguf")


def test_a_directory_is_invalid(tmp_path: Path) -> None:
    expect_invalid(tmp_path)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "bad magic"),
        (b"GGU", "bad magic"),
        (b"GGML" + bytes(100), "bad magic"),
        (b"\x00" * 64, "bad magic"),
        (b"GGUF", "truncated"),
        (b"GGUF" + struct.pack("<I", 7) + bytes(16), "unsupported GGUF version 7"),
        (b"GGUF" + struct.pack("<I", 1) + bytes(16), "unsupported GGUF version 1"),
        (b"GGUF" + struct.pack(">I", 3) + bytes(16), "big-endian"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**63, 0), "declares 9223372036854775808 tensors"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**64 - 1), "metadata entries"),
        (b"GGUF" + struct.pack("<IQQ", 3, 1, 1), "more than the file can hold"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**64 - 1), "declares"),
    ],
)
def test_rejects_bad_headers(tmp_path: Path, data: bytes, match: str) -> None:
    expect_invalid(write(tmp_path, data), match)


def header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def kv_entry(kit: Any, key: str, vtype: int, payload: bytes) -> bytes:
    return kit.gguf_string(key) + struct.pack("<I", vtype) + payload


def hostile_metadata(kit: Any) -> dict[str, tuple[bytes, str]]:
    arch = kv_entry(kit, "general.architecture", kit.STRING, kit.gguf_string("llama"))
    align = "general.alignment"
    return {
        "huge string": (
            header(0, 1) + kv_entry(kit, "k", kit.STRING, struct.pack("<Q", 2**62)),
            "declares 4611686018427387904 bytes",
        ),
        "huge array": (
            header(0, 1) + kv_entry(kit, "k", kit.ARRAY, struct.pack("<IQ", kit.UINT64, 2**61)),
            "truncated: the array 'k'",
        ),
        "huge string array": (
            header(0, 1) + kv_entry(kit, "k", kit.ARRAY, struct.pack("<IQ", kit.STRING, 2**40)),
            "truncated: the array 'k'",
        ),
        "unknown type": (header(0, 1) + kv_entry(kit, "k", 13, b""), "unknown value type 13"),
        "unknown element type": (
            header(0, 1) + kv_entry(kit, "k", kit.ARRAY, struct.pack("<IQ", 99, 1)),
            "unknown element type 99",
        ),
        "deep nesting": (
            header(0, 1) + kv_entry(kit, "k", kit.ARRAY, struct.pack("<IQ", kit.ARRAY, 1) * 10),
            "nests arrays too deeply",
        ),
        "empty key": (header(0, 1) + kv_entry(kit, "", kit.UINT8, b"\x01"), "is empty"),
        "bad utf-8 key": (
            header(0, 1) + kv_entry(kit, b"\xff\xfe", kit.UINT8, b"\x01"),  # type: ignore[arg-type]
            "not UTF-8",
        ),
        "duplicate key": (
            header(0, 2) + kv_entry(kit, "k", kit.UINT8, b"\x01") * 2,
            "duplicate metadata key 'k'",
        ),
        "no architecture": (
            header(0, 1) + kv_entry(kit, "general.name", kit.UINT8, b"\x01"),
            "no general.architecture",
        ),
        "alignment 0": (
            header(0, 2) + arch + kv_entry(kit, align, kit.UINT32, struct.pack("<I", 0)),
            "not a power of two",
        ),
        "alignment 3": (
            header(0, 2) + arch + kv_entry(kit, align, kit.UINT32, struct.pack("<I", 3)),
            "not a power of two",
        ),
        "alignment string": (
            header(0, 2) + arch + kv_entry(kit, align, kit.STRING, kit.gguf_string("32")),
            "not a power of two",
        ),
    }


def test_rejects_hostile_metadata(tmp_path: Path, kit: Any) -> None:
    for label, (data, match) in hostile_metadata(kit).items():
        expect_invalid(write(tmp_path, data + bytes(4096), f"{label}.gguf"), match)


def tensor_file(kit: Any, dims: tuple[int, ...], ggml_type: int, offset: int = 0) -> bytes:
    arch = kv_entry(kit, "general.architecture", kit.STRING, kit.gguf_string("llama"))
    info = kit.gguf_string("t") + struct.pack("<I", len(dims))
    info += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset)
    return header(1, 1) + arch + info + bytes(64)


@pytest.mark.parametrize(
    ("dims", "ggml_type", "offset", "match"),
    [
        ((4,), 99, 0, "unsupported tensor type 99"),
        ((4,), 4, 0, "unsupported tensor type 4"),
        ((4, 1, 1, 1, 1), 0, 0, "5 dimensions"),
        ((33,), 2, 0, "not a multiple of the Q4_0 block size"),
        ((4,), 0, 3, "alignment"),
        ((2**62, 2**62), 0, 0, "impossible shape"),
        ((1 << 40,), 0, 0, r"GGUF file is truncated: tensor 't' ends at byte \d+ but the file"),
        ((4,), 0, 2**60, "GGUF file is truncated: tensor 't' ends at byte"),
    ],
)
def test_rejects_bad_tensors(
    tmp_path: Path, kit: Any, dims: tuple[int, ...], ggml_type: int, offset: int, match: str
) -> None:
    expect_invalid(write(tmp_path, tensor_file(kit, dims, ggml_type, offset)), match)


def test_rejects_duplicate_and_long_tensor_names(tmp_path: Path, kit: Any) -> None:
    t = kit.Tensor("same", (4,), kit.F32, bytes(16))
    expect_invalid(write(tmp_path, kit.build_gguf(tensors=[t, t])), "duplicate tensor")
    long = kit.Tensor("n" * 64, (4,), kit.F32, bytes(16))
    expect_invalid(write(tmp_path, kit.build_gguf(tensors=[long])), "declares 64 bytes")


def test_every_truncation_is_detected(tmp_path: Path, tiny_gguf: bytes) -> None:
    path = tmp_path / "cut.gguf"
    for n in range(len(tiny_gguf)):
        path.write_bytes(tiny_gguf[:n])
        with pytest.raises(InvalidModelFile):
            read_gguf_info(path)


def test_truncated_tensor_data_names_the_tensor(tmp_path: Path, tiny_gguf: bytes) -> None:
    path = write(tmp_path, tiny_gguf[:-1])
    expect_invalid(
        path,
        f"GGUF file is truncated: tensor 'blk.0.attn_q.weight' ends at byte {len(tiny_gguf)} "
        f"but the file has {len(tiny_gguf) - 1} bytes",
    )


def test_random_bytes_never_escape_as_other_errors(tmp_path: Path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "rand.gguf"
    for i in range(300):
        body = rng.randbytes(rng.randrange(0, 600))
        prefix = b"GGUF" + struct.pack("<I", 3) if i % 2 else b""
        path.write_bytes(prefix + body)
        with pytest.raises(InvalidModelFile):
            read_gguf_info(path)


def test_mutations_parse_or_raise_invalid_model_file(tmp_path: Path, tiny_gguf: bytes) -> None:
    rng = random.Random(99)
    path = tmp_path / "mut.gguf"
    outcomes = {"ok": 0, "invalid": 0}
    for _ in range(1500):
        data = bytearray(tiny_gguf)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(data))
            data[pos] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        path.write_bytes(bytes(data))
        try:
            read_gguf_info(path)
            outcomes["ok"] += 1
        except InvalidModelFile:
            outcomes["invalid"] += 1
    assert outcomes["invalid"] > 100
    assert outcomes["ok"] > 100


@pytest.mark.model
def test_reads_the_real_smollm2(smollm2_blob: Path) -> None:
    info = read_gguf_info(smollm2_blob)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.context_length == 8192
    assert "<|im_start|>" in info.chat_template
    assert info.tensor_count == 272
    assert 130_000_000 < info.parameters < 140_000_000
    assert info.metadata["llama.vocab_size"] == "49152"
