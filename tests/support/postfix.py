"""Run Debian's real Postfix binaries against generated relay config, for tests and the bench.

Why real Postfix: the contract is that Postfix itself accepts the files (``postmap -q``,
``postconf -c``) and that the live relay allows exactly the listed clients. Only the real
parser and the real ``smtpd`` prove that.

:class:`PostfixInstance` builds a throw-away configuration directory in ``/tmp`` (not in
pytest's ``tmp_path``: that lives under a 0700 directory the unprivileged ``postfix`` user
cannot traverse) with its own queue, data directory and log file, listening only on
``127.0.0.1:<free port>``. By default mail is never delivered anywhere: every transport is
``discard``. With ``relay_to=(host, port)`` it relays instead, through the stock ``smtp``
client, to that loopback SMTP server (``relayhost = [host]:port``, no TLS towards it, no
DNS), so a test can read what the relay really sent (``tests/support/relay.py``).
``mynetworks`` is empty, so only the generated maps let a client relay.

``master.cf`` is either the small discarding one with a single smtpd on ``port``, or, when
a generated ``master.cf.fragment`` is given, the stock service lines Postfix needs plus
that fragment, which then defines the listening services itself.

Needs root (to start ``master``) and the ``postfix`` package; :func:`require_tool` skips
the calling test when a binary is missing, or fails it when ``RELAYDESK_REQUIRE_TOOLS=1``
(as in CI), so a missing install step cannot hide behind a green run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

__all__ = (
    "PostfixInstance",
    "free_port",
    "minimal_config_dir",
    "require_root",
    "require_tool",
    "run_tool",
    "stock_master_cf",
)

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def require_tool(name: str) -> str:
    """Return the path of a Postfix tool, or skip (locally) / fail (CI) the test without it."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))
    if path is not None:
        return path
    reason = f"{name} not installed (apt-get install postfix)"
    if os.environ.get("RELAYDESK_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason}; RELAYDESK_REQUIRE_TOOLS=1 makes this an error", pytrace=False)
    pytest.skip(reason)
    raise AssertionError("unreachable")  # pytest.skip raises; this satisfies type checkers


def require_root() -> None:
    """Skip (locally) or fail (CI) a test that must start a Postfix master, unless root."""
    if os.geteuid() == 0:
        return
    reason = "starting a Postfix master needs root"
    if os.environ.get("RELAYDESK_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason}; RELAYDESK_REQUIRE_TOOLS=1 makes this an error", pytrace=False)
    pytest.skip(reason)


def run_tool(*args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a Postfix command-line tool with a clean, predictable environment."""
    tool = require_tool(args[0])
    env = {"PATH": os.pathsep.join((*_SBIN_DIRS, "/usr/bin", "/bin")), "LANG": "C"}
    return subprocess.run(
        [tool, *args[1:]],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def minimal_config_dir(directory: Path) -> Path:
    """Create a config directory that ``postmap -c``/``postconf -c`` can use.

    Debian's package installed with "No configuration" has no /etc/postfix/main.cf, and
    every Postfix tool refuses to run without one; this keeps the tests independent of
    whatever the machine's own Postfix configuration is.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _write_settled(directory / "main.cf", "compatibility_level = 3.6\n")
    return directory


def _write_settled(path: Path, text: str) -> None:
    """Write a config file with an mtime in the past.

    Postfix tools re-read a main.cf that changed within the last few seconds, sleeping
    300 ms each time (about 2 s per fresh config directory); backdating avoids that wait.
    """
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (Postfix binds it itself, so there is a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# The stock private services of Debian's master.cf, none chrooted (the chroot would need
# copies of /etc files inside the temporary queue directory). An instance whose listening
# services come from a generated master.cf.fragment gets all of them, delivery agents
# (smtp, relay, local, virtual, lmtp) included, so mail really leaves.
_STOCK_SERVICES = """\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
proxywrite unix - - n -  1 proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
  -o syslog_name=postfix/$service_name
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
virtual   unix  - n n -  - virtual
lmtp      unix  - - n -  - lmtp
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

# What only a relay that sends mail needs: the small discarding master.cf leaves these out.
_SENDING_SERVICES = frozenset({"proxywrite", "smtp", "relay", "local", "virtual", "lmtp"})


def _discarding_master_cf(listen: str) -> str:
    """One smtpd on ``listen`` plus the stock services a relay that discards everything needs."""
    kept, dropping = [f"{listen} inet n - n - - smtpd\n"], False
    for line in _STOCK_SERVICES.splitlines(keepends=True):
        if not line[:1].isspace():
            dropping = line.split(None, 1)[0] in _SENDING_SERVICES
        if not dropping:
            kept.append(line)
    return "".join(kept)


def _without(main_cf: str, names: set[str]) -> str:
    """``main_cf`` without the entries (and their continuation lines) of ``names``."""
    kept, dropping = [], False
    for line in main_cf.splitlines(keepends=True):
        if line[:1] in (" ", "\t") and line.strip():
            if not dropping:
                kept.append(line)
            continue
        dropping = (not line.startswith("#")
                    and line.split("=", 1)[0].strip() in names and "=" in line)
        if not dropping:
            kept.append(line)
    return "".join(kept)


def stock_master_cf(fragment: str) -> str:
    """The stock private services followed by a generated ``master.cf.fragment``."""
    return _STOCK_SERVICES + fragment


def _defined_names(main_cf_text: str) -> set[str]:
    """The parameter names a main.cf text assigns (``name = value`` at line start)."""
    names = set()
    for line in main_cf_text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "=" in line:
            names.add(line.split("=", 1)[0].strip())
    return names


class PostfixInstance:
    """A private Postfix on loopback, configured from a generated ``main.cf.fragment``.

    Typical use::

        with PostfixInstance() as pf:
            settings = RelaySettings("relay.test", map_directory=str(pf.map_dir))
            write_artifacts_atomically(pf.map_dir, build_artifacts(...))
            pf.start(fragment)
            ... smtplib.SMTP(pf.host, pf.port, source_address=("127.0.0.2", 0)) ...

    Leaving the ``with`` block stops every process of the instance and deletes the
    directory, also when the test failed.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_main_cf: str = "",
        relay_to: tuple[str, int] | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="relaydesk-postfix-"))
        # The postfix user must traverse to the queue and data directories.
        os.chmod(self.root, 0o755)
        self.config_dir = self.root / "conf"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.map_dir = self.root / "maps"
        self.log_file = self.root / "log" / "maillog"
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.extra_main_cf = extra_main_cf
        self.relay_to = relay_to
        self.master_cf_fragment: str | None = None
        self.running = False

    # -- configuration -------------------------------------------------------------------

    def base_main_cf(self) -> str:
        """The parts of main.cf that make this a private, loopback-only relay that discards
        everything, or, with ``relay_to``, hands everything to that loopback server."""
        if self.relay_to is None:
            transport = "default_transport = discard\nrelay_transport = discard\n"
        else:
            host, port = self.relay_to
            transport = (
                f"relayhost = [{host}]:{port}\n"
                # The sink offers no STARTTLS; a bracketed IP literal needs no MX look-up,
                # and "native" keeps the client off the DNS resolver library altogether.
                "smtp_tls_security_level = none\n"
                "smtp_host_lookup = native\n"
                "lmtp_host_lookup = native\n"
            )
        return (
            "compatibility_level = 3.6\n"
            f"queue_directory = {self.queue_dir}\n"
            f"data_directory = {self.data_dir}\n"
            f"maillog_file_prefixes = {self.log_file.parent}\n"
            f"maillog_file = {self.log_file}\n"
            "inet_interfaces = loopback-only\n"
            "inet_protocols = ipv4\n"
            "myhostname = relay.relaydesk.invalid\n"
            "mydestination =\n"
            "relay_domains =\n"
            "local_recipient_maps =\n"
            "mynetworks =\n"
            + transport
            # No reverse DNS for 127.0.0.x: CI has no resolver worth waiting for.
            + "smtpd_peername_lookup = no\n"
        )

    def write_config(self, main_cf_fragment: str, master_cf_fragment: str | None = None) -> Path:
        """Write main.cf (base + generated fragment + extras) and master.cf; return the dir.

        A base parameter that the fragment or the extras assign again is left out of the
        base: Postfix warns about a parameter set twice ("overriding earlier entry"), and
        the generated value is the one under test. With ``master_cf_fragment``, master.cf
        is :func:`stock_master_cf` of it (remembered for later rewrites).
        """
        if master_cf_fragment is not None:
            self.master_cf_fragment = master_cf_fragment
        self.config_dir.mkdir(parents=True, exist_ok=True)
        overridden = _defined_names(main_cf_fragment + self.extra_main_cf)
        base = _without(self.base_main_cf(), overridden)
        # The extras win over the fragment the same way (a test that turns the policy
        # service off, say). Duplicates are not only noise: after "postfix reload" every
        # process logs its warnings at once, and a master blocked on a full postlog
        # socket stopped answering (seen twice in CI).
        fragment = _without(main_cf_fragment, _defined_names(self.extra_main_cf))
        _write_settled(self.config_dir / "main.cf", base + fragment + self.extra_main_cf)
        if self.master_cf_fragment is None:
            master = _discarding_master_cf(f"{self.host}:{self.port}")
        else:
            master = stock_master_cf(self.master_cf_fragment)
        _write_settled(self.config_dir / "master.cf", master)
        return self.config_dir

    def _postfix(self, *args: str, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        result = run_tool("postfix", "-c", str(self.config_dir), *args, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"postfix {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- maillog ---\n{self.log()}"
            )
        return result

    # -- lifecycle -----------------------------------------------------------------------

    def start(
        self,
        main_cf_fragment: str,
        *,
        master_cf_fragment: str | None = None,
        timeout: float = 20,
    ) -> None:
        """Write the config, create the queue, start master and wait until smtpd answers.

        With ``master_cf_fragment`` the fragment must define an smtpd on ``host:port``
        (the one waited for); its other services are the caller's to wait for.
        """
        require_tool("postfix")
        require_root()
        self.write_config(main_cf_fragment, master_cf_fragment)
        for path in (self.queue_dir, self.data_dir, self.log_file.parent):
            path.mkdir(parents=True, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        # "check" runs post-install create-missing: queue subdirectories and ownership.
        self._postfix("check")
        self.running = True
        self._postfix("start")
        self._wait_greeting(timeout)

    def reload(self, *, settle: float = 0.0, timeout: float = 20) -> None:
        """``postfix reload``: master re-reads the config, smtpd re-opens the maps.

        Returns once smtpd greets again (a probe right after a reload on a loaded
        machine could otherwise meet a master still restarting its services).
        """
        self._postfix("reload")
        if settle:
            time.sleep(settle)
        self._wait_greeting(timeout)

    def _wait_greeting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=1) as sock,
            ):
                sock.settimeout(5)
                if sock.recv(512).startswith(b"220"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"smtpd did not answer on {self.host}:{self.port}\n{self.log()}")

    def queue_empty(self) -> bool:
        """Whether nothing is queued (``postqueue -p``): every message was delivered or
        refused, so nothing more can reach the relayhost."""
        result = run_tool("postqueue", "-c", str(self.config_dir), "-p")
        return result.returncode == 0 and "Mail queue is empty" in result.stdout

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"  # a zombie has exited; only its parent can reap it

    def stop(self, *, timeout: float = 15) -> None:
        """Stop master and its children; escalate to ``abort`` and SIGKILL if needed."""
        if not self.running:
            return
        pid = self.master_pid()
        # A master that hangs must not hold the run for minutes: "postfix stop" waits for
        # it, so it gets the same bound, then abort and SIGKILL below.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._postfix("stop", check=False, timeout=timeout)
        deadline = time.monotonic() + timeout
        while pid is not None and self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid is not None and self._alive(pid):
            self._postfix("abort", check=False)
            time.sleep(0.5)
        if pid is not None and self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.running = False

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return "(no maillog)"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
