"""A throw-away ``redis-server`` on a free loopback port, for tests and benchmarks.

Tests that need Redis must never touch the machine's own instance (other runs use it, and
a test that stops Redis to simulate an outage would take it away from them), so each gets
a private server: bound to 127.0.0.1, nothing kept on disk (``--save ""``, no AOF), its
working directory a temporary one. ``stop()`` and ``start()`` take it away and bring it
back on the same port, which is how a client's behaviour during an outage is tested; a
restart starts empty, like a Redis that lost its memory.

    with PrivateRedis() as redis:
        client = redis_py.Redis.from_url(redis.url)
        redis.stop()   # outage
        redis.start()  # back, same port, empty

When ``redis-server`` is missing, entering skips the test by hand and fails it in CI
(``tests.conftest.require``). The module itself imports nothing from Django, so the
benchmarks in ``bench/`` can use it as well (they check for the binary first).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ("PrivateRedis", "free_port", "redis_server_available")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_available() -> bool:
    """Whether a ``redis-server`` binary is on ``PATH`` (or in ``/usr/sbin``/``/usr/bin``)."""
    return _binary() is not None


def _binary() -> str | None:
    return shutil.which("redis-server") or shutil.which(
        "redis-server", path="/usr/sbin:/usr/bin:/usr/local/bin")


class PrivateRedis:
    """A private ``redis-server`` process: ``url``/``port``, ``stop()``/``start()`` in place.

    ``extra_args`` are appended to the command line (e.g. ``("--maxmemory", "64mb")``).
    """

    def __init__(self, port: int | None = None, *, extra_args: tuple[str, ...] = (),
                 start_timeout: float = 15.0) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0 of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        """Whether something on the port answers ``PING`` with ``+PONG`` right now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        """Start the server (again) on ``port``; returns once it answers ``PING``."""
        binary = _binary()
        if binary is None:
            raise FileNotFoundError("redis-server")
        if self.running:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="relaydesk-redis-"))
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self._dir),
             *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.answers():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the port stays ours for ``start()``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> PrivateRedis:
        if not redis_server_available():
            # deferred: tests.conftest loads the Django test fixtures; benchmarks that use
            # this module check for the binary first and never get here.
            from tests.conftest import require

            require(False, "redis-server is not installed")
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
