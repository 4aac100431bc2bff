from __future__ import annotations

import pytest

from edged.backends.base import Message
from edged.backends.chat_template import CHATML, ChatTemplate
from edged.common.errors import FailedPrecondition, InvalidArgument


def test_chatml_default() -> None:
    t = ChatTemplate("")
    out = t.render([Message("user", "hi")])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert t.source == CHATML


def test_hostile_template_cannot_escape_the_sandbox() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(FailedPrecondition):
        ChatTemplate(evil).render([Message("user", "hi")])


def test_raise_exception_becomes_invalid_argument() -> None:
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidArgument, match="alternate"):
        t.render([Message("user", "hi")])


def test_unparsable_template() -> None:
    with pytest.raises(FailedPrecondition, match="does not parse"):
        ChatTemplate("{% for %}")


@pytest.mark.parametrize(
    "messages",
    [[], [Message("wizard", "x")], [Message("user", "  ")], [Message("system", "only")]],
)
def test_bad_messages(messages: list[Message]) -> None:
    with pytest.raises(InvalidArgument):
        ChatTemplate("").render(messages)
