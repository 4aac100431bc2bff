"""When an infill reply stops early: the editor rules of llama-server's /infill.

- ``n_indent``: once the reply has a newline, a later line indented by fewer
  than ``n_indent`` spaces or tabs ends it (the block at the cursor is done):
  that line's text after its indentation is cut, and the reply ends ``stop``.
- ``t_max_predict_ms``: a token that writes a newline after that much time
  since the first token ends the reply (``time_limit``); the newline is kept.

Same rules as llama.cpp's server (``tools/server/server-context.cpp``), with
one difference that streaming needs: the start of a line is held until its
indentation is known, so a line that is cut was never sent.
"""

from __future__ import annotations

from dataclasses import dataclass

_INDENT = " \t"


@dataclass
class InfillRules:
    n_indent: int = 0
    t_max_predict_ms: int = 0
    done: bool = False  # a rule ended the reply: nothing after that is text
    _line_start: bool = False  # held text begins a line whose indent is not known yet
    _held: str = ""

    def feed(self, text: str, gen_ms: float) -> tuple[str, str | None]:
        """Released text, and the finish reason when a rule ends the reply.
        ``gen_ms``: time since the reply's first token."""
        if self.done:
            return "", None
        timed_out = bool(self.t_max_predict_ms) and "\n" in text and gen_ms > self.t_max_predict_ms
        buf, self._held = self._held + text, ""
        out: list[str] = []
        while buf:
            if not self._line_start:
                i = buf.find("\n")
                if i < 0:
                    out.append(buf)
                    break
                out.append(buf[: i + 1])
                buf = buf[i + 1 :]
                self._line_start = self.n_indent > 0
                continue
            indent = len(buf) - len(buf.lstrip(_INDENT))
            if indent == len(buf):  # only indentation so far: wait for the rest
                self._held = buf
                break
            if indent < self.n_indent:
                out.append(buf[:indent])  # llama-server keeps the indentation
                self.done = True
                return "".join(out), "stop"
            self._line_start = False
        self.done = timed_out
        return "".join(out), "time_limit" if timed_out else None

    def finish(self) -> str:
        """The end of the reply: indentation still held."""
        held, self._held = self._held, ""
        return held
