"""A test daemon run in the foreground as our child, its output kept in a log file.

``saslauthd`` (``tests/support/sasl.py``) and ``slapd`` (``tests/support/slapd.py``) are
started and stopped the same way: in the foreground, so the test process owns the pid and
no pid file or daemonising can leave a stray server behind; output appended to one log
file that survives restarts, so a failure message can quote its tail; "ready" is
something the daemon makes (a socket file, a listening port), waited for while checking
that the daemon did not exit; stopped by SIGTERM to our pid only, then SIGKILL. A subclass
builds its command line and readiness check in :meth:`ForegroundDaemon.start` and calls
:meth:`ForegroundDaemon._spawn`.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO
from typing import Self

__all__ = ("ForegroundDaemon",)


class ForegroundDaemon:
    """Start/stop/log plumbing shared by the private daemons of the tests.

    Subclasses set ``name`` (used in error messages), give ``log_path`` and
    ``start_timeout`` to ``__init__``, implement :meth:`start` with :meth:`_spawn`, and
    extend :meth:`close` with their own cleanup.
    """

    name = "daemon"
    tail_lines = 30

    def __init__(self, *, log_path: Path, start_timeout: float) -> None:
        self.log_path = log_path
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the daemon (again) and return once it is ready."""
        raise NotImplementedError

    def _spawn(self, argv: list[str], *, ready: Callable[[], bool], waiting_for: str,
               start_new_session: bool = False) -> None:
        """Run ``argv`` with its output appended to ``log_path``; wait until ``ready()``.

        ``ready`` raising ``OSError`` counts as not ready yet. Raises ``RuntimeError``
        quoting the log when the daemon exits first or is not ready within
        ``start_timeout`` (then it is stopped): "<name> did not <waiting_for>: <log>".
        """
        log = self.log_path.open("ab")
        self._log = log
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=start_new_session,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.log_tail()}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not {waiting_for}: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM our daemon (its pid only) and wait for it, SIGKILL after 10 s."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop the daemon; subclasses also remove their files."""
        self.stop()

    def log_tail(self, lines: int | None = None) -> str:
        """The last ``lines`` (default ``tail_lines``) lines of the daemon's log."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            count = self.tail_lines if lines is None else lines
            return "\n".join(text.splitlines()[-count:])
        return ""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
