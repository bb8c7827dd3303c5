"""Send a Celery task after the transaction commits, by the task's registered name.

Part of the core: services, domain modules and the outbox call it, and it imports
nothing of the package. A caller names the task (``"send_notification"``), and the
task registered as ``relaydesk.send_notification`` in the Celery app is sent, so a
module that sends work never imports ``tasks.py``, which imports the modules that do
the work. ``RequestsAppConfig.ready`` imports ``tasks.py``, so every process (web,
worker, management command) has the tasks registered before it dispatches.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery import current_app
from django.db import transaction
from kombu.exceptions import OperationalError

__all__ = ["TASK_NAMESPACE", "dispatch_on_commit", "registered_task"]

log = logging.getLogger(__name__)

# Every task of the package is registered as "relaydesk.<name>" (tasks.py names them).
TASK_NAMESPACE = "relaydesk"


def registered_task(task_name: str) -> Task:
    """The task registered as ``relaydesk.<task_name>``.

    Raises Celery's ``NotRegistered`` for an unknown name, at the call, inside the
    caller's transaction: a typo fails the change instead of being lost after commit.
    """
    return current_app.tasks[f"{TASK_NAMESPACE}.{task_name}"]


def dispatch_on_commit(task_name: str, *args: Any) -> None:
    """Send a task after commit; a broker outage must not lose the work or fail the user.

    The database already says what is pending (a request in ``checking`` or
    ``provisioning``, a notification row not yet sent), and the periodic sweep
    re-dispatches it, so a failed publish is logged, not raised.
    """
    task = registered_task(task_name)

    def send() -> None:
        try:
            task.delay(*args)
        except OperationalError:  # kombu's wrapper for every transport's connection error
            log.warning("broker unavailable: %s%r left for the sweep", task_name, args)

    transaction.on_commit(send)
