"""Ollama Modelfiles and parameters mapped onto edged's model defaults."""

from __future__ import annotations

import dataclasses

import pytest

from edged.common.errors import InvalidArgument
from edged.models_registry import Store, model_params, modelfile
from edged.models_registry.manifest import CorruptManifest, Manifest
from tests.unit.registry.test_registry_store import add_model


def test_a_modelfile_with_every_form() -> None:
    parsed = modelfile.parse(
        "# comment\n"
        "from smollm2:135m-q4_1\n"
        'SYSTEM """\nYou are terse.\nVery terse.\n"""\n'
        "PARAMETER temperature 0.2\n"
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER stop User:\n"
        'TEMPLATE """{{ .System }} {{ .Prompt }}"""\n'
        "LICENSE MIT\n"
    )
    assert parsed.source == "smollm2:135m-q4_1"
    assert parsed.system == "You are terse.\nVery terse."
    assert parsed.parameters == (
        ("temperature", "0.2"),
        ("stop", '"<|im_end|>"'),
        ("stop", "User:"),
    )
    assert any("TEMPLATE is ignored" in n for n in parsed.notes)
    assert any("LICENSE is ignored" in n for n in parsed.notes)
    params = model_params.from_pairs(list(parsed.parameters))
    assert params.sampling == (("temperature", 0.2),)
    assert params.stop == ("<|im_end|>", "User:")


def test_quoted_system_and_one_line_block() -> None:
    parsed = modelfile.parse('FROM a\nSYSTEM "Say \\"hi\\"."\n')
    assert parsed.system == 'Say "hi".'
    assert modelfile.parse('FROM a\nSYSTEM """one line"""\n').system == "one line"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("SYSTEM hi\n", "no FROM line"),
        ("FROM a\nFROM b\n", "line 2: a second FROM"),
        ("FROM a\nADAPTER ./lora.gguf\n", "line 2: ADAPTER is not supported"),
        ("FROM a\nMESSAGE user hi\n", "MESSAGE is not supported"),
        ("FROM a\nBOGUS x\n", "unknown instruction 'BOGUS'"),
        ('FROM a\nSYSTEM """never closed\n', "never closed"),
        ('FROM a\nSYSTEM "unclosed\n', "not closed"),
        ("FROM a\nPARAMETER temperature\n", "needs a name and a value"),
        ("FROM\n", "has no value"),
        ("FROM a\n" + "#" * (2 << 20), "larger than"),
    ],
)
def test_bad_modelfiles_name_the_problem(text: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        modelfile.parse(text)


def test_ollama_params_map_onto_edged_defaults() -> None:
    params = model_params.from_mapping(
        {
            "temperature": 0.7,
            "top_k": 40,
            "top_p": 0.9,
            "min_p": 0.05,
            "repeat_penalty": 1.1,
            "num_predict": -1,
            "num_ctx": 8192,
            "stop": ["<|end|>", "<|end|>", "User:"],
            "mirostat": 2,
            "num_gpu": 99,
        }
    )
    assert dict(params.sampling) == {
        "temperature": 0.7,
        "top_k": 40.0,
        "top_p": 0.9,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "max_tokens": 0.0,  # Ollama's -1: until the context is full
    }
    assert params.stop == ("<|end|>", "User:")
    assert params.context_length == 8192
    assert params.ignored == ("mirostat", "num_gpu")


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"temperature": True}, "temperature must be a number"),
        ({"top_p": 2}, "top_p must be between"),
        ({"top_k": 1.5}, "whole number"),
        ({"num_ctx": 10}, "num_ctx must be between"),
        ({"temperature": float("nan")}, "finite"),
        ({"stop": [""]}, "non-empty"),
        ({"stop": ["x"] * 17}, "at most 16"),
        ({"stop": 5}, "must be a list"),
    ],
)
def test_bad_params_are_refused(values: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidArgument, match=says):
        model_params.from_mapping(values)


def test_manifest_stop_defaults_round_trip(store: Store) -> None:
    m = add_model(store, "a", b"weights")
    assert "stop" not in m.to_dict()  # unset: manifests read as older edged wrote them
    with_stop = dataclasses.replace(m, stop=("5", "User:"))
    assert Manifest.from_json(with_stop.to_json()).stop == ("5", "User:")
    for bad in (["x"] * 17, [""], "5", [5]):
        raw = {**with_stop.to_dict(), "stop": bad}
        with pytest.raises(CorruptManifest, match="stop"):
            Manifest.from_dict(raw)
