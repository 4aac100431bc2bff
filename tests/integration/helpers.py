from __future__ import annotations

from collections.abc import Iterable

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
