"""How a request in ``checking`` reaches a worker: one wake-up message per burst.

A submission (or a re-check) used to send one ``run_request_checks`` message per
request. Since a check task takes every waiting request along in one batch, a burst of
2,000 submissions left 1,950 messages that found their request already checked and
only cost a broker delivery, an acknowledgement and a read each: more, on two cores,
than the checks themselves (docs/check-pipeline.md).

Now a submission arms a :class:`~requests_app.models.WakeToken` after its commit and
sends ``check_waiting_requests`` only if the token was not armed already. The task
disarms the token *before* it looks for waiting requests, so every submission is
either committed before that look (and found by it) or arms the token again and sends
a new message: no request waits for a message that is not coming. A token whose
message was lost (a broker that forgot it) is armed again by the first submission
after :func:`lease_seconds`; the periodic sweep dispatches whatever still waits.

``RELAY_CHECK_BATCH_SIZE = 1`` keeps one message per request (the old path).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .dispatch import dispatch_on_commit
from .dispatch import registered_task
from .models import WakeToken

__all__ = [
    "CHECKS_TOKEN",
    "check_batch_size",
    "dispatch_checks_on_commit",
    "lease_seconds",
    "wake_arm",
    "wake_disarm",
    ]

log = logging.getLogger(__name__)

# The token of the check pipeline's wake-up message.
CHECKS_TOKEN = "checks"

# How many waiting requests one check task takes (``RELAY_CHECK_BATCH_SIZE``).
CHECK_BATCH_SIZE = 50


def check_batch_size() -> int:
    """``RELAY_CHECK_BATCH_SIZE`` (default 50); 1 runs every request in its own task."""
    return int(getattr(settings, "RELAY_CHECK_BATCH_SIZE", CHECK_BATCH_SIZE))


def lease_seconds() -> float:
    """The DNS deadline (``DNS_LIFETIME_SECONDS``) plus ten seconds to record a run.

    Two things are trusted for this long: a request a check task claimed (its lease),
    and an armed token (its message on the way). A message queued behind a longer
    backlog only costs one more message when the token is armed again, while a lost one
    delays the waiting requests by this much at most (or until the sweep, when nothing
    is submitted meanwhile).
    """
    return float(settings.DNS_LIFETIME_SECONDS) + 10.0


def wake_arm(name: str) -> bool:
    """Arm the token; True if it was idle (or stale), so the caller sends the message.

    In a burst the token is armed nearly every time: a read says so without a write
    (on SQLite a write, even one that matches nothing, waits for the database's one
    write lock, behind a worker recording a batch). Otherwise one conditional
    ``UPDATE`` decides between concurrent submissions: one of them updates the row. The
    row is created on first use (migration 0012 creates it; a flushed test database
    has none); a concurrent creation makes the loser's insert fail, and the loser sends
    nothing.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=lease_seconds())
    row = WakeToken.objects.filter(name=name).values_list("armed_at").first()
    if row is not None:  # the read says whether the row exists, and whether it is armed
        if row[0] is not None and row[0] >= stale:
            return False
        return bool(WakeToken.objects.filter(
            Q(armed_at__isnull=True) | Q(armed_at__lt=stale), name=name,
        ).update(armed_at=now))
    try:
        with transaction.atomic():
            WakeToken.objects.create(name=name, armed_at=now)
    except IntegrityError:
        return False
    return True


def wake_disarm(name: str) -> None:
    """Disarm the token: the next submission sends a message again."""
    WakeToken.objects.filter(name=name).update(armed_at=None)


def dispatch_checks_on_commit(request_id: int) -> None:
    """After commit, make sure a worker will check ``request_id`` (and its burst).

    A broker or database outage must not fail the user's submission: the request is
    in ``checking`` in the database, and the sweep dispatches it (the failure is
    logged). A failed publish disarms the token, so the next submission tries again.
    """
    if check_batch_size() <= 1:
        dispatch_on_commit("run_request_checks", request_id)
        return
    task = registered_task("check_waiting_requests")

    def send() -> None:
        try:
            if not wake_arm(CHECKS_TOKEN):
                return
        except Exception:  # the database right after commit: never fail the user for it
            log.warning("wake token unavailable: request %s left for the sweep", request_id,
                        exc_info=True)
            return
        try:
            task.delay()
        except Exception:  # kombu's OperationalError, or a refusal it does not wrap
            log.warning("broker unavailable: checks of request %s left for the sweep",
                        request_id, exc_info=True)
            try:
                wake_disarm(CHECKS_TOKEN)  # the next submission tries again
            except Exception:
                log.warning("wake token left armed; it goes stale in %.0f s",
                            lease_seconds(), exc_info=True)

    transaction.on_commit(send, robust=True)
