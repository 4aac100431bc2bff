"""Fill-in-the-middle on llama.cpp. SmolLM2 has no FIM tokens, so the plumbing is
tested on a copy of its GGUF whose metadata declares some (written with the
``gguf`` package); the refusal is tested on the original."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edged.v1 import edged_pb2 as pb
from harness.daemon import Daemon, clone_store, start_daemon
from tests.integration.helpers import FIM, collect, write_fim_copy  # noqa: F401  (re-exported)

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def fim(tmp_path_factory: pytest.TempPathFactory, fim_store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("fim")
    clone_store(fim_store, root / "data")
    d = start_daemon(root)
    yield d
    d.stop()


def tokens(d: Daemon, text: str) -> list[int]:
    return list(
        d.models.Tokenize(pb.TokenizeRequest(model="smolfim", text=text), timeout=60).tokens
    )


def infill(**fields: object) -> pb.Infill:
    return pb.Infill(**fields)  # type: ignore[arg-type]


def generate(
    d: Daemon, fill: pb.Infill, regex: str = "", **sampling: object
) -> tuple[str, pb.GenerationStats]:
    req = pb.GenerateRequest(
        model="smolfim",
        infill=fill,
        sampling=pb.SamplingParams(**{"max_tokens": 24, "temperature": 0.0, **sampling}),
    )  # type: ignore[arg-type]
    if regex:
        req.response_format.type = pb.ResponseFormat.TYPE_REGEX
        req.response_format.regex = regex
    text, stats, _ = collect(d.inference.Generate(req, timeout=120))
    return text, stats


def test_the_exact_tokens_of_an_infill_prompt(fim: Daemon) -> None:
    """As llama-server's format_prompt_infill lays them out: repo and files first,
    then prefix and typed text, suffix, middle; text is never read as control tokens."""
    fill = infill(
        prefix="def add(a, b):\n    ",
        prompt="return",
        suffix="\n\nprint(add(1, 2))\n",
        extra=[pb.InfillContext(filename="utils.py", text="X = 1  # <|im_end|>\n")],
    )
    got = fim.models.Tokenize(pb.TokenizeRequest(model="smolfim", infill=fill), timeout=60).tokens
    expected = [
        FIM["rep"], *tokens(fim, "myproject\n"),
        FIM["sep"], *tokens(fim, "utils.py\n"), *tokens(fim, "X = 1  # <|im_end|>\n"),
        FIM["sep"], *tokens(fim, "filename\n"),
        FIM["pre"], *tokens(fim, "def add(a, b):\n    "), *tokens(fim, "return"),
        FIM["suf"], *tokens(fim, "\n\nprint(add(1, 2))\n"),
        FIM["mid"],
    ]  # fmt: skip
    assert list(got) == expected
    _, stats = generate(fim, fill, max_tokens=2)
    assert stats.prompt_tokens == len(expected)
    shown = fim.models.Show(pb.ModelRef(model="smolfim"), timeout=60)
    assert "infill" in shown.capabilities


def test_a_model_without_fim_tokens_is_refused(fim: Daemon) -> None:
    req = pb.GenerateRequest(model="smollm2", infill=infill(prefix="a", suffix="b"))
    with pytest.raises(grpc.RpcError) as err:
        collect(fim.inference.Generate(req, timeout=60))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not trained for infill" in (err.value.details() or "")


def test_consecutive_requests_on_one_file_reuse_their_common_prefix(fim: Daemon) -> None:
    code = "".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(40))
    _, first = generate(fim, infill(prefix=code + "def g(", suffix="\n"), max_tokens=4)
    _, second = generate(fim, infill(prefix=code + "def g(y", suffix="\n"), max_tokens=4)
    assert first.cached_prompt_tokens == 0
    common = len(tokens(fim, code)) // 2
    assert second.cached_prompt_tokens > common, (second.cached_prompt_tokens, common)


def test_time_budget_ends_at_a_newline(fim: Daemon) -> None:
    text, stats = generate(
        fim,
        infill(prefix="x = [\n", suffix="]\n", t_max_predict_ms=1),
        regex="([a-z]{1,3}\n){6}",
        max_tokens=48,
    )
    assert stats.finish_reason == pb.FINISH_REASON_TIME_LIMIT
    assert text.endswith("\n") and text.count("\n") < 6


def test_a_less_indented_line_ends_the_block(fim: Daemon) -> None:
    text, stats = generate(
        fim,
        infill(prefix="if x:\n", suffix="\n", n_indent=4),
        regex="a\n    b\n  c\n",
        max_tokens=48,
    )
    assert text == "a\n    b\n  " and stats.finish_reason == pb.FINISH_REASON_STOP
