"""The whole production shape on loopback, for fault tests: web, worker with beat, broker.

``RelaydeskSystem`` runs the app as separate processes against the database pytest-django
created: ``manage.py runserver`` (the web), ``celery worker -B`` (tasks and the periodic
sweep, every ``sweep_every`` seconds) and a private ``redis-server`` as the broker, on
free loopback ports. Each part can be stopped and started again on the same port, and the
worker can be killed with SIGKILL, so a test can take a dependency away in the middle of
the work and check what the database, the served relay config and the mailbox say
afterwards. The broker is private (not the machine's Redis) so stopping it disturbs
nothing else; it keeps nothing on disk, so a restart also loses every queued message,
which is the harder case: only the database and the sweep can bring the work back.

Users drive the web through its JSON API with tokens, as scripts and the UI's own
requests do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.redis import PrivateRedis
from tests.support.redis import redis_server_available
from tests.support.smtp import free_port
from tests.support.worker import ROOT
from tests.support.worker import database_url
from tests.support.worker import wait_for

RELAY_TOKEN = "fault-test-relay-token"  # noqa: S105 - test-only


class _Process:
    """A subprocess whose output is kept, restartable with the same command."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready: str) -> None:
        self.name, self.argv, self.env, self.ready_marker = name, argv, env, ready
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def start(self, timeout: float = 60) -> None:
        ready = threading.Event()
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line)
                if self.ready_marker in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.log[-40:]))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, no ack, no requeue."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, n: int = 60) -> str:
        return "".join(self.log[-n:])


class RelaydeskSystem:
    """Web + worker/beat + private Redis, configured by environment like production."""

    def __init__(self, *, dns_nameserver: str, smtp_host: str, smtp_port: int,
                 extra_env: dict[str, str] | None = None, sweep_every: float = 1.0) -> None:
        if not redis_server_available():
            raise FileNotFoundError("redis-server")
        self.tmp = Path(tempfile.mkdtemp(prefix="relaydesk-faults-"))
        # redis-server writes its log to a file here, for logs()
        self.redis_log = self.tmp / "redis.log"
        self.redis = PrivateRedis(extra_args=("--logfile", str(self.redis_log)),
                                  start_timeout=60)
        self.redis_port = self.redis.port
        self.web_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        env = {
            **os.environ,
            # local settings: real Celery semantics (not eager), SMTP mail by environment
            "DJANGO_SETTINGS_MODULE": "onboarding.settings.local",
            "DJANGO_DEBUG": "False",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": self.redis.url,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "DNS_NAMESERVERS": dns_nameserver,
            "DNS_LIFETIME_SECONDS": "1",
            "RELAY_SPF_INCLUDE": "_spf.example.org",
            "RELAY_APPROVED_SENDER_DOMAINS": "example.org",
            "RELAY_CONFIG_TOKEN": RELAY_TOKEN,
            "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": smtp_host,
            "EMAIL_PORT": str(smtp_port),
            "EMAIL_TIMEOUT": "3",
            "RELAYDESK_MAIL_RETRY_BACKOFF": "0.5",
            "RELAYDESK_SWEEP_AFTER_SECONDS": "1",
            "RELAYDESK_SWEEP_EVERY_SECONDS": str(sweep_every),
            **(extra_env or {}),
        }
        env.pop("RELAYDESK_REQUIRE_TOOLS", None)
        self.env = env
        self.web = _Process(
            "web",
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.web_port}",
             "--noreload", "--nothreading"],
            env, "Quit the server with",
        )
        self.worker = _Process(
            "worker",
            [sys.executable, "-m", "celery", "-A", "onboarding", "worker", "-B",
             "--pool=solo", "--loglevel=INFO", "--without-heartbeat", "--without-gossip",
             "--without-mingle", "-s", str(self.tmp / "beat-schedule")],
            env, " ready.",
        )

    def __enter__(self) -> RelaydeskSystem:
        self.redis.__enter__()
        self.web.start()
        self.worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for part in (self.worker, self.web):
            part.stop()
        self.redis.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def logs(self) -> str:
        parts = [(p.name, p.tail()) for p in (self.web, self.worker)]
        parts.append(("redis", self._redis_tail()))
        return "\n".join(f"--- {name}\n{tail}" for name, tail in parts)

    def _redis_tail(self, n: int = 60) -> str:
        try:
            lines = self.redis_log.read_text(errors="replace").splitlines(keepends=True)
        except OSError:
            return ""
        return "".join(lines[-n:])

    # --- the API, as a script or the UI uses it ------------------------------------

    def call(self, method: str, path: str, *, token: str | None = None,
             body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Token {token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                status, raw, ctype = resp.status, resp.read(), resp.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers["Content-Type"] or ""
        if ctype and ctype.startswith("application/json"):
            return status, json.loads(raw or b"null")
        return status, raw.decode(errors="replace")

    @staticmethod
    def token(user: Any) -> str:
        """An API token for the user (the processes hash passwords unlike the test run)."""
        from rest_framework.authtoken.models import Token

        return Token.objects.get_or_create(user=user)[0].key

    def served(self, name: str = "client_access.cidr") -> str:
        status, body = self.call("GET", f"/relay-config/{name}", token=RELAY_TOKEN)
        assert status == 200, body
        return body


def wait_until(predicate, timeout: float = 60) -> bool:  # type: ignore[no-untyped-def]
    """``wait_for`` that looks once more at the deadline (a slow last poll still counts)."""
    return wait_for(predicate, timeout=timeout, interval=0.25) or bool(predicate())
