"""Recertification: reminders before the date, expiry after it.

Each active entry carries ``recertify_by`` (``RELAY_RECERTIFY_AFTER`` after activation
or the last recertification). The daily sweep reminds the owning team
``RELAY_RECERTIFY_REMINDER_DAYS`` before (30, 7 and 1 day by default), each reminder
once (its outbox key holds the date and the day count), and expires entries whose date
has passed, which removes them from the next relay config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import RelayRequest
from .models import RequestState
from .notifications import notification_record
from .notifications import owner_recipients
from .services import request_expire

__all__ = ["RecertificationStats", "recertification_sweep"]

log = logging.getLogger(__name__)


@dataclass
class RecertificationStats:
    reminded: int = 0
    expired: int = 0


def _remind(today: date, days: int) -> int:
    due = today + timedelta(days=days)
    sent = 0
    for request in RelayRequest.objects.select_related("team", "created_by").filter(
        state=RequestState.ACTIVE, recertify_by=due
    ):
        key = f"request:{request.pk}:recertify:{request.recertify_by.isoformat()}:{days}d"
        with transaction.atomic():
            recipients = owner_recipients(request)
            if not recipients:
                continue
            _row, created = notification_record(
                request=request, kind="recertify_reminder", key=key, recipients=recipients,
                context={"days": days, "recertify_by": request.recertify_by.isoformat()},
            )
            sent += created
    return sent


def recertification_sweep(*, today: date | None = None) -> RecertificationStats:
    """Send due reminders and expire overdue entries (idempotent: safe to run twice)."""
    today = today or timezone.localdate()
    stats = RecertificationStats()
    for days in sorted(set(settings.RELAY_RECERTIFY_REMINDER_DAYS), reverse=True):
        stats.reminded += _remind(today, days)
    for pk in RelayRequest.objects.filter(
        state=RequestState.ACTIVE, recertify_by__lt=today
    ).values_list("pk", flat=True):
        if request_expire(request_id=pk) is not None:
            stats.expired += 1
    log.info("recertification: %s", stats)
    return stats
