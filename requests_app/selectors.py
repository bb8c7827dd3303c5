"""Read-side queries, each applying the caller's visibility scope.

A requester sees their teams' requests; approvers and auditors see every request.
Objects outside the scope are simply not found (404, never 403), so their existence
does not leak.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.db.models import F
from django.db.models import Q
from django.db.models import QuerySet
from django.http import Http404

from .models import RelayRequest
from .models import RequestEvent
from .models import RequestState
from .models import Team
from .models import is_approver
from .models import is_auditor
from .models import team_ids_of

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = [
    "QUEUE_STATES",
    "event_list_for_user",
    "events_for_display",
    "request_get_for_user",
    "request_list_for_user",
    "request_queue",
    "sees_everything",
    "source_ip_visible",
    "team_list_for_user",
]

QUEUE_STATES = (
    RequestState.PENDING_APPROVAL,
    RequestState.CHECKING,
    RequestState.NEEDS_CHANGES,
    # approved but left out of the relay config: waits for an approver's retry or reject
    RequestState.PROVISIONING_FAILED,
)


def sees_everything(user: AbstractBaseUser) -> bool:
    return bool(user.is_superuser) or is_approver(user) or is_auditor(user)


def team_list_for_user(user: AbstractBaseUser) -> QuerySet[Team]:
    """Teams the user may file requests for (their memberships)."""
    return Team.objects.filter(pk__in=team_ids_of(user)).order_by("slug")


def request_list_for_user(user: AbstractBaseUser) -> QuerySet[RelayRequest]:
    qs = RelayRequest.objects.select_related("team", "created_by", "submitted_by")
    if sees_everything(user):
        return qs
    return qs.filter(team_id__in=team_ids_of(user))


def request_get_for_user(user: AbstractBaseUser, pk: int) -> RelayRequest:
    try:
        return request_list_for_user(user).get(pk=pk)
    except (RelayRequest.DoesNotExist, ValueError, TypeError):
        raise Http404("No such request.") from None


def request_queue(
    user: AbstractBaseUser,
    *,
    kind: str = "",
    state: str = "",
    team: str = "",
    q: str = "",
    verdict: str = "",
    drifted: bool = False,
) -> QuerySet[RelayRequest]:
    """The approvers' queue: open requests oldest first, filtered.

    The row shows team, requester and the check summary, all from this one query
    (``select_related`` plus the denormalised ``check_summary``), so the page costs a
    constant number of queries whatever its length.
    """
    qs = request_list_for_user(user)
    if drifted:
        # Active entries whose DNS no longer matches (nightly recheck), oldest drift first.
        qs = qs.filter(state=RequestState.ACTIVE, drifted_at__isnull=False)
    elif state:
        qs = qs.filter(state=state)
    else:
        qs = qs.filter(state__in=QUEUE_STATES)
    if kind:
        qs = qs.filter(kind=kind)
    if team:
        qs = qs.filter(team__slug=team)
    if verdict:
        qs = qs.filter(check_verdict=verdict)
    if q:
        needle = q.strip().lower().rstrip(".")
        # "#123" search: ASCII digits that fit the column ("²".isdigit() is true too)
        as_pk = int(needle) if needle.isascii() and needle.isdigit() and len(needle) <= 18 else 0
        qs = qs.filter(Q(search_text__contains=needle) | Q(pk=as_pk))
    # Never-submitted rows (only with an explicit state filter) sort last on every DB.
    if drifted:
        return qs.order_by("drifted_at", "pk")
    return qs.order_by(F("submitted_at").asc(nulls_last=True), "created_at", "pk")


def event_list_for_user(user: AbstractBaseUser) -> QuerySet[RequestEvent]:
    """Audit events visible to the user, for the CSV export and the API."""
    qs = RequestEvent.objects.select_related("request", "request__team")
    if sees_everything(user):
        return qs
    return qs.filter(request__team_id__in=team_ids_of(user))


def source_ip_visible(user: AbstractBaseUser | None, event: RequestEvent) -> bool:
    """Whether ``user`` may see the address an event came from.

    Approvers and auditors see every source IP (the audit trail's "from where");
    anyone else only the address of their own actions. A requester must not learn
    where the approvers work from.
    """
    if user is None or not user.is_authenticated:
        return False
    if sees_everything(user):
        return True
    return event.actor_id is not None and event.actor_id == user.pk


def events_for_display(
    user: AbstractBaseUser, events: Iterable[RequestEvent]
) -> list[RequestEvent]:
    """The events as ``user`` may see them: source IPs they may not see are blanked.

    Blanked on the in-memory rows only; events are insert-only (``save`` refuses an
    update), so this can never reach the database.
    """
    shown = list(events)
    for event in shown:
        if event.source_ip and not source_ip_visible(user, event):
            event.source_ip = None
    return shown
