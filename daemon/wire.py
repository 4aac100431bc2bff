"""Translation between wire messages (edged.v1) and internal types."""

from __future__ import annotations

from edged.backends.base import Message, Sampling, Stats
from edged.common.errors import InvalidArgument
from edged.v1 import edged_pb2 as pb

MAX_PROMPT_CHARS = 4 * 1024 * 1024
MAX_MESSAGES = 10_000

_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "stop_sequence": pb.FINISH_REASON_STOP_SEQUENCE,
    "length": pb.FINISH_REASON_LENGTH,
    "context_full": pb.FINISH_REASON_CONTEXT_FULL,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}


def sampling_from(
    msg: pb.SamplingParams, model_defaults: tuple[tuple[str, float], ...] = ()
) -> Sampling:
    """Validate sampling parameters; unset fields take the model's defaults, then edged's."""
    defaults = Sampling()
    per_model = dict(model_defaults)

    def pick(name: str, default: float | int) -> float | int:
        if msg.HasField(name):
            value: float | int = getattr(msg, name)
            return value
        return per_model.get(name, default)

    return Sampling(
        max_tokens=int(pick("max_tokens", defaults.max_tokens)),
        temperature=float(pick("temperature", defaults.temperature)),
        top_p=float(pick("top_p", defaults.top_p)),
        top_k=int(pick("top_k", defaults.top_k)),
        min_p=float(pick("min_p", defaults.min_p)),
        repeat_penalty=float(pick("repeat_penalty", defaults.repeat_penalty)),
        seed=int(msg.seed) if msg.HasField("seed") else None,
        stop=tuple(msg.stop),
    )


def with_system_prompt(messages: tuple[Message, ...], system: str) -> tuple[Message, ...]:
    """Prepend the model's default system prompt when the chat brings none."""
    if not system or any(m.role == "system" for m in messages):
        return messages
    return (Message("system", system), *messages)


def check_text(name: str, text: str) -> str:
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"{name} is longer than {MAX_PROMPT_CHARS} characters")
    if "\x00" in text:
        raise InvalidArgument(f"{name} contains a NUL character")
    return text


def messages_from(chat: pb.ChatMessages) -> tuple[Message, ...]:
    if len(chat.messages) > MAX_MESSAGES:
        raise InvalidArgument(f"at most {MAX_MESSAGES} messages per request")
    return tuple(
        Message(role=m.role, content=check_text("a message", m.content)) for m in chat.messages
    )


def stats_to(stats: Stats, *, backend: str, device: str) -> pb.GenerationStats:
    return pb.GenerationStats(
        prompt_tokens=stats.prompt_tokens,
        cached_prompt_tokens=stats.cached_prompt_tokens,
        completion_tokens=stats.completion_tokens,
        time_to_first_token_ms=stats.time_to_first_token_ms,
        decode_tokens_per_second=stats.decode_tokens_per_second,
        prefill_tokens_per_second=stats.prefill_tokens_per_second,
        total_ms=stats.total_ms,
        finish_reason=_FINISH.get(stats.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
        backend=backend,
        device=device,
        kv_source=stats.kv_source,
        stop_sequence=stats.stop_sequence,
    )
