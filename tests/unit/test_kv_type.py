"""KV cache types: settings, config, the memory estimate, saved-state keys and
the refusal on backends without them (no real model)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edged.backends import base
from edged.backends.base import KV_TYPES, LoadSpec, refuse_kv_type
from edged.backends.kvstore import state_key
from edged.backends.memory import KV_TYPE_BYTES, kv_bytes
from edged.backends.registry import BACKENDS, backend_info
from edged.common.errors import FailedPrecondition, InvalidArgument
from edged.common.model_facts import ModelFacts
from edged.daemon.config import load_engine
from edged.daemon.scheduler import LoadOptions, ResolvedModel, Scheduler
from edged.daemon.services.models import settings_from, settings_to
from edged.models_registry import settings as registry_settings
from edged.models_registry.settings import ModelSettings
from edged.v1 import edged_pb2 as pb


def test_the_registry_knows_the_same_kv_types() -> None:
    assert registry_settings.KV_TYPES == KV_TYPES == tuple(KV_TYPE_BYTES)


def test_edged_kv_type_is_read_and_checked() -> None:
    assert load_engine({}).kv_type == "f16"
    assert load_engine({"EDGED_KV_TYPE": "Q8_0"}).kv_type == "q8_0"
    with pytest.raises(ValueError, match="EDGED_KV_TYPE must be one of f16, q8_0, q4_0"):
        load_engine({"EDGED_KV_TYPE": "q2_k"})


def test_model_setting_round_trips_through_json_and_the_wire() -> None:
    s = ModelSettings(kv_type="q4_0")
    assert s.to_json() == {"kv_type": "q4_0"}
    assert ModelSettings.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert settings_from(settings_to(s)) == s
    assert settings_from(pb.ModelSettings(kv_type=" Q8_0 ")).kv_type == "q8_0"
    assert ModelSettings().to_json() == {}
    with pytest.raises(InvalidArgument, match="KV cache type must be one of"):
        ModelSettings(kv_type="int3")
    with pytest.raises(InvalidArgument, match="kv_type has the wrong type"):
        ModelSettings.from_json({"kv_type": 8})


FACTS = ModelFacts(
    weights_bytes=100 << 20,
    n_layer=30,
    n_head_kv=3,
    head_dim_k=64,
    head_dim_v=64,
    context_train=8192,
    n_vocab=49152,
    n_embd=576,
)


def test_memory_estimate_scales_with_the_kv_type() -> None:
    def kv(t: str) -> int:
        return kv_bytes(FACTS, context_length=4096, sequences=4, backend="llama.cpp", kv_type=t)

    assert kv("f16") == 30 * 4096 * 4 * 3 * 128 * 2
    assert kv("q8_0") == int(kv("f16") * 34 / 64)
    assert kv("q4_0") == int(kv("f16") * 18 / 64)


def test_saved_states_are_keyed_by_kv_type() -> None:
    """A state saved from a q8_0 cache lives under another key than an f16 one,
    so it is never restored into a cache of another type."""
    keys = {
        t: state_key("sha256:" + "ab" * 32, context=4096, streams=4, template="t", kv_type=t)
        for t in KV_TYPES
    }
    assert len(set(keys.values())) == len(KV_TYPES)
    again = state_key("sha256:" + "ab" * 32, context=4096, streams=4, template="t", kv_type="f16")
    assert again == keys["f16"]


def test_backends_declare_their_kv_types() -> None:
    offered = {info.name: info.kv_types for info in BACKENDS}
    assert offered["llama.cpp"] == KV_TYPES
    for info in BACKENDS:
        assert "f16" in info.kv_types and set(info.kv_types) <= set(KV_TYPES)
    assert base.Capabilities("x", "cpu", (), 1, 1, False, False).kv_types == ("f16",)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backends_without_kv_quantization_refuse_it(backend: str) -> None:
    info = backend_info(backend)
    refuse_kv_type(info.name, info.kv_types, "f16")
    with pytest.raises(FailedPrecondition, match=f"{info.name} cannot hold a q8_0 KV cache"):
        refuse_kv_type(info.name, info.kv_types, "q8_0")
    with pytest.raises(InvalidArgument):
        refuse_kv_type(info.name, info.kv_types, "bogus")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_their_engines_refuse_before_loading(backend: str) -> None:
    """The engine checks the spec first: no library or file is touched."""
    module = {"onnxruntime": "onnx", "openvino": "openvino"}[backend]
    engine_path = backend_info(backend).engine
    mod_name, _, cls_name = engine_path.partition(":")
    engine = pytest.importorskip(mod_name)
    spec = LoadSpec("/nonexistent", "sha256:" + "0" * 64, 512, 1, kv_type="q4_0")
    with pytest.raises(FailedPrecondition, match="cannot hold a q4_0 KV cache"):
        getattr(engine, cls_name)(spec)
    assert mod_name.startswith(f"edged.backends.{module}.")


def _scheduler(kv_type: str) -> Scheduler:
    cfg = dataclasses.replace(load_engine({}), kv_type=kv_type)
    return Scheduler(cfg, lambda *a: None)  # type: ignore[arg-type,return-value]


def model(backend: str) -> ResolvedModel:
    return ResolvedModel("m:latest", "sha256:" + "cd" * 32, "/m", "gguf", backend=backend)


def test_scheduler_picks_the_kv_type_for_a_load() -> None:
    s = _scheduler("q8_0")
    # EDGED_KV_TYPE where the backend offers it, else the backend's own
    assert s._kv_type(model("llama.cpp"), LoadOptions()) == "q8_0"
    assert s._kv_type(model("onnxruntime"), LoadOptions()) == "f16"
    # the model's setting is strict
    assert s._kv_type(model("llama.cpp"), LoadOptions(kv_type="q4_0")) == "q4_0"
    with pytest.raises(FailedPrecondition, match="onnxruntime cannot hold a q4_0 KV cache"):
        s._kv_type(model("onnxruntime"), LoadOptions(kv_type="q4_0"))
    spec = s._spec(model("llama.cpp"), 1024, 2, kv_type="q4_0")
    assert spec.kv_type == "q4_0"
    assert s._spec(model("llama.cpp"), 1024, 2).kv_type == "f16"
