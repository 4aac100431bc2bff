"""The interactive loop, driven with injected input and output."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import grpc
import pytest

from edged.daemon.cli import run
from edged.daemon.client import Client, connect
from edged.v1 import edged_pb2 as pb

from .conftest import FakeDaemon


def feed(*lines: str | type[BaseException]) -> Callable[[str], str]:
    """A fake input(): returns each line, raises each exception class, then EOF."""
    items = iter(lines)
    prompts: list[str] = []

    def read_line(prompt: str) -> str:
        prompts.append(prompt)
        item = next(items, EOFError)
        if isinstance(item, str):
            return item
        raise item()

    read_line.prompts = prompts  # type: ignore[attr-defined]
    return read_line


@pytest.fixture
def client(fake: FakeDaemon) -> Iterator[Client]:
    with connect(autostart=False) as c:
        yield c


def repl(
    client: Client,
    read_line: Callable[[str], str],
    out: io.StringIO,
    *,
    err: io.StringIO | None = None,
    system: str = "",
    verbose: bool = False,
) -> int:
    return run.repl(
        client,
        "m",
        system=system,
        sampling=pb.SamplingParams(),
        read_line=read_line,
        out=out,
        err=err if err is not None else io.StringIO(),
        verbose=verbose,
    )


def test_chat_commands_and_cleanup(fake: FakeDaemon, client: Client) -> None:
    out = io.StringIO()
    read_line = feed("hello", "", "/help", "/clear", "again", "/what", "/bye", "never read")
    assert repl(client, read_line, out, system="be kind") == 0
    text = out.getvalue()
    assert text.count("Hello world\n\n") == 2
    assert "/clear" in text and "Available commands" in text
    assert "Cleared session context.\n" in text
    assert "Unknown command '/what'. Type /? for help\n" in text
    assert read_line.prompts == [">>> "] * 7  # type: ignore[attr-defined]
    created = fake.requests("Create")
    assert [(c.model, c.system_prompt) for c in created] == [("m", "be kind")] * 2
    sends = fake.requests("Send")
    assert [s.content for s in sends] == ["hello", "again"]
    assert sends[0].session_id != sends[1].session_id
    deleted = [d.session_id for d in fake.requests("Delete")]
    assert deleted == [sends[0].session_id, sends[1].session_id]
    assert fake.sessions == set()


class InterruptOn(io.StringIO):
    """Output that raises KeyboardInterrupt (a Ctrl-C) when ``text`` is written."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def write(self, s: str) -> int:
        if s == self.text:
            self.text = ""  # only once
            raise KeyboardInterrupt
        return super().write(s)


def test_ctrl_c_during_a_reply_cancels_it_and_keeps_going(fake: FakeDaemon, client: Client) -> None:
    out = InterruptOn("partial")
    assert repl(client, feed("slow", "hello"), out) == 0
    assert fake.cancelled.wait(5), "the server never saw the cancellation"
    assert out.getvalue().endswith("\n\nHello world\n\n\n")
    assert [s.content for s in fake.requests("Send")] == ["slow", "hello"]
    assert fake.sessions == set()


@pytest.mark.parametrize("stop", [EOFError, KeyboardInterrupt])
def test_ctrl_c_or_ctrl_d_at_the_prompt_exits(
    fake: FakeDaemon, client: Client, stop: type[BaseException]
) -> None:
    out = io.StringIO()
    assert repl(client, feed("hello", stop, "never read"), out) == 0
    assert [s.content for s in fake.requests("Send")] == ["hello"]
    assert len(fake.requests("Delete")) == 1


def test_multi_line_message(fake: FakeDaemon, client: Client) -> None:
    read_line = feed('"""first', "second", 'third"""', '"""one line"""')
    assert repl(client, read_line, io.StringIO()) == 0
    assert [s.content for s in fake.requests("Send")] == ["first\nsecond\nthird", "one line"]
    assert read_line.prompts == [">>> ", "... ", "... ", ">>> ", ">>> "]  # type: ignore[attr-defined]


def test_ctrl_c_abandons_a_multi_line_message(fake: FakeDaemon, client: Client) -> None:
    assert repl(client, feed('"""draft', KeyboardInterrupt, "hello"), io.StringIO()) == 0
    assert [s.content for s in fake.requests("Send")] == ["hello"]


def test_an_error_reply_keeps_the_loop(fake: FakeDaemon, client: Client) -> None:
    fake.fail["Send"] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "the context window is full")
    err = io.StringIO()
    assert repl(client, feed("hello", "again"), io.StringIO(), err=err) == 0
    assert err.getvalue() == "edged: the context window is full\n" * 2
    assert len(fake.requests("Send")) == 2


def test_verbose_prints_stats_after_each_reply(fake: FakeDaemon, client: Client) -> None:
    err = io.StringIO()
    assert repl(client, feed("hello"), io.StringIO(), err=err, verbose=True) == 0
    assert "completion tokens:   3" in err.getvalue()


def test_json_needs_a_prompt(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edged.daemon.cli.main import main

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    assert main(["run", "m", "--json"]) == 1
    assert "--json needs a PROMPT" in capsys.readouterr().err


def test_run_without_prompt_on_a_tty_starts_the_repl(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edged.daemon.cli.main import main

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty())
    monkeypatch.setattr("builtins.input", feed("hello", "/bye"))
    assert main(["run", "m", "--system", "sys"]) == 0
    assert capsys.readouterr().out == "Hello world\n\n"
    assert [c.system_prompt for c in fake.requests("Create")] == ["sys"]
    assert fake.sessions == set()
