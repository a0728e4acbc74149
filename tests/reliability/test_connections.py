"""Bounded connections (issue 11, item 11, replayed): slow headers and slow bodies are cut off, a body larger
than any prompt is refused before it is buffered, and requests beyond the cap get a clean 503 at once."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Server, Servers

HEADER_TIMEOUT, BODY_TIMEOUT, CAP = 1, 1, 8


@pytest.fixture(scope="module")
def srv(module_servers: Servers, model_path: Path) -> Server:
    return module_servers.start("--model", str(model_path), "--contextsize", "2048", "--no-warm-spare",
                                "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
                                "--max-connections", str(CAP))


def connect(srv: Server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    return s


def closed_by_server(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection. A reset is a close too: closing a socket
    with bytes it has not read (the trickle's last one) makes the kernel answer with RST instead of FIN. A
    server that never closes fails here with the socket's timeout."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_connections_that_send_their_headers_too_slowly_are_closed(srv: Server) -> None:
    sockets = [connect(srv) for _ in range(50)]
    for s in sockets:
        s.sendall(b"POST /api/v1/generate HTTP/1.1\r\nHo")
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.5 s: never enough to finish the headers in time
        while not stop.wait(0.5):
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.sendall(b"s")

    feeder = threading.Thread(target=trickle)
    feeder.start()
    try:
        # Meanwhile the server answers others.
        assert httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": "Hi", "max_length": 2},
                          timeout=30).status_code == 200
        for s in sockets:
            assert closed_by_server(s) == b""  # closed without a word: there was no request to answer
    finally:
        stop.set()
        feeder.join()
        for s in sockets:
            s.close()


def test_a_body_that_stalls_gets_a_408_in_its_dialect(srv: Server) -> None:
    sockets = [connect(srv) for _ in range(4)]
    for s in sockets:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"prompt\": \"x")
    for s in sockets:
        answer = closed_by_server(s)  # nothing more is sent: the body stalls
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"code":"request_timeout"' in body.replace(b" ", b"")
        s.close()


def test_bodies_larger_than_any_prompt_are_refused_before_they_are_read(srv: Server) -> None:
    """Eight 15 MB tokenize bodies used to raise the supervisor's RSS from 77 to 210 MiB."""
    supervisor = psutil.Process(srv.process.pid)
    before = supervisor.memory_info().rss
    answers: list[int] = []

    def big() -> None:
        r = httpx.post(f"{srv.url}/api/extra/tokenize", content=b'{"prompt": "' + b"x" * (15 * 2**20) + b'"}',
                       headers={"content-type": "application/json"}, timeout=60)
        answers.append(r.status_code)

    threads = [threading.Thread(target=big) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [413] * 8
    assert supervisor.memory_info().rss - before < 10 * 2**20


def test_requests_beyond_the_cap_get_a_503_at_once(srv: Server) -> None:
    held = [connect(srv) for _ in range(CAP)]
    for s in held:  # each holds a request slot while its body trickles in
        s.sendall(b"POST /api/extra/tokencount HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
    try:
        for _ in range(100):  # poll until every held request has reached the app
            r = httpx.get(f"{srv.url}/api/extra/version", timeout=10)
            if r.status_code == 503:
                break
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"detail": {"msg": f"the server is serving {CAP} requests, its limit (--max-connections); "
                                              "try again shortly", "type": "service_unavailable"}}
        oai = httpx.get(f"{srv.url}/v1/models", timeout=10)
        assert oai.status_code == 503 and oai.json()["error"]["code"] == "busy"
        assert httpx.get(f"{srv.url}/ping", timeout=10).status_code == 200  # liveness is never refused
    finally:
        for s in held:
            s.close()
    for _ in range(100):
        r = httpx.get(f"{srv.url}/api/extra/version", timeout=10)
        if r.status_code == 200:
            break
    assert r.status_code == 200
