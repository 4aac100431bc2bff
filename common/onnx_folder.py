"""The rules of an ONNX Runtime GenAI model folder, in one place.

A folder is a variant whose main file is ``genai_config.json``; that config
names every model file the runtime loads (any ``"filename"`` value, at any
depth). The tokenizer files and a chat template sit beside it. The registry
(import, pull, hub), the memory estimate and the ONNX engine all read folders
through these functions, so a folder means the same thing to each of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edged.common.errors import InvalidModelFile
from edged.common.jsonfile import parse_json, positive_int, read_json_object, short_str

GENAI_CONFIG = "genai_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
DATA_SUFFIX = ".data"  # a model file's external weights: "model.onnx" + ".data"
# Tokenizer and chat files taken when present; none of them is required.
OPTIONAL_FILES = (
    "tokenizer.json",
    TOKENIZER_CONFIG,
    CHAT_TEMPLATE,
    "special_tokens_map.json",
    "added_tokens.json",
)
MAX_CONFIG_BYTES = 1 << 20
MAX_TOKENIZER_CONFIG_BYTES = 16 << 20
WEIGHT_SUFFIXES = (".onnx", ".data", ".onnx_data", ".bin")


def is_onnx_folder(path: Path) -> bool:
    return path.is_dir() and (path / GENAI_CONFIG).is_file()


def parse_config(data: bytes) -> dict[str, Any]:
    """A genai_config.json's bytes, checked to be an object with a 'model' section."""
    config = parse_json(data, GENAI_CONFIG, MAX_CONFIG_BYTES)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise InvalidModelFile(f"{GENAI_CONFIG} has no 'model' section")
    return config


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's genai_config.json (see :func:`parse_config`)."""
    config = read_json_object(folder / GENAI_CONFIG, MAX_CONFIG_BYTES)
    if not isinstance(config.get("model"), dict):
        raise InvalidModelFile(f"{GENAI_CONFIG} has no 'model' section")
    return config


def read_tokenizer_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json, or {} when the folder has none."""
    path = folder / TOKENIZER_CONFIG
    if not path.is_file():
        return {}
    return read_json_object(path, MAX_TOKENIZER_CONFIG_BYTES)


def model_section(config: dict[str, Any]) -> dict[str, Any]:
    model = config.get("model")
    return model if isinstance(model, dict) else {}


def decoder_section(config: dict[str, Any]) -> dict[str, Any]:
    decoder = model_section(config).get("decoder")
    return decoder if isinstance(decoder, dict) else {}


def architecture(config: dict[str, Any]) -> str:
    return short_str(model_section(config).get("type"))


def context_length(config: dict[str, Any]) -> int:
    """The model's training context (0 when the config does not say)."""
    return positive_int(model_section(config).get("context_length"))


def vocab_size(config: dict[str, Any]) -> int:
    return positive_int(model_section(config).get("vocab_size"))


def named_files(config: dict[str, Any]) -> Iterator[str]:
    """Every value of a "filename" key, anywhere in the config (unchecked names:
    the caller validates them as relative paths inside the variant)."""
    yield from _filenames(config)


def _filenames(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename":
                if not isinstance(value, str):
                    raise InvalidModelFile(f"{GENAI_CONFIG} has a 'filename' that is not a string")
                yield value
            else:
                yield from _filenames(value)
    elif isinstance(node, list):
        for item in node:
            yield from _filenames(item)


def optional_files(named: list[str]) -> list[str]:
    """The files taken when the source has them: external data, then tokenizer files."""
    return list(dict.fromkeys([n + DATA_SUFFIX for n in named] + list(OPTIONAL_FILES)))


def token_text(value: object) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return ""


def has_chat_template(tokenizer_config: dict[str, Any]) -> bool:
    return isinstance(tokenizer_config.get("chat_template"), str)
