"""Translation between wire messages (edged.v1) and internal types."""

from __future__ import annotations

import json

from edged.backends.base import Chunk, Message, Sampling, Stats, ToolCall
from edged.backends.tool_calls import new_call_id
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
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "time_limit": pb.FINISH_REASON_TIME_LIMIT,
}


def sampling_from(
    msg: pb.SamplingParams,
    model_defaults: tuple[tuple[str, float], ...] = (),
    model_stop: tuple[str, ...] = (),
) -> Sampling:
    """Validate sampling parameters; unset fields take the model's defaults, then edged's
    (a request without stop strings takes the model's)."""
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
        stop=tuple(msg.stop) or model_stop,
        speculative=msg.speculative.strip() if msg.HasField("speculative") else "",
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
    return tuple(message_from(m) for m in chat.messages)


def message_from(m: pb.ChatMessage) -> Message:
    """One chat message; tool calls and results checked for what a template needs."""
    content = check_text("a message", m.content)
    if m.tool_calls and m.role != "assistant":
        raise InvalidArgument(f"a {m.role or 'role-less'} message cannot carry tool_calls")
    if m.role == "tool" and not m.tool_call_id:
        raise InvalidArgument("a tool message needs the tool_call_id it answers")
    calls = tuple(_call_from(c) for c in m.tool_calls)
    return Message(m.role, content, calls, m.tool_call_id if m.role == "tool" else "", m.name)


def _call_from(c: pb.ToolCall) -> ToolCall:
    if not c.name:
        raise InvalidArgument("a tool call needs the tool's name")
    arguments = c.arguments or "{}"
    try:
        parsed = json.loads(arguments)
    except ValueError as exc:
        raise InvalidArgument(f"the arguments of the {c.name!r} call are not JSON") from exc
    if not isinstance(parsed, dict):
        raise InvalidArgument(f"the arguments of the {c.name!r} call must be a JSON object")
    return ToolCall(c.id or new_call_id(), check_text("a tool call", c.name), arguments)


def message_to(m: Message) -> pb.ChatMessage:
    return pb.ChatMessage(
        role=m.role,
        content=m.content,
        tool_calls=[pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls],
        tool_call_id=m.tool_call_id,
        name=m.name,
    )


def chunk_to(c: Chunk) -> pb.GenerateChunk:
    """A chunk of a reply: text, tool call deltas and per-token logprobs."""
    out = pb.GenerateChunk(text=c.text, tokens=c.tokens)
    for d in c.tool_calls:
        out.tool_calls.add(index=d.index, id=d.id, name=d.name, arguments=d.arguments)
    for lp in c.logprobs:
        entry = out.logprobs.add(
            id=lp.id, token=_text(lp.piece), token_bytes=lp.piece, logprob=lp.logprob
        )
        for tid, piece, logprob in lp.top:
            entry.top.add(id=tid, token=_text(piece), token_bytes=piece, logprob=logprob)
    return out


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


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
        drafted_tokens=stats.drafted_tokens,
        accepted_tokens=stats.accepted_tokens,
    )
