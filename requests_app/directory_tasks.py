"""The Celery task that applies directory changes (kept apart from ``tasks.py``).

Imported by ``tasks.py`` (``from .directory_tasks import provision_directory``), so that
whatever imports ``requests_app.tasks`` (``RequestsAppConfig.ready``, Celery's
autodiscovery) registers it and ``dispatch_on_commit("provision_directory", ...)`` finds it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from .directory import DirectoryUnavailable
from .directory import directory_apply
from .directory import directory_give_up
from .models import DirectoryChange

__all__ = ["DIRECTORY_MAX_RETRIES", "DIRECTORY_RETRY_OPTIONS", "provision_directory"]

log = logging.getLogger(__name__)

# 5 s doubling, capped at 10 min (well below Redis's visibility_timeout), with Celery's
# default jitter: up to about 20 minutes of outage are bridged before the change is handed
# to a person as ``failed``.
DIRECTORY_MAX_RETRIES = 8

# The task options of every task that writes to the directory (this one and
# ``credential_tasks.apply_credential``): one outage, one retry schedule for both.
DIRECTORY_RETRY_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (DirectoryUnavailable,),
    "retry_backoff": 5,
    "retry_backoff_max": 600,
    "max_retries": DIRECTORY_MAX_RETRIES,
}


@shared_task(name="relaydesk.provision_directory", **DIRECTORY_RETRY_OPTIONS)
def provision_directory(self, change_id: int) -> str:  # type: ignore[no-untyped-def]
    """Apply one :class:`~requests_app.models.DirectoryChange` by id.

    ``acks_late`` is safe because ``directory_apply`` is idempotent and skips rows that
    are no longer ``pending``. Only :class:`DirectoryUnavailable` is retried; permanent
    errors are recorded by ``directory_apply`` and end the task. On the last retry the
    change is marked ``failed`` instead of raising, so it appears on the approvers' to-do
    list rather than silently staying ``pending``.
    """
    try:
        return directory_apply(change_id=change_id)
    except DirectoryUnavailable as exc:
        if self.request.retries >= self.max_retries:
            log.warning("directory change %s: giving up after retries: %s", change_id, exc)
            directory_give_up(change_id=change_id, error=str(exc))
            return DirectoryChange.Status.FAILED
        raise
