"""SASL on the relay, privately on loopback: Cyrus ``saslauthd -a ldap`` and a submission smtpd.

Why these parts: the relay's promise about functional accounts is "the directory password
**and** membership of the relay-allow group decide, and only over TLS". Only the real
chain proves it: Postfix ``smtpd`` (``smtpd_sasl_type = cyrus``) → libsasl2 →
``saslauthd`` → a real ``slapd``. The reasoning for Cyrus ``saslauthd`` rather than
Dovecot is in docs/relay-sasl.md.

Nothing here touches the machine's own configuration: ``saslauthd`` gets its own
``-O`` config file and ``-m`` run directory (its ``mux`` socket) in a fresh directory
under ``/tmp``, libsasl2 reads ``smtpd.conf`` from the private Postfix's own config
directory (``$config_directory/sasl``, where Debian's Postfix looks for it),
and the TLS certificate is a throw-away self-signed one made with the ``openssl`` CLI.
Directories are created under ``/tmp`` with mode 0755, not in pytest's ``tmp_path``,
because Postfix's ``smtpd`` runs as the unprivileged ``postfix`` user and must reach
the ``mux`` socket.

* :class:`Saslauthd` runs ``saslauthd -a ldap -d`` in its own session (on SIGTERM the
  daemon signals its whole process group, which would otherwise include the test run)
  and without ``-c``: the credential cache would keep an old password and a removed
  account working for hours (:meth:`Saslauthd.check` and the tests show it).
* :func:`self_signed_certificate` writes a key and certificate for STARTTLS.
* :class:`SubmissionRelay` is a :class:`~tests.support.postfix.PostfixInstance` whose
  listening service is the generated submission service (its ``-o`` options as the
  renderer prints them for master.cf), with TLS and the private Cyrus config added to
  main.cf. Only the port and ``chroot`` (``n``: a chroot would need copies of ``/etc``
  files and the socket inside the queue directory) differ from what a relay runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from tests.conftest import require
from tests.support.daemon import ForegroundDaemon
from tests.support.postfix import PostfixInstance

__all__ = (
    "PolicyDaemon",
    "Saslauthd",
    "SubmissionRelay",
    "require_saslauthd",
    "self_signed_certificate",
    "submission_options",
)

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
REPO_ROOT = Path(__file__).resolve().parents[2]
_PLUGIN_DIRS = (
    Path("/usr/lib/x86_64-linux-gnu/sasl2"),
    Path("/usr/lib/aarch64-linux-gnu/sasl2"),
    Path("/usr/lib/sasl2"),
)


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))


def require_saslauthd() -> tuple[str, str]:
    """Paths of ``saslauthd`` and ``testsaslauthd``; skip (by hand) or fail (CI) without them.

    The PLAIN and LOGIN plugins (``libsasl2-modules``) are checked too: without them
    Postfix offers no mechanism and every test would fail for a reason that is not ours.
    """
    saslauthd, tester = _which("saslauthd"), _which("testsaslauthd")
    plugins = any((d / "libplain.so.2").exists() for d in _PLUGIN_DIRS)
    require(
        saslauthd is not None and tester is not None and plugins,
        "Cyrus SASL not installed (apt-get install sasl2-bin libsasl2-modules)",
    )
    assert saslauthd is not None and tester is not None  # require() skipped otherwise
    return saslauthd, tester


def _private_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)  # the postfix user must reach the socket inside
    return path


class Saslauthd(ForegroundDaemon):
    """A private ``saslauthd -a ldap`` that checks a password by binding as the user.

    ``ldap_auth_method: bind``: the daemon searches the account (as ``bind_dn``, which
    needs read access to the entries, not to ``userPassword``), then binds as the
    account with the given password, so the directory's own password check decides
    (hashes, lockout policies). ``ldap_group_dn`` + ``ldap_group_attr: member`` +
    ``ldap_group_match_method: attr``: then it compares ``member=<account DN>`` on the
    relay-allow group, and a right password of an account outside the group is refused.

    ``cache=True`` adds ``-c`` (Debian's default in /etc/default/saslauthd); it exists
    so a test can show why the relay must not use it.
    """

    name = "saslauthd"

    def __init__(
        self,
        *,
        ldap_url: str,
        bind_dn: str,
        bind_password: str,
        search_base: str,
        group_dn: str,
        user_filter: str = "(uid=%u)",
        cache: bool = False,
        start_timeout: float = 10.0,
    ) -> None:
        self.saslauthd, self.tester = require_saslauthd()
        self.root = _private_dir("relaydesk-saslauthd-")
        self.run_dir = self.root / "run"
        self.run_dir.mkdir(mode=0o755)
        self.mux = self.run_dir / "mux"
        self.config = self.root / "saslauthd.conf"
        super().__init__(log_path=self.root / "saslauthd.log", start_timeout=start_timeout)
        self.cache = cache
        # The service account's password is in this file: readable by root only.
        self.config.touch(mode=0o600)
        self.config.write_text(
            f"ldap_servers: {ldap_url.rstrip('/')}/\n"
            "ldap_version: 3\n"
            f"ldap_bind_dn: {bind_dn}\n"
            f"ldap_bind_pw: {bind_password}\n"
            f"ldap_search_base: {search_base}\n"
            "ldap_scope: one\n"
            f"ldap_filter: {user_filter}\n"
            "ldap_auth_method: bind\n"
            f"ldap_group_dn: {group_dn}\n"
            "ldap_group_attr: member\n"
            "ldap_group_match_method: attr\n"
            "ldap_timeout: 5\n"
            "ldap_time_limit: 5\n"
        )

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Saslauthd:
        """Start the daemon in the foreground (``-d``) and wait for its ``mux`` socket."""
        if self.running:
            return self
        args = [self.saslauthd, "-a", "ldap", "-O", str(self.config), "-m", str(self.run_dir),
                "-n", "2", "-d"]
        if self.cache:
            args.append("-c")
        # SIGTERM to our pid only: saslauthd stops its own workers. Its shutdown signals
        # its process group, so the test run is kept out of it (a session of its own).
        self._spawn(args, ready=lambda: stat.S_ISSOCK(self.mux.stat().st_mode),
                    waiting_for=f"create {self.mux}", start_new_session=True)
        return self

    def close(self) -> None:
        """Stop the daemon and delete its directory (config, socket, log)."""
        super().close()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- use ---------------------------------------------------------------------------

    def check(self, user: str, password: str, *, service: str = "smtp") -> bool:
        """Ask the daemon directly (``testsaslauthd``), bypassing Postfix and libsasl2."""
        result = subprocess.run(
            [self.tester, "-u", user, "-p", password, "-s", service, "-f", str(self.mux)],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        return result.returncode == 0 and 'OK "Success."' in result.stdout

    def smtpd_conf(self) -> str:
        """The libsasl2 application file ``smtpd.conf`` that sends Postfix to this daemon.

        Only PLAIN and LOGIN: with ``saslauthd`` the server needs the clear password to
        bind with, so the challenge-response mechanisms could not work, and offering
        them would only make clients pick one that fails.
        """
        return (
            "pwcheck_method: saslauthd\n"
            f"saslauthd_path: {self.mux}\n"
            "mech_list: PLAIN LOGIN\n"
        )


def self_signed_certificate(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A throw-away EC key and self-signed certificate (``openssl req -x509``), valid 2 days.

    Returns ``(key, certificate)`` in the order ``smtpd_tls_chain_files`` wants them.
    """
    openssl = shutil.which("openssl")
    require(openssl is not None, "openssl not installed (apt-get install openssl)")
    assert openssl is not None
    key, cert = directory / "relay-key.pem", directory / "relay-cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={common_name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    os.chmod(key, 0o600)
    return key, cert


# master.cf: a service line "<service> inet <5 fields> smtpd", then "  -o name=value" lines.
_SERVICE_RE = re.compile(r"^ ?(\S+)\s+inet(?:\s+\S+){5}\s+smtpd\b")
_OPTION_RE = re.compile(r"^\s+-o\s+(\S+=\S*)\s*$")


def submission_options(files: Mapping[str, bytes], submission_port: int) -> tuple[str, ...]:
    """The ``-o`` options of the generated submission service, as the operator installs them.

    Read from ``master.cf.fragment`` when the renderer produces one, else from the
    master.cf lines the renderer prints as comments in ``main.cf.fragment``. Either way
    the test runs what the generated configuration says, not a copy of it typed here.
    """
    if "master.cf.fragment" in files:
        lines = files["master.cf.fragment"].decode("ascii").splitlines()
    else:
        text = files["main.cf.fragment"].decode("ascii")
        lines = [line[1:] for line in text.splitlines() if line.startswith("#")]
    options: list[str] = []
    inside = False
    for line in lines:
        if service := _SERVICE_RE.match(line):
            name = service.group(1).rsplit(":", 1)[-1]
            inside = name in (str(submission_port), "submission")
        elif inside and (option := _OPTION_RE.match(line)):
            options.append(option.group(1))
        else:
            inside = False
    if not options:
        raise ValueError(f"no submission service for port {submission_port} in the artefacts")
    return tuple(options)


class SubmissionRelay(PostfixInstance):
    """A private Postfix whose one listening smtpd is the generated submission service.

    ``extra_main_cf`` gets what stays relay-local (docs/relay-sasl.md): the certificate.
    ``smtpd_conf`` is written to ``<config_dir>/sasl/smtpd.conf``: Debian's Postfix looks
    for the Cyrus application file in ``$config_directory/sasl`` and, as found here,
    does not honour ``cyrus_sasl_config_path`` (with only that set, smtpd offered every
    installed mechanism and checked passwords against ``/etc/sasldb2``). ``options`` are
    the submission service's
    ``-o`` options (:func:`submission_options`); set them before :meth:`start` when
    they come from artefacts rendered for this instance's ``map_dir``.
    """

    def __init__(
        self,
        *,
        tls_key: Path,
        tls_cert: Path,
        smtpd_conf: str,
        options: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            extra_main_cf=(
                f"smtpd_tls_chain_files = {tls_key}, {tls_cert}\n"
                # Log the SASL login and the TLS protocol of each session (traceability).
                "smtpd_tls_loglevel = 1\n"
            )
        )
        self.options = options
        self.smtpd_conf = smtpd_conf

    def write_config(self, main_cf_fragment: str, master_cf_fragment: str | None = None) -> Path:
        if master_cf_fragment is not None:
            raise ValueError("SubmissionRelay writes its own master.cf: pass options instead")
        directory = super().write_config(main_cf_fragment)
        sasl = directory / "sasl"
        sasl.mkdir(mode=0o755, exist_ok=True)
        (sasl / "smtpd.conf").write_text(self.smtpd_conf)
        master = directory / "master.cf"
        listen = f"{self.host}:{self.port} inet n - n - - smtpd\n"
        text = master.read_text()
        if not text.startswith(listen):
            raise RuntimeError(f"unexpected master.cf from PostfixInstance:\n{text}")
        service = listen + "".join(f"  -o {option}\n" for option in self.options)
        master.write_text(service + text[len(listen):])
        past = time.time() - 60  # a settled mtime: Postfix tools re-read fresh files slowly
        os.utime(master, (past, past))
        return directory


class PolicyDaemon:
    """Relaydesk's policy service (``python -m requests_app.policyd``) as a subprocess.

    Started when the generated ``main.cf.fragment`` points Postfix at a policy service
    (``check_policy_service``): without it every RCPT gets the fragment's default action
    (451), so the relay under test would not be the generated one. ``redis_url`` is a
    private Redis (``tests.support.redis.PrivateRedis``).
    """

    def __init__(self, *, policy_file: Path, port: int, redis_url: str, log_path: Path) -> None:
        self.policy_file = policy_file
        self.port = port
        self.redis_url = redis_url
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> PolicyDaemon:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "requests_app.policyd", "--policy", str(self.policy_file),
                 "--listen", f"127.0.0.1:{self.port}", "--redis", self.redis_url],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"policyd did not listen on 127.0.0.1:{self.port}: {self.log()}")

    def stop(self) -> None:
        """Stop our policyd (its pid only)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""
