"""The messages between the daemon and a worker process, both ways.

The worker pipe (a ``multiprocessing`` connection, pickled objects) carries
only these types: the daemon's :class:`~edged.daemon.workers.WorkerHandle`
sends :data:`ToWorker` messages and reads :data:`FromWorker` ones, and the
worker loop (:mod:`edged.backends.worker`) does the opposite. A call that
expects an answer (:data:`Call`) carries a ``call_id`` its reply repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edged.backends.base import Embeddings, EmbedInput, Event, Job, ModelDescription

# ------------------------------------------------------------ daemon -> worker


@dataclass(frozen=True)
class Submit:
    """Queue a job; its events come back as :class:`Events`."""

    job: Job


@dataclass(frozen=True)
class Cancel:
    """Stop a job (it ends with finish reason ``cancelled``)."""

    request_id: int


@dataclass(frozen=True)
class DropSession:
    """Forget a session's KV."""

    session_id: str


@dataclass(frozen=True)
class ForkSession:
    """Copy a session's KV to a new session; answered by :class:`Forked`."""

    call_id: int
    source_id: str
    new_id: str


@dataclass(frozen=True)
class ListKv:
    """Ask where each session's KV is; answered by :class:`KvLocations`."""

    call_id: int


@dataclass(frozen=True)
class Tokenize:
    """Tokens of raw ``text``, or of ``job``'s prompt (chat or infill, as it would
    be evaluated); answered by :class:`Tokens` (with each token's bytes)."""

    call_id: int
    text: str | None = None
    job: Job | None = None
    add_special: bool = False
    parse_special: bool = False


@dataclass(frozen=True)
class Detokenize:
    """Each token's bytes; answered by :class:`Tokens`."""

    call_id: int
    tokens: list[int]
    special: bool = False


@dataclass(frozen=True)
class Embed:
    """Pooled vectors of ``inputs`` (an embedding model); answered by :class:`Embedded`."""

    call_id: int
    inputs: list[EmbedInput]
    truncate: bool = True
    normalize: bool = True


@dataclass(frozen=True)
class Stop:
    """Flush, free the model and exit."""


Call = ForkSession | ListKv | Tokenize | Detokenize | Embed
ToWorker = (
    Submit | Cancel | DropSession | ForkSession | ListKv | Tokenize | Detokenize | Embed | Stop
)

# ------------------------------------------------------------ worker -> daemon


@dataclass(frozen=True)
class Ready:
    """The model loaded."""

    description: ModelDescription


@dataclass(frozen=True)
class LoadFailed:
    """The model did not load (the worker exits); ``error`` names an edged error class."""

    error: str
    message: str


@dataclass(frozen=True)
class Events:
    """Chunks, ends and failures of requests, in order."""

    events: list[Event]


@dataclass(frozen=True)
class StepFailed:
    """A step failed in a way that fails every request running on the worker."""

    error: str
    message: str


@dataclass(frozen=True)
class Forked:
    """Where a :class:`ForkSession`'s copy lives: "resident", "ram", "disk" or "none"."""

    call_id: int
    location: str


@dataclass(frozen=True)
class KvLocations:
    """Answer to :class:`ListKv`: session id -> "resident", "ram" or "disk", and
    the bytes of saved session KV in each of those tiers."""

    call_id: int
    locations: dict[str, str]
    tier_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Tokens:
    """Answer to :class:`Tokenize` / :class:`Detokenize`: token ids and their bytes."""

    call_id: int
    tokens: list[int]
    pieces: list[bytes]


@dataclass(frozen=True)
class Embedded:
    """Answer to :class:`Embed`."""

    call_id: int
    result: Embeddings


@dataclass(frozen=True)
class CallFailed:
    """A call raised an edged error (``error`` names its class)."""

    call_id: int
    error: str
    message: str


Reply = Forked | KvLocations | Tokens | Embedded | CallFailed
FromWorker = (
    Ready | LoadFailed | Events | StepFailed | Forked | KvLocations | Tokens | Embedded | CallFailed
)
