"""A lean HTTP client for load tests: multipart bodies encoded once, sent over keep-alive
`http.client` connections, one per client thread.

On a small host the benchmark's client shares the cores with the service it measures. httpx
builds each multipart body and each request in Python, about a millisecond of CPU a request on
this 2-core host: time taken from the service's models, and added to every concurrency-1
latency, that a client on another machine (the deployment case) would not take. Encoding each
photo's body ahead and sending bytes leaves the client the send, the wait and the read.
"""

from __future__ import annotations

import http.client
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Body", "LeanClient", "multipart"]


@dataclass(frozen=True)
class Body:
    """A request body, ready to send."""

    content: bytes
    content_type: str


def multipart(fields: Mapping[str, str], files: Sequence[tuple[str, str, bytes, str]]) -> Body:
    """A multipart/form-data body: text `fields`, then `files` as (field, filename, bytes,
    content type)."""
    boundary = secrets.token_hex(16)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for name, filename, content, content_type in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return Body(b"".join(parts), f"multipart/form-data; boundary={boundary}")


class LeanClient:
    """POSTs ready bodies to one server; each calling thread keeps its own connection."""

    def __init__(
        self, base_url: str, headers: Mapping[str, str] | None = None, timeout: float = 120.0
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"{base_url}: an http://host:port address is needed")
        self.host = url.hostname
        self.port = url.port or 80
        self.headers = dict(headers or {})
        self.timeout = timeout
        self._local = threading.local()
        self._opened: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, path: str, body: Body, *, idempotent: bool = False) -> tuple[int, bytes]:
        """The status and body of the answer.

        A kept-alive connection the server has since closed fails only when used: the request
        may or may not have reached the server. An `idempotent` request (one that changes
        nothing, such as POST /identify) is then sent once more on a new connection; any other
        raises, so that a registration is never made twice. A new connection that fails always
        raises."""
        headers = {**self.headers, "Content-Type": body.content_type}
        while True:
            conn, reused = self._connection()
            try:
                conn.request("POST", path, body=body.content, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                conn.close()
                self._local.conn = None
                if not (reused and idempotent):
                    raise

    def close(self) -> None:
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()

    def __enter__(self) -> LeanClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it served a request before."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        with self._lock:
            self._opened.append(conn)
        return conn, False
