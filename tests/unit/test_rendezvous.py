"""Workers on other machines connect back with a token (warren/worker/rendezvous.py): the right one gets its
channel, a stranger gets nothing."""

from __future__ import annotations

import asyncio
import socket

from warren.worker import protocol as p
from warren.worker.child import FrameSocket
from warren.worker.rendezvous import Rendezvous


async def connect(port: int, token: bytes) -> socket.socket:
    """A node's side of it (what warren/worker/ray_agent.py does): connect, say the token."""

    def dial() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(token)
        return sock

    return await asyncio.to_thread(dial)


async def test_a_worker_with_its_token_gets_its_channel_and_speaks_frames_over_it() -> None:
    rv = Rendezvous("127.0.0.1")
    await rv.open()
    try:
        first, second = rv.expect(), rv.expect()
        sock = await connect(rv.port, second.token)
        channel = await second.channel
        assert not first.channel.done()  # each worker gets the connection that named its token
        frames = FrameSocket(sock)  # the worker's own framing (warren/worker/child.py), over TCP
        await asyncio.to_thread(frames.send, p.Hello(pid=42, engine="fake"))
        hello = await channel.receive()
        assert isinstance(hello, p.Hello) and hello.pid == 42
        await channel.send(p.Ping(id=7))
        ping = await asyncio.to_thread(frames.recv)
        assert isinstance(ping, p.Ping) and ping.id == 7
        channel.close()
        assert await asyncio.to_thread(frames.recv) is None  # EOF: a worker ends here
        sock.close()
    finally:
        await rv.close()


async def test_a_wrong_a_reused_or_a_missing_token_is_closed_unheard() -> None:
    rv = Rendezvous("127.0.0.1", token_timeout=0.05)
    await rv.open()
    try:
        ticket = rv.expect()
        for token in (b"x" * 16, b""):  # a stranger's token; a connection that says nothing
            sock = await connect(rv.port, token)
            assert await asyncio.to_thread(sock.recv, 1) == b""  # closed by the supervisor
            sock.close()
        good = await connect(rv.port, ticket.token)
        await ticket.channel
        again = await connect(rv.port, ticket.token)  # a token opens one channel, once
        assert await asyncio.to_thread(again.recv, 1) == b""
        again.close()
        good.close()
        late = rv.expect()
        rv.withdraw(late)  # the worker never came: its ticket is cancelled and its token refused
        assert late.channel.cancelled()
        sock = await connect(rv.port, late.token)
        assert await asyncio.to_thread(sock.recv, 1) == b""
        sock.close()
    finally:
        await rv.close()
