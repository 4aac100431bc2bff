"""Request ids: unique in the daemon's life, shared by jobs and worker calls
(events and replies on a worker's pipe are routed by them)."""

from __future__ import annotations

import itertools

_ids = itertools.count(1)


def next_request_id() -> int:
    return next(_ids)
