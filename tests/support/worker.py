"""Start a real Celery worker process against the test database and the configured broker.

The embedded default is kombu's filesystem transport; CI's second pass sets
``CELERY_BROKER_URL=redis://...`` so the same test runs on Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the database pytest-django created, for the worker process."""
    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@contextmanager
def celery_worker(extra_env: dict[str, str] | None = None, timeout: float = 60,
                  extra_args: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[str]]:
    """Run ``celery worker`` until the block ends; the test process publishes for real.

    ``extra_args`` go to the worker's command line (``-B`` embeds beat, as dev.py does).
    """
    from onboarding.celery import app

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "onboarding.settings.test",
        "CELERY_TASK_ALWAYS_EAGER": "0",  # retries and follow-up tasks go through the broker
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "DNS_NAMESERVERS": ",".join(settings.DNS_NAMESERVERS),
        "DNS_LIFETIME_SECONDS": str(settings.DNS_LIFETIME_SECONDS),
        "RELAY_SPF_INCLUDE": settings.RELAY_SPF_INCLUDE,
        "RELAY_APPROVED_SENDER_DOMAINS": ",".join(settings.RELAY_APPROVED_SENDER_DOMAINS),
        **(extra_env or {}),
    }
    try:
        app.control.purge()  # stale messages of an earlier run must not confuse this one
    except Exception:  # noqa: BLE001 - a transport without purge is fine
        pass
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "onboarding", "worker", "--pool=solo",
         "--loglevel=INFO", "--without-heartbeat", "--without-gossip", "--without-mingle",
         *extra_args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if " ready." in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    try:
        if not ready.wait(timeout):
            raise RuntimeError("celery worker did not start:\n" + "".join(lines[-40:]))
        proc.log = lines  # type: ignore[attr-defined]
        yield proc
    finally:
        app.conf.task_always_eager = eager
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for(predicate, timeout: float = 60, interval: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
