"""Render chat messages with a model's own Jinja chat template.

Templates come from model files, which are hostile input: they run in Jinja's
immutable sandbox, and any failure becomes an edged error, never a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edged.backends.base import Message
from edged.common.errors import FailedPrecondition, InvalidArgument

ROLES = frozenset({"system", "user", "assistant", "tool"})

# Used only when a model ships no template: ChatML, the most common format.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class _TemplateError(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateError(message)


class ChatTemplate:
    """A model's chat template, rendered the way Hugging Face renders it.

    The environment is Jinja's immutable sandbox with lenient undefined values
    (templates test ``message.tool_calls`` on messages that have none) and
    Hugging Face's globals: ``raise_exception`` and ``strftime_now``; the
    variables are ``messages``, ``tools`` (None without tools),
    ``add_generation_prompt``, ``bos_token`` and ``eos_token``.
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt))
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise FailedPrecondition(f"the model's chat template does not parse: {exc}") from exc
        self._bos = bos_token
        self._eos = eos_token

    @property
    def knows_tools(self) -> bool:
        """The template renders tools itself (it reads the ``tools`` variable)."""
        return bool(_TOOLS_VAR.search(self.source))

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        return "".join(t for t, _ in self.render_parts(messages, add_generation_prompt, tools))

    def render_parts(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[tuple[str, bool]]:
        """The rendered prompt as (text, is_content) parts: the messages' content
        apart from the template's own text, so that content can be tokenized as
        plain text (a control token typed in a message stays characters).

        Each content goes into the template as a placeholder (NUL, its index,
        NUL; messages never contain NUL) and is put back in the output.
        """
        validate_messages(messages)
        if any("\x00" in m.content for m in messages):
            raise InvalidArgument("a message contains a NUL character")
        contents = [m.content for m in messages]
        marked = [_as_dict(m, _MARK.format(i)) for i, m in enumerate(messages)]
        try:
            text = self._template.render(
                messages=marked,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except _TemplateError as exc:
            raise InvalidArgument(
                f"the model's chat template rejected the messages: {exc}"
            ) from exc
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
            raise FailedPrecondition(f"the model's chat template failed: {exc}") from exc
        parts: list[tuple[str, bool]] = []
        for i, piece in enumerate(_MARKS.split(text)):
            if i % 2 == 0:
                if piece:
                    parts.append((piece, False))
            else:
                index = int(piece)
                if index < len(contents) and contents[index]:
                    parts.append((contents[index], True))
        return parts


_MARK = "\x00{}\x00"
_MARKS = re.compile("\x00([0-9]+)\x00")
_TOOLS_VAR = re.compile(r"\btools\b")


def _as_dict(m: Message, content: str) -> dict[str, Any]:
    """A message as templates read it (the OpenAI/Hugging Face shape)."""
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
        if m.name:
            out["name"] = m.name
    return out


def _arguments(text: str) -> Any:
    """Arguments as an object (what templates pass to tojson), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def validate_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise InvalidArgument("chat needs at least one message")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(
                f"message {i} has role {m.role!r}; use one of: system, user, assistant, tool"
            )
    if all(not m.content.strip() for m in messages if m.role == "user"):
        raise InvalidArgument("the prompt is empty: send at least one non-empty user message")
