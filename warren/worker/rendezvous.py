"""Where workers on other machines connect back to the supervisor: one TCP port, a token per worker.

A worker on this machine gets its channel as one end of a socketpair (``warren/worker/local.py``). One
that a Ray actor starts on another node cannot inherit anything from the supervisor, so it connects: the
supervisor listens on one TCP port (``Rendezvous``, on the address Ray knows this machine by); before
starting a worker it takes a ``Ticket`` — a random token and a future for the channel — and sends the
address and token along with the start. The node's side (``warren/worker/ray_agent.py``) connects, writes
the token, and hands the connected socket to the worker process as its channel fd, where
``warren/worker/child.py`` uses it exactly as it uses a socketpair. On this side the connection whose
token matches becomes that worker's ``FrameChannel``: the frame protocol and ``WorkerHandle`` are the
same for every launcher.

- The supervisor connects to nothing: a node only needs to reach the supervisor's port, as it already
  reaches the head of its cluster. No port is opened on the nodes.
- A connection that does not present a token it was given within ``TOKEN_TIMEOUT``, or presents one it
  was not given (or one already used), is closed: the port accepts no stranger's frames.
- Nagle's algorithm is off on both ends (asyncio's transports turn it off here; the agent on its side):
  frames are small, and one held back until the previous one's ACK waits out a delayed ACK (40 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field

from warren.worker import protocol as p
from warren.worker.channel import FrameChannel

log = logging.getLogger(__name__)

TOKEN_BYTES = 16
TOKEN_TIMEOUT = 10.0  # seconds a new connection has to say its token (a node across a slow network)


@dataclass(eq=False)
class Ticket:
    """One worker's expected connection: its token, and the channel once it has connected."""

    token: bytes
    channel: asyncio.Future[FrameChannel] = field(repr=False)


class Rendezvous:
    def __init__(self, host: str, *, token_timeout: float = TOKEN_TIMEOUT) -> None:
        self.host = host
        self.token_timeout = token_timeout
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tickets: dict[bytes, Ticket] = {}

    async def open(self) -> None:
        # The reader's buffer must hold the largest frame, as in FrameChannel.over_socket.
        self._server = await asyncio.start_server(self._accept, self.host, 0, limit=p.MAX_FRAME + 16)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("workers connect back to host=%s port=%d", self.host, self.port)

    def expect(self) -> Ticket:
        """A ticket for one worker; ``withdraw`` it if the worker never comes."""
        ticket = Ticket(secrets.token_bytes(TOKEN_BYTES), asyncio.get_running_loop().create_future())
        self._tickets[ticket.token] = ticket
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        self._tickets.pop(ticket.token, None)
        ticket.channel.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            token = await asyncio.wait_for(reader.readexactly(TOKEN_BYTES), self.token_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            token = b""
        ticket = self._tickets.pop(token, None)
        if ticket is None or ticket.channel.done():
            log.warning("closed a connection without a worker's token peer=%s", writer.get_extra_info("peername"))
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return
        ticket.channel.set_result(FrameChannel(reader, writer))

    async def close(self) -> None:
        for ticket in self._tickets.values():
            ticket.channel.cancel()
        self._tickets.clear()
        if self._server is not None:
            self._server.close()  # (not wait_closed: from Python 3.12 it also waits for the workers' channels)
