"""Frames over an asyncio byte stream: the supervisor's end of a worker's channel.

Every launcher hands the supervisor one of these (``warren/worker/launcher.py``). One end of a
socketpair carries it for the local launcher's child process and the in-process fake's worker threads,
so the codec, its size limit, EOF and garbage are exercised the same way in tests as in production; the
Ray launcher's workers, on other machines, connect back over TCP (``warren/worker/rendezvous.py``).

``receive`` raises ``ChannelClosed`` at EOF (the worker ended or closed its end) and ``ProtocolError``
on bytes that are not a frame; ``send`` raises ``Unencodable`` for a frame that cannot be encoded (bad
text, numbers out of range) and ``ConnectionError``/``OSError`` when the other end is gone.
"""

from __future__ import annotations

import asyncio
import socket

from warren.worker import protocol as p


class ChannelClosed(Exception):
    """The other end closed the channel (or its process ended)."""


class FrameChannel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def over_socket(cls, sock: socket.socket) -> FrameChannel:
        # The reader's buffer must hold the largest frame, or readexactly could not return it.
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=p.MAX_FRAME + 16)
        return cls(reader, writer)

    async def receive(self) -> p.Frame:
        try:
            header = await self._reader.readexactly(p.HEADER.size)
            return p.decode(await self._reader.readexactly(p.frame_length(header)))
        except asyncio.IncompleteReadError:
            raise ChannelClosed from None

    async def send(self, frame: p.Frame) -> None:
        """Write one frame and wait until the transport has taken it (flow control)."""
        self._writer.write(p.encode(frame))
        await self._writer.drain()

    def send_nowait(self, frame: p.Frame) -> None:
        """Write a small frame without waiting (the heartbeat's Ping must not queue behind a large frame)."""
        self._writer.write(p.encode(frame))

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        """End the connection now, unsent data dropped: the reader sees EOF. For a worker known to be gone
        whose connection did not say so (its machine vanished: no FIN ever comes)."""
        self._writer.transport.abort()
