"""Remote models: a name in the store that an OpenAI-compatible upstream serves.

``edged remote add NAME URL`` writes a model whose one variant has the format
``remote``: its single file is a small JSON document (:class:`RemoteSpec`)
naming the upstream's base URL, the upstream's model id, the token file (its
path, never the token) and what the upstream declared when it was probed
(context length, tools, JSON output, embeddings). The store keeps it like any
other blob, so listing, showing and removing a remote model are the store's
ordinary operations.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edged.common.errors import FailedPrecondition, InvalidArgument

from .manifest import ROLE_MODEL, Manifest, ManifestFile, Variant
from .names import ModelRef
from .store import Store

FORMAT_REMOTE = "remote"
REMOTE_BACKEND = "remote"  # what selection, `edged ps` and stats call the upstream client
REMOTE_FILE = "remote.json"
MAX_SPEC_BYTES = 64 << 10


@dataclass(frozen=True)
class Probed:
    """What the upstream declared for the model when it was probed."""

    context_length: int = 0  # 0: the upstream did not say
    tools: bool = False
    json_output: bool = False  # response_format json_object / json_schema
    embeddings: bool = False
    embedding_dimensions: int = 0
    owned_by: str = ""
    server: str = ""  # what the upstream says it is ("edged", "vllm", "llama.cpp", ...)
    # how each capability was learnt ("declared by /v1/models", "probe: ...")
    evidence: tuple[str, ...] = ()
    probed_unix_ms: int = 0


@dataclass(frozen=True)
class RemoteSpec:
    url: str  # the upstream's OpenAI base URL, ending in /v1, no credentials
    model: str  # the upstream's model id
    token_file: str = ""  # absolute path of a 0600 file holding the bearer token
    insecure: bool = False  # skip TLS verification (never the default)
    probed: Probed = field(default_factory=Probed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", check_url(self.url))
        if not self.model or len(self.model) > 256:
            raise InvalidArgument("the upstream model id must be 1 to 256 characters")

    @property
    def host(self) -> str:
        """host[:port] of the upstream (what errors and `edged show` name)."""
        return urllib.parse.urlsplit(self.url).netloc

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RemoteSpec:
        try:
            d = json.loads(data)
            probed = dict(d.get("probed") or {})
            probed["evidence"] = tuple(probed.get("evidence", ()))
            return cls(
                url=str(d["url"]),
                model=str(d["model"]),
                token_file=str(d.get("token_file", "")),
                insecure=bool(d.get("insecure", False)),
                probed=Probed(**probed),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise FailedPrecondition(f"the remote model's settings cannot be read: {exc}") from exc


def check_url(url: str) -> str:
    """An upstream base URL: http(s), a host, no user:password, no query; ``/v1``
    is added when the path does not end with it."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as exc:
        raise InvalidArgument(f"the upstream URL is not valid: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            "the upstream URL must be http://HOST[:PORT][/PATH] or https://..., "
            "for example http://gpu-box:8000/v1"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(
            "the upstream URL must not carry credentials; put the token in a 0600 file "
            "and pass --token-file"
        )
    if parts.query or parts.fragment:
        raise InvalidArgument("the upstream URL must not have a query or fragment")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def remote_variant(manifest: Manifest) -> Variant | None:
    """The model's remote variant, or None for a local model."""
    return manifest.variant(FORMAT_REMOTE)


def read_spec(store: Store, manifest: Manifest) -> RemoteSpec:
    variant = remote_variant(manifest)
    if variant is None:
        raise InvalidArgument(f"{manifest.ref} is not a remote model")
    path = store.blob_path(variant.main.digest)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise FailedPrecondition(
            f"the settings of remote model {manifest.ref} are missing ({exc.strerror}); "
            f"add it again with `edged remote add`"
        ) from None
    return RemoteSpec.from_json(data)


def spec_path(store: Store, manifest: Manifest) -> Path:
    variant = remote_variant(manifest)
    if variant is None:
        raise InvalidArgument(f"{manifest.ref} is not a remote model")
    return store.blob_path(variant.main.digest)


def put_remote(store: Store, ref: ModelRef, spec: RemoteSpec, *, replace: bool = False) -> Manifest:
    """Store ``spec`` as the model ``ref`` (AlreadyExists-like refusal for a local
    model of that name, or for a remote one unless ``replace``)."""
    data = spec.to_json()
    digest = store.write_blob([data])
    variant = Variant.of(
        "remote",
        FORMAT_REMOTE,
        [ManifestFile(ROLE_MODEL, digest, len(data), REMOTE_FILE)],
        source=spec.url,
    )
    fresh = Manifest(
        name=ref.name,
        tag=ref.tag,
        variants=(variant,),
        source=spec.url,
        created_unix_ms=time.time_ns() // 1_000_000,
        architecture="remote",
        context_length=spec.probed.context_length,
        has_chat_template=True,  # the upstream applies its own template
    )

    def change(current: Manifest | None) -> Manifest:
        if current is not None and remote_variant(current) is None:
            raise FailedPrecondition(
                f"{ref} is a local model; choose another name for the remote one "
                "(or remove it first with `edged rm`)"
            )
        if current is not None and not replace:
            raise FailedPrecondition(
                f"a remote model called {ref} already exists; remove it first "
                "(`edged remote rm`) or pass --replace"
            )
        return fresh

    return store.update_manifest(ref, change, replace_corrupt=False)


def list_remotes(store: Store) -> list[tuple[ModelRef, RemoteSpec]]:
    out = []
    for ref, manifest in store.list_manifests():
        if remote_variant(manifest) is not None:
            out.append((ref, read_spec(store, manifest)))
    return out


def describe(spec: RemoteSpec) -> dict[str, Any]:
    """What `edged remote list` / `edged show` print (no token, only whether one is used)."""
    return {
        "url": spec.url,
        "upstream_model": spec.model,
        "token": "from " + spec.token_file if spec.token_file else "none",
        "tls_verified": spec.url.startswith("https://") and not spec.insecure,
        "context_length": spec.probed.context_length,
        "tools": spec.probed.tools,
        "json_output": spec.probed.json_output,
        "embeddings": spec.probed.embeddings,
        "server": spec.probed.server,
        "evidence": list(spec.probed.evidence),
    }
