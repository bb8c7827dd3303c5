"""Celery tasks for functional-account passwords (kept apart from ``tasks.py``).

Imported by ``tasks.py`` so every process registers them, like ``directory_tasks``.
"""

from __future__ import annotations

import logging

from celery import shared_task

from .credentials import credential_apply
from .credentials import credential_give_up
from .credentials import credential_issue_on_activation
from .credentials import credential_sweep as credential_sweep_run
from .directory import DirectoryUnavailable
from .directory_tasks import DIRECTORY_RETRY_OPTIONS
from .models import AccountCredential

__all__ = ["apply_credential", "credential_sweep", "issue_credential"]

log = logging.getLogger(__name__)


@shared_task(name="relaydesk.apply_credential", **DIRECTORY_RETRY_OPTIONS)
def apply_credential(self, change_id: int) -> str:  # type: ignore[no-untyped-def]
    """Set one recorded password in the directory, with the directory's retry rules.

    ``acks_late`` is safe: ``credential_apply`` skips rows that are no longer pending, and
    setting the same stored password twice leaves the directory as once. After the last
    retry the row is ``failed`` and its secret wiped: no link for a password not set.
    """
    try:
        return credential_apply(change_id=change_id)
    except DirectoryUnavailable as exc:
        if self.request.retries >= self.max_retries:
            log.warning("credential %s: giving up after retries: %s", change_id, exc)
            credential_give_up(change_id=change_id, error=str(exc))
            return AccountCredential.Status.FAILED
        raise


@shared_task(name="relaydesk.credential_sweep", acks_late=True)
def credential_sweep() -> dict[str, int]:
    """Every minute: expired links wiped, overlaps ended, reminders, lost work re-sent."""
    stats = credential_sweep_run()
    return {"expired": stats.expired, "overlaps_closed": stats.overlaps_closed,
            "reminded": stats.reminded, "redispatched": stats.redispatched}


@shared_task(name="relaydesk.issue_credential", acks_late=True)
def issue_credential(request_id: int) -> str:
    """An account went live: record its first password (issue mode; idempotent)."""
    row = credential_issue_on_activation(request_id=request_id)
    return f"credential {row.pk}" if row is not None else "skipped"
