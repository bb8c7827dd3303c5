"""Directory provisioning of functional accounts: the relay-allow group in LDAP.

An approved functional account must be a ``member`` of the relay-allow group
(``DIRECTORY_RELAY_GROUP_DN``) before the relay accepts its login; revocation and expiry
take it out again. Every such change is a :class:`~requests_app.models.DirectoryChange`
row, written in the caller's transaction, so the change exists if and only if the
decision that caused it committed (the outbox pattern of ``notifications.py``).

Two modes, switched by ``DIRECTORY_URL``:

* configured: the row starts ``pending`` and the ``relaydesk.provision_directory`` task
  applies it with ldap3 after commit. Transient trouble (socket refused, timeouts, busy or
  unavailable server) raises :class:`DirectoryUnavailable` so Celery retries with backoff;
  a permanent answer (no such object, insufficient access, bad credentials) marks the row
  ``failed`` and puts it on the approvers' to-do list.
* not configured: the row is ``manual`` at once, with the exact LDIF an administrator
  applies, and shows up on the to-do list until someone marks it done.

Applying is idempotent: "already a member" and "no such value" are successes, because
the end state is what the row asks for. Each outcome writes a ``directory`` audit event.
"""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import ldap3
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext
from ldap3.core import exceptions as ldap_exc
from ldap3.core import results as ldap_results
from ldap3.utils.dn import escape_rdn
from ldap3.utils.dn import parse_dn

from . import activation
from . import events
from .dispatch import dispatch_on_commit
from .exceptions import ActionConflict
from .kinds import logs_in
from .models import DirectoryChange
from .models import RelayRequest
from .models import RequestEvent
from .models import RequestState
from .models import is_approver
from .models import requesting_side
from .validators import validate_account_name

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = [
    "TRANSIENT_EXCEPTIONS",
    "DirectoryRefused",
    "DirectoryUnavailable",
    "InvalidAccountName",
    "account_dn",
    "directory_change_enqueue",
    "directory_apply",
    "directory_give_up",
    "directory_mark_done_manually",
    "directory_sync",
    "live_holder",
    "open_connection",
    "raise_for",
    "own_team_change",
    "pending_manual_changes",
    "render_ldif",
]

log = logging.getLogger(__name__)

SYSTEM = events.SYSTEM
ACCOUNT_PLACEHOLDER = "{account}"
# States in which a request grants its account relay access (the group must hold it).
LIVE_STATES = (RequestState.PROVISIONING, RequestState.ACTIVE)
OPEN_STATUSES = (
    DirectoryChange.Status.PENDING,
    DirectoryChange.Status.MANUAL,
    DirectoryChange.Status.FAILED,
)
# Result codes that mean "the directory already looks like this" (AD answers 68 to a
# duplicate member; OpenLDAP 20), so a replayed change is a success, not an error.
_ALREADY_MEMBER = frozenset(
    {ldap_results.RESULT_ATTRIBUTE_OR_VALUE_EXISTS, ldap_results.RESULT_ENTRY_ALREADY_EXISTS}
)
_NOT_A_MEMBER = frozenset({ldap_results.RESULT_NO_SUCH_ATTRIBUTE})
# Result codes worth retrying: the server is alive but cannot serve us right now.
_TRANSIENT_RESULTS = frozenset(
    {
        ldap_results.RESULT_BUSY,
        ldap_results.RESULT_UNAVAILABLE,
        ldap_results.RESULT_TIME_LIMIT_EXCEEDED,
        ldap_results.RESULT_ADMIN_LIMIT_EXCEEDED,
    }
)
# Exceptions that say nothing about the change itself, only about reaching the server.
_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    ldap_exc.LDAPCommunicationError,  # socket open/send/receive, session terminated
    ldap_exc.LDAPResponseTimeoutError,
    ldap_exc.LDAPMaximumRetriesError,
    OSError,
)


class DirectoryUnavailable(Exception):
    """The directory could not be reached or asked us to come back later (retried)."""


class DirectoryRefused(Exception):
    """The directory gave a definitive "no" (recorded as ``failed``; never retried)."""


class InvalidAccountName(ValueError):
    """The account name cannot be placed safely in ``DIRECTORY_ACCOUNT_DN_TEMPLATE``."""


# --- pure helpers ----------------------------------------------------------------------


def account_dn(account: str, template: str | None = None) -> str:
    """The account's DN from the template, refusing anything that could change its shape.

    Defence in depth against DN injection (``svc,ou=admins``): the name must already be a
    normalised, valid account name (no silent rewriting: the DN must name exactly the
    account that was approved), the value is escaped with ``escape_rdn`` anyway, and the
    result must parse into as many RDNs as the template itself has.
    """
    template = settings.DIRECTORY_ACCOUNT_DN_TEMPLATE if template is None else template
    if template.count(ACCOUNT_PLACEHOLDER) != 1:
        raise ImproperlyConfigured(
            "DIRECTORY_ACCOUNT_DN_TEMPLATE must contain {account} exactly once."
        )
    try:
        normalised = validate_account_name(account)
    except ValidationError as exc:
        raise InvalidAccountName(f"{account!r}: {' '.join(exc.messages)}") from None
    if normalised != account:
        raise InvalidAccountName(f"{account!r} is not in normalised form ({normalised!r}).")
    escaped = escape_rdn(account)
    dn = template.replace(ACCOUNT_PLACEHOLDER, escaped)
    try:
        shape = len(parse_dn(template.replace(ACCOUNT_PLACEHOLDER, "x")))
        parsed = parse_dn(dn)
    except ldap_exc.LDAPInvalidDnError as exc:
        raise InvalidAccountName(f"{account!r} does not give a valid DN: {exc}") from None
    if len(parsed) != shape or not any(value == escaped for _attr, value, _sep in parsed):
        raise InvalidAccountName(f"{account!r} changes the structure of the account DN.")
    return dn


def _ldif_line(attribute: str, value: str) -> str:
    """One LDIF line; values RFC 2849 calls unsafe (non-ASCII, leading space...) go base64."""
    safe = (
        value.isascii()
        and not any(ch in value for ch in "\0\n\r")
        and not value.startswith((" ", ":", "<"))
        and not value.endswith(" ")
    )
    if safe:
        return f"{attribute}: {value}"
    return f"{attribute}:: {base64.b64encode(value.encode()).decode('ascii')}"


def render_ldif(*, action: str, group_dn: str, member_dn: str) -> str:
    """The exact change, as ``ldapmodify`` takes it, for the trail and the to-do list."""
    verb = "add" if action == DirectoryChange.Action.ADD else "delete"
    return "\n".join(
        [
            _ldif_line("dn", group_dn),
            "changetype: modify",
            f"{verb}: member",
            _ldif_line("member", member_dn),
            "-",
        ]
    )


@dataclass(frozen=True)
class _Spec:
    """What one change does, derived from the request and the settings of the moment."""

    action: str
    group_dn: str
    member_dn: str

    @property
    def ldif(self) -> str:
        return render_ldif(action=self.action, group_dn=self.group_dn, member_dn=self.member_dn)


def _spec_for(request: RelayRequest, action: str) -> _Spec:
    return _Spec(
        action=action,
        group_dn=settings.DIRECTORY_RELAY_GROUP_DN,
        member_dn=account_dn(request.account_name),
    )


# --- audit -----------------------------------------------------------------------------


def _event(
    change: DirectoryChange,
    comment: str,
    *,
    actor: AbstractBaseUser | None = None,
    **extra: object,
) -> RequestEvent:
    parameters: dict[str, object] = {
        "change_id": change.pk,
        "action": change.action,
        "status": change.status,
        "attempts": change.attempts,
        "ldif": change.ldif,
        **extra,
    }
    if actor is None:
        return events.system_event(
            change.request, RequestEvent.Type.DIRECTORY, comment=comment, parameters=parameters
        )
    # A person's confirmation must carry their name in the actor columns, not in a
    # parameter: the trail is filtered and exported by actor.
    # events.py has no public actor-bearing variant for this type yet (see docs/directory.md).
    return events._insert(
        change.request,
        RequestEvent.Type.DIRECTORY,
        actor=actor,
        from_state=change.request.state,
        to_state=change.request.state,
        comment=comment,
        parameters=parameters,
    )


def _other_live_holder(request: RelayRequest) -> RelayRequest | None:
    """Another request that still grants the same account (a renewal or replacement).

    Removing the member for the old request would cut off the new one, so a removal is
    skipped while such a request exists.
    """
    return (
        RelayRequest.objects.filter(
            kind=request.kind, account_name=request.account_name, state__in=LIVE_STATES
        )
        .exclude(pk=request.pk)
        .order_by("pk")
        .first()
    )


def _member_through(request: RelayRequest) -> RelayRequest | None:
    """An active request of the same account whose own ``add`` is done: the account is
    already a member of the relay group."""
    return (
        RelayRequest.objects.filter(
            kind=request.kind, account_name=request.account_name, state=RequestState.ACTIVE,
            directory_changes__action=DirectoryChange.Action.ADD,
            directory_changes__status=DirectoryChange.Status.DONE,
        )
        .exclude(pk=request.pk)
        .order_by("pk")
        .first()
    )


def _close(change: DirectoryChange, *, by: str, error: str = "") -> None:
    change.status = DirectoryChange.Status.DONE
    change.done_at = timezone.now()
    change.done_by = by[:150]
    change.last_error = error
    change.save(update_fields=["status", "done_at", "done_by", "last_error", "updated_at"])


# --- services --------------------------------------------------------------------------


def directory_change_enqueue(*, request: RelayRequest, action: str) -> DirectoryChange:
    """Record a group change for a functional account and schedule it after commit.

    Call inside the service's transaction (approve → ``add``; revoke, expire →
    ``remove``). Older open changes of the same request are closed as superseded under a
    row lock, so a slow add that is still retrying can never land after the removal.
    An account name unfit for a DN is recorded as ``failed`` (nothing reaches the
    directory; the relay refuses the login, which is the safe side) instead of rolling
    back the approver's decision.
    """
    if not logs_in(request.kind):
        raise ValueError(f"request #{request.pk} is not a functional-account request")
    if action not in DirectoryChange.Action.values:
        raise ValueError(f"unknown directory action {action!r}")
    configured = bool(settings.DIRECTORY_URL)
    change = DirectoryChange.objects.create(
        request=request,
        action=action,
        status=(DirectoryChange.Status.PENDING if configured else DirectoryChange.Status.MANUAL),
    )
    older = (
        DirectoryChange.objects.select_for_update(of=("self",))
        .filter(request=request, status__in=OPEN_STATUSES)
        .exclude(pk=change.pk)
    )
    for stale in older:
        _close(stale, by=f"superseded by #{change.pk}")
        _event(stale, f"Directory change #{stale.pk} superseded by #{change.pk}.")

    try:
        spec = _spec_for(request, action)
    except InvalidAccountName as exc:
        change.status = DirectoryChange.Status.FAILED
        change.last_error = str(exc)
        change.save(update_fields=["status", "last_error", "updated_at"])
        _event(change, f"Directory change refused: {exc}", error=str(exc))
        return change
    change.ldif = spec.ldif
    change.save(update_fields=["ldif", "updated_at"])

    holder = _other_live_holder(request) if action == DirectoryChange.Action.REMOVE else None
    member_via = (_member_through(request)
                  if action == DirectoryChange.Action.ADD and not configured else None)
    if member_via is not None:
        # Manual mode: asking an administrator to add a member the group already has
        # (through the entry this renewal replaces) would hold the renewal in
        # provisioning for nothing.
        _close(change, by=SYSTEM)
        _event(
            change,
            f"{spec.member_dn} is already in the relay group through request "
            f"#{member_via.pk}: nothing to do.",
            member_through=member_via.pk,
        )
    elif holder is not None:
        _close(change, by=SYSTEM)
        _event(
            change,
            f"{spec.member_dn} stays in the relay group: request #{holder.pk} still grants it.",
            kept_for=holder.pk,
        )
    elif configured:
        _event(change, f"Directory change queued: {action} {spec.member_dn}.")
        dispatch_on_commit("provision_directory", change.pk)
    else:
        _event(
            change,
            f"No directory configured: an administrator must {action} {spec.member_dn} "
            f"in {spec.group_dn} (LDIF in parameters).",
            group_dn=spec.group_dn,
            member_dn=spec.member_dn,
        )
    return change


def _connection() -> ldap3.Connection:
    """An opened, bound connection; every network step has ``DIRECTORY_TIMEOUT_SECONDS``."""
    parts = urlsplit(settings.DIRECTORY_URL)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise ImproperlyConfigured("DIRECTORY_URL must look like ldap[s]://host[:port]/")
    timeout = float(settings.DIRECTORY_TIMEOUT_SECONDS)
    # ldap3's Server refuses a trailing slash or a DN path, so keep scheme and authority.
    server = ldap3.Server(
        f"{parts.scheme}://{parts.netloc}", connect_timeout=timeout, get_info=ldap3.NONE
    )
    conn = ldap3.Connection(
        server,
        user=settings.DIRECTORY_BIND_DN or None,
        password=settings.DIRECTORY_BIND_PASSWORD or None,
        # ldap3 packs this into SO_RCVTIMEO as whole seconds: it must be an int.
        receive_timeout=max(1, math.ceil(timeout)),
        raise_exceptions=False,
        auto_referrals=False,
    )
    conn.open()
    if not conn.bind():
        _raise_for(conn, "bind")
    return conn


def _raise_for(conn: ldap3.Connection, step: str) -> None:
    result = conn.result or {}
    code = result.get("result")
    text = f"{step}: {result.get('description', 'error')} ({code}) {result.get('message', '')}"
    if code in _TRANSIENT_RESULTS:
        raise DirectoryUnavailable(text.strip())
    raise DirectoryRefused(text.strip())


def _modify(spec: _Spec) -> str:
    """Apply one membership change; returns what the directory said, in words."""
    conn = _connection()
    try:
        if spec.action == DirectoryChange.Action.ADD:
            # An approved account that does not exist is most likely a typo: say so rather
            # than leave a dangling member that starts working for whoever is created later.
            if not conn.search(
                spec.member_dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[]
            ):
                _raise_for(conn, f"look up {spec.member_dn}")
            ok = conn.modify(spec.group_dn, {"member": [(ldap3.MODIFY_ADD, [spec.member_dn])]})
            idempotent, word = _ALREADY_MEMBER, "already a member"
        else:
            ok = conn.modify(
                spec.group_dn, {"member": [(ldap3.MODIFY_DELETE, [spec.member_dn])]}
            )
            idempotent, word = _NOT_A_MEMBER, "was not a member"
        if ok:
            return "added" if spec.action == DirectoryChange.Action.ADD else "removed"
        if conn.result.get("result") in idempotent:
            return word
        _raise_for(conn, "modify")
        raise AssertionError("unreachable")  # _raise_for always raises
    finally:
        try:
            conn.unbind()
        except _TRANSIENT_EXCEPTIONS:  # the change is decided; a broken goodbye is not news
            pass


def _locked_change(change_id: int) -> DirectoryChange | None:
    """The change row, locked (not its request) for the rest of the transaction."""
    return (
        DirectoryChange.objects.select_for_update(of=("self",))
        .select_related("request")
        .filter(pk=change_id)
        .first()
    )


def directory_apply(*, change_id: int) -> str:
    """Make the directory match one change; safe to run any number of times.

    The row is locked for the duration, so two deliveries of the task (``acks_late``)
    cannot both work on it, and a removal being enqueued waits for a running add. Returns
    ``done``, ``failed``, ``missing`` or ``skipped:<status>``; raises
    :class:`DirectoryUnavailable` after recording the attempt, for Celery to retry.
    """
    transient: DirectoryUnavailable | None = None
    with transaction.atomic():
        change = _locked_change(change_id)
        if change is None:
            log.info("directory change %s is gone; nothing to apply", change_id)
            return "missing"
        if change.status != DirectoryChange.Status.PENDING:
            return f"skipped:{change.status}"
        request = change.request
        change.attempts += 1
        try:
            spec = _spec_for(request, change.action)
            if spec.ldif != change.ldif:
                raise DirectoryRefused(
                    "the account name or directory settings changed since this change was "
                    "queued; apply the recorded LDIF by hand if it is still right"
                )
            holder = (
                _other_live_holder(request)
                if change.action == DirectoryChange.Action.REMOVE
                else None
            )
            if holder is not None:
                _close(change, by=SYSTEM)
                _event(
                    change,
                    f"{spec.member_dn} stays in the relay group: request #{holder.pk} "
                    "still grants it.",
                    kept_for=holder.pk,
                )
                return DirectoryChange.Status.DONE
            outcome = _modify(spec)
        except _TRANSIENT_EXCEPTIONS as exc:
            transient = DirectoryUnavailable(f"{exc.__class__.__name__}: {exc}")
        except DirectoryUnavailable as exc:
            transient = exc
        except (
            DirectoryRefused,
            InvalidAccountName,
            ImproperlyConfigured,
            ldap_exc.LDAPException,
        ) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
            change.status = DirectoryChange.Status.FAILED
            change.last_error = error
            change.save(update_fields=["status", "attempts", "last_error", "updated_at"])
            _event(change, f"Directory change failed: {error}", error=error)
            log.warning("directory change %s failed: %s", change_id, error)
            return DirectoryChange.Status.FAILED
        else:
            change.status = DirectoryChange.Status.DONE
            change.done_at = timezone.now()
            change.done_by = SYSTEM
            change.last_error = ""
            change.save()
            _event(change, f"Directory: {spec.member_dn} {outcome}.", outcome=outcome)
            _activate_after(change)
            return DirectoryChange.Status.DONE
        change.last_error = str(transient)
        change.save(update_fields=["attempts", "last_error", "updated_at"])
    # Raised after commit, so the attempt count and the error survive the retry.
    log.info("directory change %s: %s; will retry", change_id, transient)
    raise transient


@transaction.atomic
def directory_give_up(*, change_id: int, error: str) -> DirectoryChange | None:
    """After the last retry: mark the change ``failed`` so it lands on the to-do list.

    Without this a long outage would leave the row ``pending`` with nobody looking at it.
    """
    change = _locked_change(change_id)
    if change is None or change.status != DirectoryChange.Status.PENDING:
        return change
    change.status = DirectoryChange.Status.FAILED
    change.last_error = error
    change.save(update_fields=["status", "last_error", "updated_at"])
    _event(
        change,
        f"Directory unreachable after {change.attempts} attempts; left for an "
        f"administrator: {error}",
        error=error,
    )
    return change


def directory_sync(request: RelayRequest, action: str) -> None:
    """Functional accounts join the relay-allow group on approval and leave it on removal.

    Called by the services after a transition and by the relay build when a renewal
    supersedes an entry, inside their transaction.
    """
    if not logs_in(request.kind):
        return
    if action == "approve":
        directory_change_enqueue(request=request, action=DirectoryChange.Action.ADD)
    elif request.state in (RequestState.REVOKED, RequestState.EXPIRED) or (
        # rejected after approval (its provisioning failed): undo the approval's add
        action == "reject" and request.directory_changes.filter(
            action=DirectoryChange.Action.ADD).exists()
    ):
        directory_change_enqueue(request=request, action=DirectoryChange.Action.REMOVE)


@transaction.atomic
def directory_mark_done_manually(*, change_id: int, by: AbstractBaseUser) -> DirectoryChange:
    """An approver confirms an administrator applied the LDIF; records who, in the trail.

    Only open to-dos (``manual`` or ``failed``) can be confirmed: a ``pending`` change
    belongs to the provisioner, and a ``done`` one is already settled. Segregation of
    duties, as for decisions: an approver who is a member of the account's team (or
    filed the request) cannot confirm its change; another approver must, so nobody
    vouches alone for their own team's relay access.
    """
    if not is_approver(by):
        raise PermissionDenied(gettext("Only approvers can confirm directory changes."))
    change = _locked_change(change_id)
    if change is None:
        raise DirectoryChange.DoesNotExist(f"directory change {change_id} does not exist")
    if own_team_change(change, by):
        raise PermissionDenied(gettext(
            "Directory change #%(change)s is for an account of your own team (request "
            "#%(pk)s); another approver must mark it done (segregation of duties).")
            % {"change": change.pk, "pk": change.request_id})
    if change.status not in (DirectoryChange.Status.MANUAL, DirectoryChange.Status.FAILED):
        raise ActionConflict(gettext(
            "Directory change #%(change)s is %(status)s; only manual or failed changes can "
            "be marked done.") % {"change": change.pk, "status": change.get_status_display()})
    previous = change.status
    _close(change, by=by.get_username(), error=change.last_error)
    _event(
        change,
        f"Directory change #{change.pk} marked done by {by.get_username()}.",
        actor=by,
        previous_status=previous,
    )
    _activate_after(change)
    return change


def _activate_after(change: DirectoryChange) -> None:
    """An account whose relay-group ``add`` is now done may be usable: activate it if a
    relay config version already serves it (``activation.activate_if_ready`` locks the
    request row; otherwise the next config build activates it)."""
    if change.action == DirectoryChange.Action.ADD:
        activation.activate_if_ready(change.request_id,
                                     via=f"directory change #{change.pk} done")


def own_team_change(change: DirectoryChange, user: AbstractBaseUser) -> bool:
    """Whether ``user`` is on the requesting side of the change's request (the rule
    that also keeps approvers from deciding it: ``models.requesting_side``)."""
    return bool(requesting_side(change.request, user))


def pending_manual_changes() -> QuerySet[DirectoryChange]:
    """The approvers' to-do list: changes a person must apply, oldest first.

    Includes ``failed`` changes: after a permanent error (or giving up on retries) an
    administrator is the only way forward, exactly as in the manual mode.
    """
    return (
        DirectoryChange.objects.filter(
            status__in=(DirectoryChange.Status.MANUAL, DirectoryChange.Status.FAILED)
        )
        .select_related("request", "request__team")
        .order_by("created_at", "pk")
    )


# Shared with credentials.py, which sets passwords over the same connection and retry
# rules (a password change is directory work like a membership change).
TRANSIENT_EXCEPTIONS = _TRANSIENT_EXCEPTIONS
open_connection = _connection
raise_for = _raise_for
live_holder = _other_live_holder
