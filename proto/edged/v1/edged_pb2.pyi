from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_STOP_SEQUENCE: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CONTEXT_FULL: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
    FINISH_REASON_TOOL_CALLS: _ClassVar[FinishReason]
    FINISH_REASON_TIME_LIMIT: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_STOP_SEQUENCE: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CONTEXT_FULL: FinishReason
FINISH_REASON_CANCELLED: FinishReason
FINISH_REASON_TOOL_CALLS: FinishReason
FINISH_REASON_TIME_LIMIT: FinishReason

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "speculative")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    REPEAT_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    speculative: str
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., repeat_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., speculative: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "tool_calls", "tool_call_id", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    tool_call_id: str
    name: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ResponseFormat(_message.Message):
    __slots__ = ("type", "schema", "name", "grammar", "syntax", "regex")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[ResponseFormat.Type]
        TYPE_TEXT: _ClassVar[ResponseFormat.Type]
        TYPE_JSON_OBJECT: _ClassVar[ResponseFormat.Type]
        TYPE_JSON_SCHEMA: _ClassVar[ResponseFormat.Type]
        TYPE_GRAMMAR: _ClassVar[ResponseFormat.Type]
        TYPE_REGEX: _ClassVar[ResponseFormat.Type]
    TYPE_UNSPECIFIED: ResponseFormat.Type
    TYPE_TEXT: ResponseFormat.Type
    TYPE_JSON_OBJECT: ResponseFormat.Type
    TYPE_JSON_SCHEMA: ResponseFormat.Type
    TYPE_GRAMMAR: ResponseFormat.Type
    TYPE_REGEX: ResponseFormat.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    SYNTAX_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    type: ResponseFormat.Type
    schema: str
    name: str
    grammar: str
    syntax: str
    regex: str
    def __init__(self, type: _Optional[_Union[ResponseFormat.Type, str]] = ..., schema: _Optional[str] = ..., name: _Optional[str] = ..., grammar: _Optional[str] = ..., syntax: _Optional[str] = ..., regex: _Optional[str] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[str] = ...) -> None: ...

class ToolChoice(_message.Message):
    __slots__ = ("mode", "function")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[ToolChoice.Mode]
        MODE_AUTO: _ClassVar[ToolChoice.Mode]
        MODE_NONE: _ClassVar[ToolChoice.Mode]
        MODE_REQUIRED: _ClassVar[ToolChoice.Mode]
        MODE_FUNCTION: _ClassVar[ToolChoice.Mode]
    MODE_UNSPECIFIED: ToolChoice.Mode
    MODE_AUTO: ToolChoice.Mode
    MODE_NONE: ToolChoice.Mode
    MODE_REQUIRED: ToolChoice.Mode
    MODE_FUNCTION: ToolChoice.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    mode: ToolChoice.Mode
    function: str
    def __init__(self, mode: _Optional[_Union[ToolChoice.Mode, str]] = ..., function: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class ToolCallDelta(_message.Message):
    __slots__ = ("index", "id", "name", "arguments")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    name: str
    arguments: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class Infill(_message.Message):
    __slots__ = ("prefix", "suffix", "prompt", "extra", "n_indent", "t_max_predict_ms")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    N_INDENT_FIELD_NUMBER: _ClassVar[int]
    T_MAX_PREDICT_MS_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    suffix: str
    prompt: str
    extra: _containers.RepeatedCompositeFieldContainer[InfillContext]
    n_indent: int
    t_max_predict_ms: int
    def __init__(self, prefix: _Optional[str] = ..., suffix: _Optional[str] = ..., prompt: _Optional[str] = ..., extra: _Optional[_Iterable[_Union[InfillContext, _Mapping]]] = ..., n_indent: _Optional[int] = ..., t_max_predict_ms: _Optional[int] = ...) -> None: ...

class InfillContext(_message.Message):
    __slots__ = ("filename", "text")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    filename: str
    text: str
    def __init__(self, filename: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("id", "token", "token_bytes", "logprob", "top")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    id: int
    token: str
    token_bytes: bytes
    logprob: float
    top: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    def __init__(self, id: _Optional[int] = ..., token: _Optional[str] = ..., token_bytes: _Optional[bytes] = ..., logprob: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ...) -> None: ...

class TopLogprob(_message.Message):
    __slots__ = ("id", "token", "token_bytes", "logprob")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    id: int
    token: str
    token_bytes: bytes
    logprob: float
    def __init__(self, id: _Optional[int] = ..., token: _Optional[str] = ..., token_bytes: _Optional[bytes] = ..., logprob: _Optional[float] = ...) -> None: ...

class ChatMessages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt", "chat", "infill", "sampling", "backend", "keep_alive_s", "context_length", "device", "stream_interval_ms", "response_format", "tools", "tool_choice", "parallel_tool_calls", "logprobs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    INFILL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STREAM_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    chat: ChatMessages
    infill: Infill
    sampling: SamplingParams
    backend: str
    keep_alive_s: float
    context_length: int
    device: str
    stream_interval_ms: int
    response_format: ResponseFormat
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    logprobs: int
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., chat: _Optional[_Union[ChatMessages, _Mapping]] = ..., infill: _Optional[_Union[Infill, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., backend: _Optional[str] = ..., keep_alive_s: _Optional[float] = ..., context_length: _Optional[int] = ..., device: _Optional[str] = ..., stream_interval_ms: _Optional[int] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., tool_choice: _Optional[_Union[ToolChoice, _Mapping]] = ..., parallel_tool_calls: _Optional[bool] = ..., logprobs: _Optional[int] = ...) -> None: ...

class GenerationStats(_message.Message):
    __slots__ = ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "time_to_first_token_ms", "decode_tokens_per_second", "prefill_tokens_per_second", "total_ms", "finish_reason", "backend", "device", "kv_source", "stop_sequence", "drafted_tokens", "accepted_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KV_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    decode_tokens_per_second: float
    prefill_tokens_per_second: float
    total_ms: float
    finish_reason: FinishReason
    backend: str
    device: str
    kv_source: str
    stop_sequence: str
    drafted_tokens: int
    accepted_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., time_to_first_token_ms: _Optional[float] = ..., decode_tokens_per_second: _Optional[float] = ..., prefill_tokens_per_second: _Optional[float] = ..., total_ms: _Optional[float] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., kv_source: _Optional[str] = ..., stop_sequence: _Optional[str] = ..., drafted_tokens: _Optional[int] = ..., accepted_tokens: _Optional[int] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("text", "tokens", "stats", "tool_calls", "logprobs")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: int
    stats: GenerationStats
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCallDelta]
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[int] = ..., stats: _Optional[_Union[GenerationStats, _Mapping]] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCallDelta, _Mapping]]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "inputs", "token_inputs", "truncate", "normalize", "backend", "device", "keep_alive_s", "dimensions", "context_length")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    token_inputs: _containers.RepeatedCompositeFieldContainer[TokenIds]
    truncate: bool
    normalize: bool
    backend: str
    device: str
    keep_alive_s: float
    dimensions: int
    context_length: int
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., token_inputs: _Optional[_Iterable[_Union[TokenIds, _Mapping]]] = ..., truncate: _Optional[bool] = ..., normalize: _Optional[bool] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., keep_alive_s: _Optional[float] = ..., dimensions: _Optional[int] = ..., context_length: _Optional[int] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "embeddings", "prompt_tokens", "truncated", "dimensions", "backend", "device", "total_ms", "load_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    prompt_tokens: int
    truncated: _containers.RepeatedScalarFieldContainer[int]
    dimensions: int
    backend: str
    device: str
    total_ms: float
    load_ms: float
    def __init__(self, model: _Optional[str] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ..., truncated: _Optional[_Iterable[int]] = ..., dimensions: _Optional[int] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., total_ms: _Optional[float] = ..., load_ms: _Optional[float] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("id", "model", "model_digest", "system_prompt", "created_unix_ms", "updated_unix_ms", "turns", "token_count", "backend", "kv_location")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    KV_LOCATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    model_digest: str
    system_prompt: str
    created_unix_ms: int
    updated_unix_ms: int
    turns: int
    token_count: int
    backend: str
    kv_location: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., model_digest: _Optional[str] = ..., system_prompt: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., turns: _Optional[int] = ..., token_count: _Optional[int] = ..., backend: _Optional[str] = ..., kv_location: _Optional[str] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("model", "system_prompt", "backend", "device", "history")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    model: str
    system_prompt: str
    backend: str
    device: str
    history: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, model: _Optional[str] = ..., system_prompt: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., history: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("session_id", "content", "sampling", "keep_alive_s", "stream_interval_ms", "response_format", "tools", "tool_choice", "parallel_tool_calls", "logprobs", "tool_results")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    STREAM_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    content: str
    sampling: SamplingParams
    keep_alive_s: float
    stream_interval_ms: int
    response_format: ResponseFormat
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    logprobs: int
    tool_results: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, session_id: _Optional[str] = ..., content: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., keep_alive_s: _Optional[float] = ..., stream_interval_ms: _Optional[int] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., tool_choice: _Optional[_Union[ToolChoice, _Mapping]] = ..., parallel_tool_calls: _Optional[bool] = ..., logprobs: _Optional[int] = ..., tool_results: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class SessionRef(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session", "history")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    session: Session
    history: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., history: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RewindRequest(_message.Message):
    __slots__ = ("session_id", "turns")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turns: int
    def __init__(self, session_id: _Optional[str] = ..., turns: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "tag", "digest", "size_bytes", "format", "architecture", "quantization", "parameters", "context_length", "modified_unix_ms", "source", "has_chat_template")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HAS_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    tag: str
    digest: str
    size_bytes: int
    format: str
    architecture: str
    quantization: str
    parameters: int
    context_length: int
    modified_unix_ms: int
    source: str
    has_chat_template: bool
    def __init__(self, name: _Optional[str] = ..., tag: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[str] = ..., architecture: _Optional[str] = ..., quantization: _Optional[str] = ..., parameters: _Optional[int] = ..., context_length: _Optional[int] = ..., modified_unix_ms: _Optional[int] = ..., source: _Optional[str] = ..., has_chat_template: _Optional[bool] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("source", "name", "digest")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    source: str
    name: str
    digest: str
    def __init__(self, source: _Optional[str] = ..., name: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("status", "completed_bytes", "total_bytes", "model")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    status: str
    completed_bytes: int
    total_bytes: int
    model: ModelInfo
    def __init__(self, status: _Optional[str] = ..., completed_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ShowModelResponse(_message.Message):
    __slots__ = ("model", "chat_template", "metadata", "system_prompt", "sampling_defaults", "variants", "backends", "settings", "memory", "capabilities", "stop_defaults")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SamplingDefaultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    STOP_DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    chat_template: str
    metadata: _containers.ScalarMap[str, str]
    system_prompt: str
    sampling_defaults: _containers.ScalarMap[str, float]
    variants: _containers.RepeatedCompositeFieldContainer[ModelVariant]
    backends: _containers.RepeatedCompositeFieldContainer[BackendChoice]
    settings: ModelSettings
    memory: MemoryEstimate
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    stop_defaults: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., chat_template: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., system_prompt: _Optional[str] = ..., sampling_defaults: _Optional[_Mapping[str, float]] = ..., variants: _Optional[_Iterable[_Union[ModelVariant, _Mapping]]] = ..., backends: _Optional[_Iterable[_Union[BackendChoice, _Mapping]]] = ..., settings: _Optional[_Union[ModelSettings, _Mapping]] = ..., memory: _Optional[_Union[MemoryEstimate, _Mapping]] = ..., capabilities: _Optional[_Iterable[str]] = ..., stop_defaults: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelSettings(_message.Message):
    __slots__ = ("backend", "device", "keep_alive_s", "pinned", "context_length", "kv_type", "rpc", "speculative")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    KV_TYPE_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    backend: str
    device: str
    keep_alive_s: float
    pinned: bool
    context_length: int
    kv_type: str
    rpc: str
    speculative: str
    def __init__(self, backend: _Optional[str] = ..., device: _Optional[str] = ..., keep_alive_s: _Optional[float] = ..., pinned: _Optional[bool] = ..., context_length: _Optional[int] = ..., kv_type: _Optional[str] = ..., rpc: _Optional[str] = ..., speculative: _Optional[str] = ...) -> None: ...

class ConfigureModelRequest(_message.Message):
    __slots__ = ("model", "settings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    settings: ModelSettings
    def __init__(self, model: _Optional[str] = ..., settings: _Optional[_Union[ModelSettings, _Mapping]] = ...) -> None: ...

class MemoryEstimate(_message.Message):
    __slots__ = ("weights_bytes", "kv_bytes", "overhead_bytes", "total_bytes", "kv_type")
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_TYPE_FIELD_NUMBER: _ClassVar[int]
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    total_bytes: int
    kv_type: str
    def __init__(self, weights_bytes: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., overhead_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., kv_type: _Optional[str] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("model", "backend", "device", "keep_alive_s", "pin", "context_length")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: str
    device: str
    keep_alive_s: float
    pin: bool
    context_length: int
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., keep_alive_s: _Optional[float] = ..., pin: _Optional[bool] = ..., context_length: _Optional[int] = ...) -> None: ...

class ModelVariant(_message.Message):
    __slots__ = ("name", "format", "quantization", "size_bytes", "backends", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: str
    quantization: str
    size_bytes: int
    backends: _containers.RepeatedScalarFieldContainer[str]
    source: str
    def __init__(self, name: _Optional[str] = ..., format: _Optional[str] = ..., quantization: _Optional[str] = ..., size_bytes: _Optional[int] = ..., backends: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ...) -> None: ...

class ConvertRequest(_message.Message):
    __slots__ = ("model", "to", "quant")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    model: str
    to: str
    quant: str
    def __init__(self, model: _Optional[str] = ..., to: _Optional[str] = ..., quant: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CopyModelRequest(_message.Message):
    __slots__ = ("source", "destination", "replace")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    replace: bool
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class ModelParameter(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class CreateModelRequest(_message.Message):
    __slots__ = ("name", "source", "system_prompt", "parameters", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    system_prompt: str
    parameters: _containers.RepeatedCompositeFieldContainer[ModelParameter]
    replace: bool
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., system_prompt: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ModelParameter, _Mapping]]] = ..., replace: _Optional[bool] = ...) -> None: ...

class CreateModelResponse(_message.Message):
    __slots__ = ("model", "notes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("model", "digest", "backend", "device", "pid", "rss_bytes", "context_length", "active_requests", "loaded_unix_ms", "capabilities", "memory", "sessions", "keep_alive_s", "expires_unix_ms", "pinned", "gpu_layers", "kv_type")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LOADED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_S_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    KV_TYPE_FIELD_NUMBER: _ClassVar[int]
    model: str
    digest: str
    backend: str
    device: str
    pid: int
    rss_bytes: int
    context_length: int
    active_requests: int
    loaded_unix_ms: int
    capabilities: BackendCapabilities
    memory: MemoryEstimate
    sessions: int
    keep_alive_s: float
    expires_unix_ms: int
    pinned: bool
    gpu_layers: int
    kv_type: str
    def __init__(self, model: _Optional[str] = ..., digest: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., pid: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., context_length: _Optional[int] = ..., active_requests: _Optional[int] = ..., loaded_unix_ms: _Optional[int] = ..., capabilities: _Optional[_Union[BackendCapabilities, _Mapping]] = ..., memory: _Optional[_Union[MemoryEstimate, _Mapping]] = ..., sessions: _Optional[int] = ..., keep_alive_s: _Optional[float] = ..., expires_unix_ms: _Optional[int] = ..., pinned: _Optional[bool] = ..., gpu_layers: _Optional[int] = ..., kv_type: _Optional[str] = ...) -> None: ...

class BackendCapabilities(_message.Message):
    __slots__ = ("formats", "context_length", "max_sequences", "batching", "session_kv", "kv_tiers", "fork", "grammar", "sampling", "response_formats", "grammar_syntaxes", "tools", "infill", "max_logprobs", "tokenize", "embeddings", "kv_types")
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    BATCHING_FIELD_NUMBER: _ClassVar[int]
    SESSION_KV_FIELD_NUMBER: _ClassVar[int]
    KV_TIERS_FIELD_NUMBER: _ClassVar[int]
    FORK_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMATS_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_SYNTAXES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    INFILL_FIELD_NUMBER: _ClassVar[int]
    MAX_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    KV_TYPES_FIELD_NUMBER: _ClassVar[int]
    formats: _containers.RepeatedScalarFieldContainer[str]
    context_length: int
    max_sequences: int
    batching: bool
    session_kv: bool
    kv_tiers: bool
    fork: bool
    grammar: bool
    sampling: _containers.RepeatedScalarFieldContainer[str]
    response_formats: _containers.RepeatedScalarFieldContainer[str]
    grammar_syntaxes: _containers.RepeatedScalarFieldContainer[str]
    tools: bool
    infill: bool
    max_logprobs: int
    tokenize: bool
    embeddings: bool
    kv_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, formats: _Optional[_Iterable[str]] = ..., context_length: _Optional[int] = ..., max_sequences: _Optional[int] = ..., batching: _Optional[bool] = ..., session_kv: _Optional[bool] = ..., kv_tiers: _Optional[bool] = ..., fork: _Optional[bool] = ..., grammar: _Optional[bool] = ..., sampling: _Optional[_Iterable[str]] = ..., response_formats: _Optional[_Iterable[str]] = ..., grammar_syntaxes: _Optional[_Iterable[str]] = ..., tools: _Optional[bool] = ..., infill: _Optional[bool] = ..., max_logprobs: _Optional[int] = ..., tokenize: _Optional[bool] = ..., embeddings: _Optional[bool] = ..., kv_types: _Optional[_Iterable[str]] = ...) -> None: ...

class ListLoadedRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLoadedResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ...) -> None: ...

class UnloadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("model", "text", "chat", "infill", "add_special", "parse_special", "backend", "tools")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    INFILL_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_FIELD_NUMBER: _ClassVar[int]
    PARSE_SPECIAL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    model: str
    text: str
    chat: ChatMessages
    infill: Infill
    add_special: bool
    parse_special: bool
    backend: str
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    def __init__(self, model: _Optional[str] = ..., text: _Optional[str] = ..., chat: _Optional[_Union[ChatMessages, _Mapping]] = ..., infill: _Optional[_Union[Infill, _Mapping]] = ..., add_special: _Optional[bool] = ..., parse_special: _Optional[bool] = ..., backend: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("tokens", "pieces", "count")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    pieces: _containers.RepeatedScalarFieldContainer[bytes]
    count: int
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., pieces: _Optional[_Iterable[bytes]] = ..., count: _Optional[int] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("model", "tokens", "special", "backend")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    model: str
    tokens: _containers.RepeatedScalarFieldContainer[int]
    special: bool
    backend: str
    def __init__(self, model: _Optional[str] = ..., tokens: _Optional[_Iterable[int]] = ..., special: _Optional[bool] = ..., backend: _Optional[str] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class VersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionResponse(_message.Message):
    __slots__ = ("version", "api", "http_url")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    HTTP_URL_FIELD_NUMBER: _ClassVar[int]
    version: str
    api: str
    http_url: str
    def __init__(self, version: _Optional[str] = ..., api: _Optional[str] = ..., http_url: _Optional[str] = ...) -> None: ...

class HardwareRequest(_message.Message):
    __slots__ = ("model", "calibrate")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    calibrate: bool
    def __init__(self, model: _Optional[str] = ..., calibrate: _Optional[bool] = ...) -> None: ...

class BackendChoice(_message.Message):
    __slots__ = ("backend", "device", "available", "reasons", "fit", "memory_bytes", "gpu_layers", "calibrated_tokens_per_second", "variant", "aggregate_tokens_per_second", "streams", "fidelity")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    backend: str
    device: str
    available: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    fit: str
    memory_bytes: int
    gpu_layers: int
    calibrated_tokens_per_second: float
    variant: str
    aggregate_tokens_per_second: float
    streams: int
    fidelity: Fidelity
    def __init__(self, backend: _Optional[str] = ..., device: _Optional[str] = ..., available: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., fit: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., gpu_layers: _Optional[int] = ..., calibrated_tokens_per_second: _Optional[float] = ..., variant: _Optional[str] = ..., aggregate_tokens_per_second: _Optional[float] = ..., streams: _Optional[int] = ..., fidelity: _Optional[_Union[Fidelity, _Mapping]] = ...) -> None: ...

class Fidelity(_message.Message):
    __slots__ = ("measure", "agreement", "mean_kl", "perplexity", "perplexity_reference", "tokens", "reference", "error", "within_threshold", "threshold")
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MEAN_KL_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WITHIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    measure: str
    agreement: float
    mean_kl: float
    perplexity: float
    perplexity_reference: float
    tokens: int
    reference: str
    error: str
    within_threshold: bool
    threshold: float
    def __init__(self, measure: _Optional[str] = ..., agreement: _Optional[float] = ..., mean_kl: _Optional[float] = ..., perplexity: _Optional[float] = ..., perplexity_reference: _Optional[float] = ..., tokens: _Optional[int] = ..., reference: _Optional[str] = ..., error: _Optional[str] = ..., within_threshold: _Optional[bool] = ..., threshold: _Optional[float] = ...) -> None: ...

class IsaFeature(_message.Message):
    __slots__ = ("name", "reported", "usable", "note")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    USABLE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    reported: bool
    usable: bool
    note: str
    def __init__(self, name: _Optional[str] = ..., reported: _Optional[bool] = ..., usable: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class NvidiaGpu(_message.Message):
    __slots__ = ("index", "name", "vram_total_bytes", "vram_free_bytes", "driver", "compute_capability")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VRAM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    VRAM_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    vram_total_bytes: int
    vram_free_bytes: int
    driver: str
    compute_capability: str
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., vram_total_bytes: _Optional[int] = ..., vram_free_bytes: _Optional[int] = ..., driver: _Optional[str] = ..., compute_capability: _Optional[str] = ...) -> None: ...

class AcceleratorDevice(_message.Message):
    __slots__ = ("name", "full_name", "type", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    full_name: str
    type: str
    properties: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., full_name: _Optional[str] = ..., type: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("model_digest", "backend", "device", "backend_version", "decode_tokens_per_second", "prefill_tokens_per_second", "measured_unix_ms", "streams", "aggregate_tokens_per_second", "fidelity", "kv_type")
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MEASURED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FIDELITY_FIELD_NUMBER: _ClassVar[int]
    KV_TYPE_FIELD_NUMBER: _ClassVar[int]
    model_digest: str
    backend: str
    device: str
    backend_version: str
    decode_tokens_per_second: float
    prefill_tokens_per_second: float
    measured_unix_ms: int
    streams: int
    aggregate_tokens_per_second: float
    fidelity: Fidelity
    kv_type: str
    def __init__(self, model_digest: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., backend_version: _Optional[str] = ..., decode_tokens_per_second: _Optional[float] = ..., prefill_tokens_per_second: _Optional[float] = ..., measured_unix_ms: _Optional[int] = ..., streams: _Optional[int] = ..., aggregate_tokens_per_second: _Optional[float] = ..., fidelity: _Optional[_Union[Fidelity, _Mapping]] = ..., kv_type: _Optional[str] = ...) -> None: ...

class HardwareResponse(_message.Message):
    __slots__ = ("os", "arch", "cpu", "cpu_cores", "cpu_threads", "cpu_features", "memory_total_bytes", "memory_available_bytes", "gpus", "backends", "isa", "nvidia_gpus", "openvino_devices", "onnx_providers", "llama_gpu_offload", "notes", "model", "calibrations")
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    ISA_FIELD_NUMBER: _ClassVar[int]
    NVIDIA_GPUS_FIELD_NUMBER: _ClassVar[int]
    OPENVINO_DEVICES_FIELD_NUMBER: _ClassVar[int]
    ONNX_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    LLAMA_GPU_OFFLOAD_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CALIBRATIONS_FIELD_NUMBER: _ClassVar[int]
    os: str
    arch: str
    cpu: str
    cpu_cores: int
    cpu_threads: int
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    memory_total_bytes: int
    memory_available_bytes: int
    gpus: _containers.RepeatedScalarFieldContainer[str]
    backends: _containers.RepeatedCompositeFieldContainer[BackendChoice]
    isa: _containers.RepeatedCompositeFieldContainer[IsaFeature]
    nvidia_gpus: _containers.RepeatedCompositeFieldContainer[NvidiaGpu]
    openvino_devices: _containers.RepeatedCompositeFieldContainer[AcceleratorDevice]
    onnx_providers: _containers.RepeatedScalarFieldContainer[str]
    llama_gpu_offload: bool
    notes: _containers.RepeatedScalarFieldContainer[str]
    model: str
    calibrations: _containers.RepeatedCompositeFieldContainer[Calibration]
    def __init__(self, os: _Optional[str] = ..., arch: _Optional[str] = ..., cpu: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., cpu_threads: _Optional[int] = ..., cpu_features: _Optional[_Iterable[str]] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[str]] = ..., backends: _Optional[_Iterable[_Union[BackendChoice, _Mapping]]] = ..., isa: _Optional[_Iterable[_Union[IsaFeature, _Mapping]]] = ..., nvidia_gpus: _Optional[_Iterable[_Union[NvidiaGpu, _Mapping]]] = ..., openvino_devices: _Optional[_Iterable[_Union[AcceleratorDevice, _Mapping]]] = ..., onnx_providers: _Optional[_Iterable[str]] = ..., llama_gpu_offload: _Optional[bool] = ..., notes: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., calibrations: _Optional[_Iterable[_Union[Calibration, _Mapping]]] = ...) -> None: ...
