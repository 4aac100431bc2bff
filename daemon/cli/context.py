"""What every command gets: its output streams and a way to reach the daemon."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from edged.common import errors
from edged.daemon import config
from edged.daemon.client import Client, connect


@dataclass
class Context:
    stdout: TextIO
    stderr: TextIO
    stdin: TextIO | None
    tcp: str | None = None
    token_file: Path | None = None
    autostart: bool = True
    _clients: list[Client] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        return cls(
            stdout=sys.stdout,
            stderr=sys.stderr,
            stdin=sys.stdin,
            tcp=args.client_tcp,
            token_file=args.client_token_file,
            autostart=args.autostart,
        )

    def client(self, *, autostart: bool | None = None) -> Client:
        """Connect (once per call); closed by :meth:`close`."""
        try:
            paths = config.load_paths()
            tcp = self.tcp if self.tcp is not None else config.load_server().tcp
        except ValueError as exc:  # a malformed EDGED_* variable
            raise errors.InvalidArgument(str(exc)) from exc
        client = connect(
            paths=paths,
            tcp=tcp,
            token_file=self.token_file,
            autostart=self.autostart if autostart is None else autostart,
        )
        self._clients.append(client)
        return client

    def close(self) -> None:
        while self._clients:
            self._clients.pop().close()

    def out(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def err(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()
