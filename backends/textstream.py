"""Turning a stream of token bytes into text chunks, honouring stop strings.

Pure logic shared by every backend: UTF-8 sequences split across tokens are
held until complete, and text that might be the start of a stop string is held
until it is known not to be one, so a stop string never reaches the client.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._held = ""
        self.matched: str | None = None

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.matched is not None:
            return ""
        self._held += self._decoder.decode(data)
        return self._release()

    def finish(self) -> str:
        """End of generation: return whatever is still held back."""
        if self.matched is not None:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        out = self._release()
        if self.matched is None:
            out += self._held
            self._held = ""
        return out

    def _release(self) -> str:
        held = self._held
        if not self._stop:
            self._held = ""
            return held
        first: tuple[int, str] | None = None
        for s in self._stop:
            i = held.find(s)
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            self.matched = first[1]
            self._held = ""
            return held[: first[0]]
        keep = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(held)), 0, -1):
                if held.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]
