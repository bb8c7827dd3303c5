"""One account per use case, and who else already asked for a host: the duplicate rules.

A functional account is one directory login for one use case: its owners, its
senders, its quota and its audit trail all hang off that one request. A second open
request for the same login would split them (two teams, two quotas, one password), so
it is **refused**, naming the request that holds the name: the way forward is to renew
that request (``replaces``) or to have its team hand it over. A renewal of the holder
is the one exception.

An FQDN or address is different: two servers behind one NAT address, or a host moving
from one team's request to another's, are legitimate. So a host that another open
request already names is a **warning** on the form, in the API answer and on the
approvers' page, naming that request, never a refusal.

"Open" is every state from submission to active: a draft claims nothing (two teams may
draft the same name; the first to submit holds it), and a rejected, withdrawn, revoked
or expired request is history. Look-ups are one query each whatever the number of
addresses or requests (``Lower`` for the names, one ``search_text`` filter for the
addresses, then an exact comparison in Python), and case-insensitive, because rows
stored before a normalisation rule may still hold capitals.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils.translation import gettext as _

from .kinds import KINDS
from .kinds import login_kinds
from .models import RelayRequest
from .models import RequestState

__all__ = [
    "CLAIMING_STATES",
    "Holder",
    "HostSubject",
    "account_holders",
    "account_refusal",
    "check_account_free",
    "host_overlaps",
    "overlap_warning",
    "subject_of",
]

#: The states in which a request holds its account name (and names its host).
CLAIMING_STATES = (
    RequestState.CHECKING,
    RequestState.NEEDS_CHANGES,
    RequestState.PENDING_APPROVAL,
    RequestState.PROVISIONING,
    RequestState.PROVISIONING_FAILED,
    RequestState.ACTIVE,
)


@dataclass(frozen=True)
class Holder:
    """Another open request that holds a value this one also names."""

    request_id: int
    state: str
    team: str
    field: str  # "account_name", "fqdn", "address"
    value: str

    @property
    def state_label(self) -> str:
        return str(RequestState(self.state).label).lower()

    def as_dict(self) -> dict[str, object]:
        return {"request": self.request_id, "state": self.state, "team": self.team,
                "field": self.field, "value": self.value}


def _unrelated(qs: object, *, exclude_pk: int | None, replaces_pk: int | None) -> object:
    """Leave out the request itself, the entry it renews, and renewals of itself:
    those are the same entry, not a second one."""
    if exclude_pk is not None:
        qs = qs.exclude(pk=exclude_pk).exclude(replaces_id=exclude_pk)
    if replaces_pk is not None:
        qs = qs.exclude(pk=replaces_pk)
    return qs


def account_holders(name: str, *, exclude_pk: int | None = None,
                    replaces_pk: int | None = None) -> list[Holder]:
    """The open requests (other than this one and the entry it renews) that hold the
    login ``name``, compared case-insensitively; one query."""
    if not name:
        return []
    wanted = name.strip().lower()
    holders: list[Holder] = []
    for spec in login_kinds():
        qs = (RelayRequest.objects.filter(kind=spec.value, state__in=CLAIMING_STATES)
              .annotate(_login=Lower(spec.login_field)).filter(_login=wanted))
        qs = _unrelated(qs, exclude_pk=exclude_pk, replaces_pk=replaces_pk)
        for pk, state, team in qs.order_by("pk").values_list("pk", "state", "team__slug"):
            holders.append(Holder(pk, state, team, spec.login_field, wanted))
    return holders


def account_refusal(holders: Sequence[Holder]) -> ValidationError:
    """The refusal, on the ``account_name`` field, naming each holder (#N, state, team)."""
    named = ", ".join(f"#{h.request_id} ({h.state_label}, team {h.team})" for h in holders)
    first = holders[0].request_id
    return ValidationError(
        {"account_name": [ValidationError(
            _("The account name '%(name)s' is already taken by request %(named)s. One "
              "account per use case: renew request #%(first)s (or ask its team to hand it "
              "over) instead of filing a second request for the same account.")
            % {"name": holders[0].value, "named": named, "first": first},
            code="account_taken",
        )]}
    )


def check_account_free(request: RelayRequest) -> None:
    """Raise :func:`account_refusal` if another open request holds this request's login.

    For the services: create, edit and submit (and approve, as the last gate).
    """
    spec = KINDS.get(request.kind)
    if spec is None or not spec.authenticates:
        return
    holders = account_holders(getattr(request, spec.login_field), exclude_pk=request.pk,
                              replaces_pk=request.replaces_id)
    if holders:
        raise account_refusal(holders)


@dataclass(frozen=True)
class HostSubject:
    """What the host look-up compares: a request's FQDN and addresses (saved or not)."""

    key: int | None  # the request's pk (None: a form not saved yet)
    fqdn: str
    addresses: tuple[str, ...]
    replaces_pk: int | None = None


def subject_of(request: RelayRequest) -> HostSubject:
    """The host look-up's view of a saved request."""
    return HostSubject(request.pk, request.fqdn or "", tuple(request.addresses),
                       request.replaces_id)


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def host_overlaps(subjects: Iterable[HostSubject]) -> dict[int | None, list[Holder]]:
    """For each subject, the other open requests naming its FQDN or one of its addresses.

    One query for any number of subjects: FQDNs compared lower-cased, addresses found
    through the lower-cased ``search_text`` column and then compared as IP addresses
    (so ``10.0.0.1`` never matches ``10.0.0.10``). Server kinds only: accounts name no host.
    """
    subjects = [s for s in subjects if s.fqdn or s.addresses]
    if not subjects:
        return {}
    fqdns = {s.fqdn.strip().lower().rstrip(".") for s in subjects if s.fqdn}
    addresses = {a for s in subjects for a in (_address(x) for x in s.addresses) if a}
    condition = Q(_fqdn__in=fqdns) if fqdns else Q(pk__in=[])
    for address in addresses:
        condition |= Q(search_text__contains=str(address).lower())
    host_kinds = [spec.value for spec in KINDS.values() if spec.host_checks]
    rows = list(
        RelayRequest.objects.filter(kind__in=host_kinds, state__in=CLAIMING_STATES)
        .annotate(_fqdn=Lower("fqdn")).filter(condition)
        .order_by("pk")
        .values_list("pk", "state", "team__slug", "fqdn", "ipv4", "ipv6", "replaces_id")
    )
    out: dict[int | None, list[Holder]] = {}
    for subject in subjects:
        fqdn = subject.fqdn.strip().lower().rstrip(".")
        mine = {a for a in (_address(x) for x in subject.addresses) if a}
        found: list[Holder] = []
        for pk, state, team, other_fqdn, ipv4, ipv6, replaces_id in rows:
            if pk == subject.key or pk == subject.replaces_pk or (
                    subject.key is not None and replaces_id == subject.key):
                continue
            if fqdn and (other_fqdn or "").lower().rstrip(".") == fqdn:
                found.append(Holder(pk, state, team, "fqdn", fqdn))
            theirs = {a for a in (_address(x) for x in [*(ipv6 or []), *(ipv4 or [])]) if a}
            for address in sorted(mine & theirs, key=lambda a: (a.version, int(a))):
                found.append(Holder(pk, state, team, "address", str(address)))
        if found:
            out[subject.key] = found
    return out


def overlap_warning(holder: Holder) -> str:
    """One warning sentence naming the other request."""
    what = _("FQDN") if holder.field == "fqdn" else _("Address")
    return _("%(what)s %(value)s is also on request #%(pk)s (%(state)s, team %(team)s): "
             "check that both are meant (a renewal or a handover of that request may be "
             "what is needed).") % {"what": what, "value": holder.value,
                                    "pk": holder.request_id, "state": holder.state_label,
                                    "team": holder.team}
