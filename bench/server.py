"""`whaleid serve` in a subprocess on a free port, configured the operator's way.

Settings come from WHALEID_* variables only (inherited ones dropped, so the caller's shell
cannot change what is measured or tested), and the process runs in a work folder so no `.env`
of the checkout applies either. The service benchmark and the service tests start their
servers through this one launcher.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["ServeProcess", "ServerFailed", "free_port", "serve_env"]

REPO = Path(__file__).resolve().parents[1]


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_env(
    bundle: Path, gallery: Path | str, keys_file: Path, providers: str = "cpu", **extra: str
) -> dict[str, str]:
    """This process's environment without its WHALEID_* variables, plus the server's.
    `gallery` is a SQLite file or a store URL (`postgresql://...`), passed as it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHALEID_")}
    store = gallery if isinstance(gallery, str) and "://" in gallery else Path(gallery).resolve()
    env.update(
        PYTHONPATH=str(REPO),
        WHALEID_BUNDLE=str(Path(bundle).resolve()),
        WHALEID_GALLERY=str(store),
        WHALEID_KEYS_FILE=str(Path(keys_file).resolve()),
        WHALEID_PROVIDERS=providers,
        WHALEID_LOG_LEVEL="warning",
        **extra,
    )
    return env


class ServeProcess:
    """One `whaleid serve` process; restart() keeps its port, settings and log."""

    def __init__(self, workdir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.env = env
        self.port = free_port() if port is None else port
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and wait until /readyz answers 200."""
        self.starts += 1
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"the server exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerFailed(f"the server was not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: uvicorn shuts down gracefully (lifespan closes)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lifespan, as a power cut or the OOM killer would stop it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
