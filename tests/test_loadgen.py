"""bench/loadgen.py's lean client against a real HTTP server that drops each kept-alive
connection after one answer, without saying so: a request that changes nothing is sent again
on a new connection; any other is not, so nothing is registered twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from bench.loadgen import LeanClient, multipart


class OneAnswerPerConnection(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn answers
    received: ClassVar[list[bytes]]  # each server's own list, set on its handler class

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(body)
        answer = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.close_connection = True  # gone after one answer, with no "Connection: close"

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def dropping_server() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []
    handler = type("Handler", (OneAnswerPerConnection,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_an_idempotent_post_is_sent_again_on_a_new_connection(
    dropping_server: tuple[str, list[bytes]],
) -> None:
    url, received = dropping_server
    body = multipart({"top_k": "5"}, [("image", "a.jpg", b"\xff\xd8\xff", "image/jpeg")])
    with LeanClient(url) as client:
        for _ in range(3):
            assert client.post("/identify", body, idempotent=True) == (200, b'{"ok": true}')
            time.sleep(0.05)  # the server has closed its end before the next request
    assert len(received) == 3 and all(b"a.jpg" in r for r in received)


def test_any_other_post_on_a_dropped_connection_raises_and_is_not_resent(
    dropping_server: tuple[str, list[bytes]],
) -> None:
    url, received = dropping_server
    body = multipart({"individual_id": "fin-1"}, [("image", "a.jpg", b"\xff", "image/jpeg")])
    with LeanClient(url) as client:
        assert client.post("/gallery", body)[0] == 200
        time.sleep(0.05)
        with pytest.raises(ConnectionError):
            client.post("/gallery", body)
        assert client.post("/gallery", body)[0] == 200  # the next call opens a new connection
    assert len(received) == 2


def test_a_new_connection_that_fails_raises_at_once() -> None:
    with LeanClient("http://127.0.0.1:9") as client, pytest.raises(ConnectionError):
        client.post("/identify", multipart({}, []), idempotent=True)
