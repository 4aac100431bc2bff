from __future__ import annotations

import pytest

from edged.common.errors import InvalidArgument
from edged.models_registry import ModelRef, blob_name, parse_digest, parse_model_ref
from edged.models_registry.names import sanitize_name, split_model_ref

HEX = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.mark.parametrize(
    "text",
    [f"sha256:{HEX}", HEX, f"sha256:{HEX.upper()}", f"SHA256:{HEX}", f"sha256-{HEX}", f" {HEX}\n"],
)
def test_parse_digest_accepts_and_normalizes(text: str) -> None:
    assert parse_digest(text) == f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "64 hex digits"),
        ("sha256:abc", "expected 64 hex digits, got 3"),
        ("sha256:" + "a" * 63, "got 63"),
        ("sha256:" + "a" * 65, "got 65"),
        ("a" * 63, "got 63"),
        ("sha256:" + "g" * 64, "hex digits"),
        ("sha512:" + "a" * 128, "only sha256"),
        ("md5:" + "a" * 32, "only sha256"),
        ("../x", "got 4"),
        ("sha256:../" + "a" * 61, "hex digits"),
        ("sha256:" + "a" * 63 + "/", "hex digits"),
        ("sha256:" + "a" * 63 + "\x00", "hex digits"),
        ("sha256::" + "a" * 63, "hex digits"),
    ],
)
def test_parse_digest_rejects(text: str, hint: str) -> None:
    with pytest.raises(InvalidArgument, match="digest") as info:
        parse_digest(text)
    assert hint in str(info.value)


def test_blob_name() -> None:
    assert blob_name(HEX.upper()) == f"sha256-{HEX}"
    with pytest.raises(InvalidArgument):
        blob_name("sha256:../../etc/passwd")


@pytest.mark.parametrize(
    ("text", "name", "tag"),
    [
        ("smollm2", "smollm2", "latest"),
        ("smollm2:135m-q4_1", "smollm2", "135m-q4_1"),
        ("owner/repo", "owner/repo", "latest"),
        ("owner/repo:v1.0", "owner/repo", "v1.0"),
        ("a_b.c-d:Q4_K_M", "a_b.c-d", "Q4_K_M"),
        ("0:_", "0", "_"),
        ("a" * 64 + ":" + "T" * 128, "a" * 64, "T" * 128),
    ],
)
def test_parse_model_ref(text: str, name: str, tag: str) -> None:
    ref = parse_model_ref(text)
    assert (ref.name, ref.tag) == (name, tag)
    assert str(ref) == f"{name}:{tag}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        ".",
        "..",
        "../x",
        "a/../b",
        "a/./b",
        "./a",
        "/abs",
        "/etc/passwd",
        "a/b/c",
        "a/",
        "a//b",
        "a\\b",
        "..\\x",
        "a\x00b",
        "a:",
        ":tag",
        "a:b:c",
        "a:.hidden",
        "a:-x",
        "a:t/x",
        "a:..",
        "a" * 65,
        "a:" + "t" * 129,
        "-a",
        ".a",
        "_a",
        "a b",
        "a:b c",
        "model.json",
        "owner/x.json",
        "ümlaut",
    ],
)
def test_parse_model_ref_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_model_ref(text)


def test_uppercase_name_gets_a_hint() -> None:
    with pytest.raises(InvalidArgument, match="did you mean 'smollm2'"):
        parse_model_ref("SmolLM2")


def test_split_model_ref_reports_whether_a_tag_was_given() -> None:
    assert split_model_ref("x") == ("x", None)
    assert split_model_ref("x:latest") == ("x", "latest")


def test_model_ref_validates_on_construction() -> None:
    with pytest.raises(InvalidArgument):
        ModelRef("../etc", "latest")
    with pytest.raises(InvalidArgument):
        ModelRef("ok", "../x")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct.q4_1"),
        ("My Model (final).GGUF", "my-model-final"),
        ("...gguf", "model"),
        ("", "model"),
        ("x.json.gguf", "x"),
        ("日本語.gguf", "model"),
        ("a" * 100 + ".gguf", "a" * 64),
    ],
)
def test_sanitize_name(raw: str, expected: str) -> None:
    got = sanitize_name(raw)
    assert got == expected
    parse_model_ref(got)
