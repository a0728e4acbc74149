"""The HTTP server process: uvicorn, with shutdown that ends every request in its own dialect.

On SIGTERM uvicorn stops accepting, waits ``timeout_graceful_shutdown`` for open requests, then cancels
them mid-body (a stream cut with no final or error event; a request not yet answered gets plain-text
"Internal Server Error"). So the signal first starts warren's own drain (``Serving.drain``: waiting
requests get their dialect's 503 now, running generations ``DRAIN_GRACE`` seconds, then an in-band
error event), and uvicorn's own timeout is set past that grace, so it never has to cut anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from warren.api.connections import server_options
from warren.api.serving import DRAIN_GRACE, Serving

UVICORN_GRACE = DRAIN_GRACE + 5.0  # seconds: past warren's own grace, so uvicorn cancels nothing


class WarrenServer(uvicorn.Server):
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        s = app.state.pool.server
        super().__init__(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                        timeout_graceful_shutdown=int(UVICORN_GRACE),
                                        **server_options(s.header_timeout)))
        self.serving: Serving = app.state.serving

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the signal handler: it only schedules the drain on the event loop (and lets uvicorn
        begin its own shutdown)."""
        if sig in (signal.SIGTERM, signal.SIGINT) and not self.should_exit:
            with contextlib.suppress(RuntimeError):  # no loop yet: nothing is in flight to drain
                asyncio.get_running_loop().call_soon_threadsafe(self.serving.drain)
        super().handle_exit(sig, frame)
