"""Logging set-up: key=value records on stderr, the same in the supervisor and the workers."""

from __future__ import annotations

import logging
import sys


def setup_logging(debug: int = 0, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's per-request access log costs time on every request; --debugmode turns it back on.
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if debug else logging.WARNING)
