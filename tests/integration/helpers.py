from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import (
    MetadataDetails,
    copy_with_new_metadata,
    get_field_data,
)

from edged.v1 import edged_pb2 as pb


def chat(model: str, text: str, **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=model,
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=text)]),
        sampling=pb.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def collect(chunks: Iterable[pb.GenerateChunk]) -> tuple[str, pb.GenerationStats, int]:
    """Join a stream; return (text, final stats, number of text chunks)."""
    text, n, stats = [], 0, None
    for c in chunks:
        if c.HasField("stats"):
            stats = c.stats
        else:
            text.append(c.text)
            n += 1
    assert stats is not None, "the stream ended without a final stats chunk"
    return "".join(text), stats, n


# SmolLM2 token ids standing in for FIM tokens (real tokens of its vocabulary).
FIM = {"pre": 7, "suf": 8, "mid": 9, "rep": 3, "sep": 5}


def write_fim_copy(src: Path, dst: Path) -> None:
    """A copy of a GGUF whose metadata declares FIM tokens (SmolLM2 has none),
    written with the ``gguf`` package."""
    reader = gguf.GGUFReader(src, "r")
    writer = gguf.GGUFWriter(
        dst, arch=get_field_data(reader, gguf.Keys.General.ARCHITECTURE), endianess=reader.endianess
    )
    alignment = get_field_data(reader, gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment
    meta = {
        f"tokenizer.ggml.fim_{k}_token_id": MetadataDetails(gguf.GGUFValueType.UINT32, v)
        for k, v in FIM.items()
    }
    copy_with_new_metadata(reader, writer, meta, [])
