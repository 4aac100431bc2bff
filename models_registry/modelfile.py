"""Read an Ollama Modelfile: the FROM, SYSTEM and PARAMETER lines `edged create`
uses, and what it does with the rest.

The syntax is Ollama's: one instruction per line, case-insensitive, ``#`` starts
a comment line, and a value may be a ``"quoted string"`` or a ``\"\"\"`` block
over several lines. TEMPLATE and LICENSE are ignored (edged uses the GGUF's own
chat template, and keeps no license text) and the result says so; ADAPTER and
MESSAGE are refused (edged cannot apply a LoRA adapter or seed a conversation
from a model), so a model never silently behaves differently from its Modelfile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edged.common.errors import InvalidArgument

MAX_MODELFILE_BYTES = 1 << 20
_IGNORED = {
    "TEMPLATE": "TEMPLATE is ignored: edged uses the chat template in the GGUF file",
    "LICENSE": "LICENSE is ignored: edged keeps no license text",
    "REQUIRES": "REQUIRES is ignored",
}
_REFUSED = {
    "ADAPTER": "ADAPTER is not supported: edged cannot apply a LoRA adapter",
    "MESSAGE": "MESSAGE is not supported: start a session with those turns instead",
}


@dataclass(frozen=True)
class Modelfile:
    source: str  # FROM: a model name, or a path to a GGUF file
    system: str | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()


def parse(text: str) -> Modelfile:
    """Parse a Modelfile; raises InvalidArgument naming the line that is wrong."""
    if len(text.encode()) > MAX_MODELFILE_BYTES:
        raise InvalidArgument(f"the Modelfile is larger than {MAX_MODELFILE_BYTES >> 20} MiB")
    source = ""
    system: str | None = None
    parameters: list[tuple[str, str]] = []
    notes: list[str] = []
    for number, instruction, value in _instructions(text):
        where = f"Modelfile line {number}"
        if instruction == "FROM":
            if source:
                raise InvalidArgument(f"{where}: a second FROM (edged takes one model)")
            source = value
        elif instruction == "SYSTEM":
            system = value
        elif instruction == "PARAMETER":
            key, _, raw = value.partition(" ")
            if not key or not raw.strip():
                raise InvalidArgument(f"{where}: PARAMETER needs a name and a value")
            parameters.append((key.lower(), raw.strip()))
        elif instruction in _IGNORED:
            notes.append(_IGNORED[instruction])
        elif instruction in _REFUSED:
            raise InvalidArgument(f"{where}: {_REFUSED[instruction]}")
        else:
            raise InvalidArgument(f"{where}: unknown instruction {instruction[:20]!r}")
    if not source:
        raise InvalidArgument("the Modelfile has no FROM line naming the model to start from")
    return Modelfile(source, system, tuple(parameters), tuple(dict.fromkeys(notes)))


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, value) for each instruction."""
    out: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if not rest:
            raise InvalidArgument(f"Modelfile line {number}: {word[:20]!r} has no value")
        if rest.startswith('"""'):
            value, i = _block(lines, i, rest[3:], number)
        elif rest.startswith('"') and word.upper() != "PARAMETER":
            value = _quoted(rest, number)
        else:
            value = rest
        out.append((number, word.upper(), value))
    return out


def _block(lines: list[str], i: int, first: str, number: int) -> tuple[str, int]:
    """A \"\"\" block starting with ``first``; returns it and the next line index."""
    if '"""' in first:
        return first[: first.index('"""')], i
    parts = [first]
    while i < len(lines):
        line = lines[i]
        i += 1
        if '"""' in line:
            parts.append(line[: line.index('"""')])
            return "\n".join(parts).strip("\n"), i
        parts.append(line)
    raise InvalidArgument(f'Modelfile line {number}: a """ block is never closed')


def _quoted(raw: str, number: int) -> str:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"Modelfile line {number}: a quoted value is not closed") from exc
    if not isinstance(value, str):
        raise InvalidArgument(f"Modelfile line {number}: expected a quoted string")
    return value
