"""Processes survive their dependencies and start with the settings they should.

* The Celery worker (with embedded beat, as ``dev.py`` runs it) outlives a broker outage
  and consumes again when the broker is back. Before, it gave up after one reconnect
  attempt (about 2 s) and exited.
* A web process started without ``DJANGO_SETTINGS_MODULE`` (gunicorn importing
  ``onboarding.wsgi``) runs the production settings, which refuse the public development
  key. Before, importing the package chose ``local`` first: DEBUG on, public key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery

from requests_app.models import Notification
from tests.factories import RelayRequestFactory
from tests.support.redis import PrivateRedis
from tests.support.worker import celery_worker
from tests.support.worker import wait_for

ROOT = Path(__file__).resolve().parents[1]
STRONG_KEY = "k" * 20 + "-a-production-secret-for-this-test-0123456789"  # noqa: S105


# --- the worker and a broker outage ------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_with_beat_outlives_a_broker_outage_and_then_runs_new_tasks(
    team, requester, tmp_path
):
    # given a worker with embedded beat consuming from a private Redis (skipped without
    # redis-server)
    with PrivateRedis() as redis:
        url = redis.url
        with celery_worker(extra_env={"CELERY_BROKER_URL": url},
                           extra_args=("-B", "-s", str(tmp_path / "beat-schedule"))) as worker:
            # when the broker goes away for five seconds
            redis.stop()
            assert not redis.answers()
            time.sleep(5)
            alive_during_outage = worker.poll() is None
            # and a task is sent once it is back
            redis.start()
            req = RelayRequestFactory(team=team, created_by=requester)
            row = Notification.objects.create(request=req, kind="submitted",
                                              event_key="outage-test", recipients=["a@b.org"])
            # not the current app: shared tasks of later tests must keep the test's broker
            sender = Celery("outage-test", broker=url, set_as_current=False)
            # Celery lets the CELERY_BROKER_URL variable (set in CI's Redis pass) override
            # broker=, so the connection is named explicitly.
            try:
                with sender.connection_for_write(url) as connection:
                    sender.send_task("relaydesk.send_notification", args=[row.pk],
                                     connection=connection)
            finally:
                sender.close()
            sent = wait_for(
                lambda: Notification.objects.get(pk=row.pk).status == Notification.Status.SENT,
                timeout=90,
            )
            alive_after = worker.poll() is None
            log = "".join(worker.log)
    # then the worker never exited, said it was reconnecting, and ran the new task
    assert alive_during_outage, log[-3000:]
    assert "Trying again in" in log or "Trying to re-establish" in log, log[-3000:]
    assert sent, f"the task sent after the outage never ran:\n{log[-3000:]}"
    assert alive_after, log[-3000:]


def test_worker_and_beat_retry_the_broker_for_ever_but_publishing_fails_fast():
    # given the Celery configuration every process loads (base settings)
    from onboarding.celery import app

    # then the long-lived connections never give up, and a publish is bounded
    assert app.conf.broker_connection_retry is True
    assert app.conf.broker_connection_max_retries is None
    assert app.conf.broker_connection_timeout <= 5
    policy = app.conf.task_publish_retry_policy
    assert policy["max_retries"] <= 2 and policy["interval_max"] <= 1


# --- which settings a process starts with -------------------------------------------------


def _python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with no DJANGO_SETTINGS_MODULE at all."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("DJANGO_SETTINGS_MODULE", "DJANGO_SECRET_KEY", "DJANGO_DEBUG")}
    base.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                 "RELAYDESK_VAR_DIR": str(tmp_path), **env})
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base,
                          capture_output=True, text=True, timeout=120)


WSGI_PROBE = """
import json, os
from wsgiref.util import setup_testing_defaults
import onboarding.wsgi
from django.conf import settings
environ = {"PATH_INFO": "/healthz", "HTTP_HOST": "relaydesk.example.org"}
setup_testing_defaults(environ)
answer = []
body = b"".join(onboarding.wsgi.application(environ, lambda s, h: answer.append(s)))
print(json.dumps({"module": os.environ["DJANGO_SETTINGS_MODULE"], "debug": settings.DEBUG,
                  "key": settings.SECRET_KEY, "status": answer[0], "body": body.decode()}))
"""


def test_wsgi_without_the_settings_variable_runs_production(tmp_path):
    # given only what production needs: a real key and the host name
    # when gunicorn's import of onboarding.wsgi happens with no DJANGO_SETTINGS_MODULE
    result = _python(WSGI_PROBE, tmp_path, DJANGO_SECRET_KEY=STRONG_KEY,
                     DJANGO_ALLOWED_HOSTS="relaydesk.example.org")
    # then the production settings are in force and the app answers
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["module"] == "onboarding.settings.production"
    assert facts["debug"] is False
    assert facts["key"] == STRONG_KEY
    assert (facts["status"], facts["body"]) == ("200 OK", "ok")


@pytest.mark.parametrize(
    "key",
    [pytest.param(None, id="no_key_case"),
     pytest.param("insecure-dev-key-change-me", id="public_dev_key_case")],
)
def test_wsgi_without_the_settings_variable_refuses_to_start_without_a_real_key(
    tmp_path, key
):
    # given no key, or the public development key
    env = {"DJANGO_ALLOWED_HOSTS": "relaydesk.example.org"}
    if key is not None:
        env["DJANGO_SECRET_KEY"] = key
    # when the WSGI module is imported
    result = _python(WSGI_PROBE, tmp_path, **env)
    # then the process stops, naming the variable, and nothing was served
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
    assert result.stdout == ""


def test_manage_py_without_the_settings_variable_runs_local(tmp_path):
    # given no settings variable (a developer's shell)
    base = {k: v for k, v in os.environ.items()
            if k not in ("DJANGO_SETTINGS_MODULE", "DJANGO_SECRET_KEY", "DJANGO_DEBUG")}
    base.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
                 "RELAYDESK_VAR_DIR": str(tmp_path)})
    # when manage.py runs
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "import os; from django.conf import settings; "
         "print(os.environ['DJANGO_SETTINGS_MODULE'], settings.DEBUG)"],
        cwd=ROOT, env=base, capture_output=True, text=True, timeout=120,
    )
    # then it chose the development settings itself
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["onboarding.settings.local",
                                                              "True"]
