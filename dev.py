#!/usr/bin/env python3
"""Relaydesk's two commands, for a fresh machine with only Python 3.11+.

    python3 dev.py run     # venv + pinned deps, migrate, demo users, Celery worker, web
    python3 dev.py test    # venv + pinned deps, then the whole test suite (pytest)

Both create ``.venv`` and install ``requirements.txt`` the first time (and again
whenever that file changes). ``run`` uses the embedded default unless DATABASE_URL /
CELERY_BROKER_URL are set: SQLite in var/, kombu's filesystem broker in var/broker,
mail written to var/outbox.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
REQUIREMENTS = ROOT / "requirements.txt"
STAMP = VENV / ".requirements.sha256"


def ensure_venv() -> None:
    """Create the venv and install pinned requirements when they changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may run under an older python3
        sys.exit("Relaydesk needs Python 3.11 or newer.")
    if not PY.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("installing pinned requirements ...", flush=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True)
    STAMP.write_text(digest)


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, check=True)


def run(argv: list[str]) -> int:
    ensure_venv()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "onboarding.settings.local"}
    address = argv[0] if argv else "127.0.0.1:8000"
    manage("migrate", "--noinput", "-v", "0", env=env)
    manage("seed_demo", env=env)
    # A real worker process with embedded beat (the outbox sweep), on the same broker.
    worker = subprocess.Popen(
        [PY, "-m", "celery", "-A", "onboarding", "worker", "-B", "--pool=solo",
         "--loglevel=INFO", "-s", str(ROOT / "var" / "celerybeat-schedule")],
        cwd=ROOT, env=env,
    )
    web = subprocess.Popen([PY, "manage.py", "runserver", address, "--noreload"],
                           cwd=ROOT, env=env)
    print(f"\nRelaydesk on http://{address}/  (log in as 'requester' or 'approver')\n",
          flush=True)
    try:
        while worker.poll() is None and web.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (web, worker):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (web, worker):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


def test(argv: list[str]) -> int:
    ensure_venv()
    env = {**os.environ}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # pyproject.toml selects the test settings
    result = subprocess.run([PY, "-m", "pytest", *argv], cwd=ROOT, env=env)
    if result.returncode == 5:
        print("pytest collected no tests: that is a failure here.", file=sys.stderr)
        return 1
    return result.returncode


def main() -> int:
    commands = {"run": run, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
