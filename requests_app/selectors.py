"""Read-side queries, each applying the caller's visibility scope.

A requester sees their teams' requests; approvers and auditors see every request.
Objects outside the scope are simply not found (404, never 403), so their existence
does not leak.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING

import idna
from django.db.models import F
from django.db.models import Q
from django.db.models import QuerySet
from django.db.models import Value
from django.db.models.expressions import OrderBy
from django.db.models.functions import Concat
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
    "ASSIGNED_CHOICES",
    "QUEUE_STATES",
    "SORT_KEYS",
    "event_list_for_user",
    "events_for_display",
    "request_get_for_user",
    "request_list_for_user",
    "request_queue",
    "request_search",
    "search_needles",
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


def request_queue(user: AbstractBaseUser, **filters: object) -> QuerySet[RelayRequest]:
    """The approvers' queue: open requests oldest first, filtered (see ``request_search``).

    The row shows team, requester and the check summary, all from this one query
    (``select_related`` plus the denormalised ``check_summary``), so the page costs a
    constant number of queries whatever its length.
    """
    return request_search(user, queue=True, **filters)  # type: ignore[arg-type]


#: ``?assigned=``: a claimed request's approver is the viewer, or nobody has claimed it.
ASSIGNED_CHOICES = ("me", "none")

#: ``?sort=`` (``-key`` for descending): the whitelisted columns and what they order by.
#: Every ordering ends with the primary key, so equal values keep one order between
#: pages and between the page and its CSV export.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "id": (),
    "submitted": ("submitted_at", "created_at"),
    "created": ("created_at",),
    "kind": ("kind",),
    "subject": ("subject_key",),  # the FQDN or the account name, whichever the kind has
    "team": ("team__slug",),
    "requester": ("created_by__username",),
    "state": ("state",),
    "checks": ("check_verdict",),
    "assigned": ("assigned_to__username",),
    "drifted": ("drifted_at",),
}

_IDN_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def search_needles(q: str) -> tuple[str, ...]:
    """What a search box text is looked for as, in the form the columns store.

    Names are stored as punycode and addresses in canonical text (``search_text``), so
    a Unicode name (``bücher.example``) is also searched label by label as punycode
    (``xn--bcher-kva.example``: whole labels, as IDNA encodes labels, not parts), and
    an address in any textual form (``2001:DB8::10``, the expanded form, ``[::1]``) as
    its canonical text. The typed text itself, lower-cased, is always one needle.
    """
    text = q.strip().lower().translate(_IDN_DOTS).rstrip(".")
    if not text:
        return ()
    needles = [text]
    try:
        needles.append(str(ipaddress.ip_address(text.strip("[]"))))
    except ValueError:
        pass
    if not text.isascii():
        labels = []
        for label in text.split("."):
            try:
                labels.append(label if label.isascii() else
                              idna.encode(label, uts46=True, transitional=False).decode())
            except idna.IDNAError:  # not a name: the typed text is the only needle
                labels = []
                break
        if labels:
            needles.append(".".join(labels))
    return tuple(dict.fromkeys(needles))


def request_search(
    user: AbstractBaseUser,
    *,
    queue: bool = False,
    kind: str = "",
    state: str = "",
    team: str = "",
    q: str = "",
    verdict: str = "",
    tier: str = "",
    drifted: bool = False,
    assigned: str = "",
    sort: str = "",
) -> QuerySet[RelayRequest]:
    """The requester list (``queue=False``) or the approvers' queue, filtered and sorted.

    One query for the rows (team, requester, submitter and assignee joined), so a page
    costs the same number of queries at 1 row and at 100. The queue without a state
    filter shows the open requests; ``drifted`` shows active entries whose DNS moved.
    ``q`` matches the FQDN or account name (Unicode or punycode), an address in any
    textual form, a sender domain or address, the requester's username or name, the
    team, or ``#id``. ``sort`` is a key of :data:`SORT_KEYS`, ``-`` for descending;
    empty gives the view's natural order (queue: oldest submitted first; list: newest).
    """
    qs = request_list_for_user(user).select_related("assigned_to")
    if drifted:
        # Active entries whose DNS no longer matches (nightly recheck), oldest drift first.
        qs = qs.filter(state=RequestState.ACTIVE, drifted_at__isnull=False)
    elif state:
        qs = qs.filter(state=state)
    elif queue:
        qs = qs.filter(state__in=QUEUE_STATES)
    if kind:
        qs = qs.filter(kind=kind)
    if team:
        qs = qs.filter(team__slug=team)
    if verdict:
        qs = qs.filter(check_verdict=verdict)
    if tier:
        qs = qs.filter(quota_tier=tier)
    if assigned == "me":
        qs = qs.filter(assigned_to_id=user.pk)
    elif assigned == "none":
        qs = qs.filter(assigned_to__isnull=True)
    if q.strip():
        qs = qs.alias(requester_name=Concat("created_by__first_name", Value(" "),
                                            "created_by__last_name"))
        match = Q()
        for needle in search_needles(q):
            match |= (Q(search_text__contains=needle)
                      | Q(sender_addresses__icontains=needle)
                      | Q(created_by__username__icontains=needle)
                      | Q(requester_name__icontains=needle)
                      | Q(team__slug__icontains=needle))
        # "#123" search: ASCII digits that fit the column ("²".isdigit() is true too)
        digits = q.strip().removeprefix("#")
        if digits.isascii() and digits.isdigit() and len(digits) <= 18:
            match |= Q(pk=int(digits))
        qs = qs.filter(match)
    # one of the two is empty for every kind (a server has no account name, an account
    # no FQDN), so their concatenation sorts like the subject the row shows
    qs = qs.alias(subject_key=Concat("fqdn", "account_name"))
    return qs.order_by(*_ordering(sort, queue=queue, drifted=drifted))


def _ordering(sort: str, *, queue: bool, drifted: bool) -> list[OrderBy]:
    """The ORDER BY of ``sort``; never-set dates (never submitted) sort last both ways."""
    if not sort:
        sort = "drifted" if drifted else ("submitted" if queue else "-created")
    descending = sort.startswith("-")
    fields = SORT_KEYS[sort.removeprefix("-")]
    return [F(name).desc(nulls_last=True) if descending else F(name).asc(nulls_last=True)
            for name in (*fields, "pk")]


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
