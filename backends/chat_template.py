"""Render chat messages with a model's own Jinja chat template.

Templates come from model files, which are hostile input: they run in Jinja's
immutable sandbox, and any failure becomes an edged error, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edged.backends.base import Message
from edged.common.errors import FailedPrecondition, InvalidArgument

ROLES = frozenset({"system", "user", "assistant"})

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
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(str(fmt))
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise FailedPrecondition(f"the model's chat template does not parse: {exc}") from exc
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        validate_messages(messages)
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
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


def validate_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise InvalidArgument("chat needs at least one message")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(
                f"message {i} has role {m.role!r}; use one of: system, user, assistant"
            )
    if all(not m.content.strip() for m in messages if m.role == "user"):
        raise InvalidArgument("the prompt is empty: send at least one non-empty user message")
