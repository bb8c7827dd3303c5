"""Dispatch by registered task name: the modules that send work never import ``tasks.py``.

``dispatch_on_commit("x", ...)`` sends the task registered as ``relaydesk.x``, so every
name the package sends, and every task the beat schedule names, must be registered in
any process that has only started Django (a web process imports no task module by
itself). An unknown name fails at the call, inside the caller's transaction.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery.exceptions import NotRegistered
from django.conf import settings
from django.db import transaction

from requests_app.dispatch import TASK_NAMESPACE
from requests_app.dispatch import dispatch_on_commit
from requests_app.models import Notification
from tests.factories import RelayRequestFactory

ROOT = Path(__file__).resolve().parent.parent

REGISTERED_AFTER_SETUP = """
import json, django
django.setup()
from celery import current_app
print(json.dumps(sorted(name for name in current_app.tasks if name.startswith("relaydesk."))))
"""


def names_dispatched_in_the_package() -> set[str]:
    """The first argument of every ``dispatch_on_commit("...")`` call in requests_app."""
    names = set()
    for path in (ROOT / "requests_app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            first = node.args[0]
            if called in ("dispatch_on_commit", "registered_task") and isinstance(
                    first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def test_every_task_the_package_sends_is_registered_once_django_has_started():
    # given a fresh interpreter that only starts Django (as a web process does)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "onboarding.settings.test"}
    # when it lists the tasks its Celery app knows
    result = subprocess.run([sys.executable, "-c", REGISTERED_AFTER_SETUP], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    registered = set(json.loads(result.stdout.strip().splitlines()[-1]))
    # then every name dispatched in the package and every scheduled task is among them
    dispatched = {f"{TASK_NAMESPACE}.{name}" for name in names_dispatched_in_the_package()}
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"relaydesk.send_notification", "relaydesk.provision_directory",
            "relaydesk.run_request_checks", "relaydesk.rebuild_relay_config"} <= dispatched
    assert dispatched - registered == set()
    assert scheduled - registered == set()


@pytest.mark.django_db
def test_an_unknown_task_name_fails_the_change_and_sends_nothing(
    django_capture_on_commit_callbacks,
):
    # given a change in progress
    request = RelayRequestFactory()
    # when it dispatches a task name nobody registered
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(NotRegistered):
        with transaction.atomic():
            Notification.objects.create(request=request, kind="submitted", event_key="k",
                                        recipients=["a@example.org"], context={})
            dispatch_on_commit("no_such_task", 1)
    # then the transaction rolled back and nothing is sent after commit
    assert callbacks == []
    assert not Notification.objects.filter(event_key="k").exists()
