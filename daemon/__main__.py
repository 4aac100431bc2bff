"""``python -m edged.daemon``: run the server with configuration from the environment."""

from __future__ import annotations

from edged.daemon.config import load_server
from edged.daemon.server import run_server

if __name__ == "__main__":
    raise SystemExit(run_server(load_server()))
