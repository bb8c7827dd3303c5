"""Functional-account passwords: issued once, shown once, rotated, invalidated on removal.

``RELAY_ACCOUNT_CREDENTIALS`` picks who owns the password (docs/credentials.md):

* ``directory`` (default): the organisation's directory. Relaydesk only manages the
  relay-allow group (``directory.py``), tells the owners where to set the password
  (``DIRECTORY_PASSWORD_HELP``), reminds them to rotate it and records their "I rotated
  it" confirmation.
* ``issue``: Relaydesk makes a random password when the account goes live, sets it in
  the directory with the LDAP Password Modify extended operation (RFC 3062) and offers
  it to the owners once, through a one-time link. Rotation makes a new one the same way;
  revoke, expiry and supersede set a random password nobody ever sees, so the old one
  stops working even if group membership came back.

Every password change is an :class:`~requests_app.models.AccountCredential` row written
in the caller's transaction (the outbox pattern of ``directory.py``). The password is
made there and stored only encrypted (``credential_keys``), so a retry after a
directory outage sets the same password, and no link is offered before the directory
has accepted it. The row's ciphertext is emptied at the one view, at expiry, or when a
newer password supersedes it. Audit events (``RequestEvent.Type.CREDENTIAL``) record
issue, view, expiry, rotation and invalidation with who, when and from where.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from typing import TYPE_CHECKING
from typing import Any

import ldap3
from django.conf import settings
from django.contrib.auth import authenticate
from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import DateTimeField
from django.db.models import Max
from django.db.models import OuterRef
from django.db.models import QuerySet
from django.db.models import Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _
from ldap3.core import exceptions as ldap_exc
from ldap3.core import results as ldap_results

from . import events
from .credential_keys import CredentialUnreadable
from .credential_keys import decrypt
from .credential_keys import encrypt
from .credential_keys import link_token
from .credential_keys import new_salt
from .credential_keys import token_hash
from .directory import TRANSIENT_EXCEPTIONS
from .directory import DirectoryRefused
from .directory import DirectoryUnavailable
from .directory import InvalidAccountName
from .directory import account_dn
from .directory import live_holder
from .directory import open_connection
from .directory import raise_for
from .dispatch import dispatch_on_commit
from .exceptions import ActionConflict
from .kinds import login_kinds
from .kinds import logs_in
from .models import AccountCredential
from .models import RelayRequest
from .models import RequestState
from .notifications import notification_record
from .notifications import owner_recipients

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

__all__ = [
    "MODES",
    "PASSWORD_ALPHABET",
    "PASSWORD_LENGTH",
    "CredentialStats",
    "LinkGone",
    "LinkNotFound",
    "ReauthenticationRequired",
    "credential_after_transition",
    "credential_apply",
    "credential_confirm_rotated",
    "credential_give_up",
    "credential_issue_on_activation",
    "credential_link_for",
    "credential_mode",
    "credential_reveal",
    "credential_rotate_now",
    "credential_status",
    "credential_sweep",
    "generate_password",
    "last_rotated_at",
    "overdue_accounts",
    "password_help",
]

log = logging.getLogger(__name__)

MODES = ("directory", "issue")
# Letters and digits only: survives every config file format, shell and SASL client
# without quoting. 32 of 62 symbols is about 190 bits.
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32
Purpose = AccountCredential.Purpose
Status = AccountCredential.Status
# Rows whose secret may still be needed: waiting for the directory, or offered.
OPEN = (Status.PENDING, Status.OFFERED)
# Rows that mean "the account's password was set (or confirmed) at set_at".
ROTATION_PURPOSES = (Purpose.ISSUE, Purpose.ROTATE, Purpose.CONFIRM)
ROTATION_STATUSES = (Status.OFFERED, Status.VIEWED, Status.EXPIRED, Status.DONE,
                     Status.SUPERSEDED)
_NO_SUCH_VALUE = frozenset({ldap_results.RESULT_NO_SUCH_ATTRIBUTE})


class LinkNotFound(Exception):
    """No link has this token (forged or mistyped): 404."""


class LinkGone(Exception):
    """The link was used, expired or superseded: 410 (its secret is gone)."""


class ReauthenticationRequired(PermissionDenied):
    """The viewer must confirm their own password first (fresh login): 403."""


# --- pure helpers ----------------------------------------------------------------------


def credential_mode() -> str:
    """``directory`` or ``issue``; anything else is a configuration error."""
    mode = settings.RELAY_ACCOUNT_CREDENTIALS
    if mode not in MODES:
        raise ImproperlyConfigured(
            f"RELAY_ACCOUNT_CREDENTIALS must be one of {', '.join(MODES)}, not {mode!r}."
        )
    return mode


def password_help() -> str:
    """Where owners set the password in ``directory`` mode (page, API, mail)."""
    return settings.DIRECTORY_PASSWORD_HELP


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password from the operating system's CSPRNG (``secrets``)."""
    if length < 24:
        raise ValueError("account passwords have at least 24 characters")
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def _encrypt_into(row: AccountCredential, secret: str, field: str = "ciphertext") -> None:
    blob, kid = encrypt(secret, row_id=row.pk, purpose=field)
    setattr(row, field, blob)
    row.key_id = kid


def _decrypt_from(row: AccountCredential, field: str = "ciphertext") -> str:
    blob = getattr(row, field)
    if blob is None:
        raise CredentialUnreadable("the secret has been wiped")
    return decrypt(blob, row_id=row.pk, purpose=field, stored_key_id=row.key_id)


def _wipe(row: AccountCredential, status: str, now: datetime | None = None) -> None:
    """Forget the secret (and any held old value): the ciphertext columns are emptied."""
    row.status = status
    row.ciphertext = None
    row.wiped_at = now or timezone.now()


def _event(row: AccountCredential, comment: str, *, actor: AbstractBaseUser | None = None,
           source_ip: str | None = None, **extra: Any) -> None:
    events.credential_event(
        row.request, actor=actor, source_ip=source_ip, comment=comment,
        parameters={"credential_id": row.pk, "purpose": row.purpose, "status": row.status,
                    "account": row.account_name, **extra},
    )


# --- recording a password change --------------------------------------------------------


def _supersede_open(request: RelayRequest, keep: AccountCredential) -> None:
    """Older open rows of the account lose their secret: only the newest password counts."""
    for stale in AccountCredential.objects.select_for_update(of=("self",)).filter(
        account_name=request.account_name, status__in=OPEN
    ).exclude(pk=keep.pk).select_related("request"):
        _wipe(stale, Status.SUPERSEDED)
        stale.save()
        _event(stale, f"Password #{stale.pk} superseded by #{keep.pk}; its link no longer "
                      "works.", superseded_by=keep.pk)


def _enqueue(request: RelayRequest, purpose: str, *, by: AbstractBaseUser | None = None,
             source_ip: str | None = None) -> AccountCredential:
    """Record a new random password for the account and set it after commit."""
    row = AccountCredential.objects.create(
        request=request, account_name=request.account_name, purpose=purpose, created_by=by,
    )
    _supersede_open(request, row)
    if not settings.DIRECTORY_URL:
        # Nothing can set it: say so instead of offering a password that does not work.
        row.status = Status.FAILED
        row.last_error = "issue mode needs DIRECTORY_URL (a directory Relaydesk can write)"
        row.save()
        _event(row, f"Password not set: {row.last_error}.", actor=by, source_ip=source_ip)
        return row
    _encrypt_into(row, generate_password())
    row.save()
    words = {Purpose.ISSUE: "First password", Purpose.ROTATE: "Rotation",
             Purpose.INVALIDATE: "Password invalidation"}[purpose]
    _event(row, f"{words} queued for {request.account_name}.", actor=by, source_ip=source_ip)
    dispatch_on_commit("apply_credential", row.pk)
    return row


def credential_after_transition(request: RelayRequest, action: str) -> AccountCredential | None:
    """What a lifecycle step means for the password (``issue`` mode only).

    Called in the transition's transaction by the services (revoke, expire) and the relay
    build (activate, supersede). Activation issues the first password, except for a
    renewal of the same account, which keeps the password the owners already have.
    A removal invalidates the password unless another live request still grants the same
    account (a renewal going live supersedes the old one: same rule as the group).
    """
    if not logs_in(request.kind) or credential_mode() != "issue":
        return None
    if action == "activate":
        renewed = request.replaces
        if renewed is not None and renewed.account_name == request.account_name:
            return None
        return _enqueue(request, Purpose.ISSUE)
    if request.state in (RequestState.REVOKED, RequestState.EXPIRED):
        if live_holder(request) is not None:
            return None
        return _enqueue(request, Purpose.INVALIDATE)
    return None


@transaction.atomic
def credential_issue_on_activation(*, request_id: int) -> AccountCredential | None:
    """The first password of an account that went live (``issue`` mode), once.

    Dispatched by name from ``activation.activate`` after its commit; idempotent (a
    request that already has a password row, or is no longer active, is left alone).
    """
    # of=self: PostgreSQL cannot lock the nullable side of the outer join to replaces
    request = RelayRequest.objects.select_for_update(of=("self",)).filter(
        pk=request_id, state=RequestState.ACTIVE).select_related("replaces").first()
    if request is None or request.credentials.filter(
            purpose__in=(Purpose.ISSUE, Purpose.ROTATE)).exists():
        return None
    return credential_after_transition(request, "activate")


# --- applying it to the directory -------------------------------------------------------


def _read_password_values(conn: ldap3.Connection, dn: str) -> list[bytes]:
    if not conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE,
                       attributes=["userPassword"]):
        raise_for(conn, f"read userPassword of {dn}")
    for entry in conn.response or []:
        if entry.get("type") == "searchResEntry":
            values = entry.get("raw_attributes", {}).get("userPassword") or []
            return [bytes(v) for v in values]
    return []


def _hold_old_values(change_id: int) -> str:
    """Before a rotation with overlap: keep the current userPassword value(s), encrypted.

    Its own committed transaction before the change: a retry after a half-finished
    attempt must not mistake the new password's value for the old one.
    """
    with transaction.atomic():
        row = _locked(change_id)
        if row is None or row.status != Status.PENDING or row.old_ciphertext is not None:
            return "kept"
        dn = account_dn(row.account_name)
        conn = open_connection()
        try:
            values = _read_password_values(conn, dn)
        finally:
            _unbind(conn)
        # Values held by an older rotation's overlap end with this one (the Password
        # Modify below replaces them all); they are not carried over.
        older = set()
        for other in AccountCredential.objects.select_for_update(of=("self",)).filter(
            account_name=row.account_name, old_ciphertext__isnull=False
        ).exclude(pk=row.pk).select_related("request"):
            older.update(_old_values(other))
            other.old_ciphertext = None
            other.overlap_until = None
            other.save()
        keep = [v for v in values if v not in older]
        if not keep:
            return "nothing readable"
        blob, kid = encrypt(json.dumps([base64.b64encode(v).decode() for v in keep]),
                            row_id=row.pk, purpose="old_ciphertext")
        if kid != row.key_id:
            raise CredentialUnreadable("RELAY_CREDENTIAL_KEY changed during the rotation")
        row.old_ciphertext = blob
        row.save()
        return "held"


def _old_values(row: AccountCredential) -> list[bytes]:
    raw = decrypt(row.old_ciphertext, row_id=row.pk, purpose="old_ciphertext",
                  stored_key_id=row.key_id)
    return [base64.b64decode(v) for v in json.loads(raw)]


def _unbind(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except TRANSIENT_EXCEPTIONS:  # the change is decided; a broken goodbye is not news
        pass


def _set_password(row: AccountCredential, secret: str) -> str:
    """Password Modify (RFC 3062) on the account, then re-add held old values."""
    dn = account_dn(row.account_name)
    conn = open_connection()
    try:
        if not conn.extend.standard.modify_password(user=dn, new_password=secret):
            raise_for(conn, f"password modify of {dn}")
        if row.old_ciphertext is not None:
            old = _old_values(row)
            if old and not conn.modify(dn, {"userPassword": [(ldap3.MODIFY_ADD, old)]}):
                raise_for(conn, f"keep the old password of {dn} during the overlap")
            return "set; the old password works until the overlap ends"
        return "set"
    finally:
        _unbind(conn)


def _locked(change_id: int) -> AccountCredential | None:
    return (AccountCredential.objects.select_for_update(of=("self",))
            .select_related("request").filter(pk=change_id).first())


def credential_apply(*, change_id: int) -> str:
    """Set one recorded password in the directory; safe to run any number of times.

    Transient trouble raises :class:`DirectoryUnavailable` after recording the attempt
    (the task retries); a permanent refusal marks the row ``failed`` and wipes the
    secret: no link is ever offered for a password the directory did not take.
    """
    overlap = int(settings.RELAY_ACCOUNT_ROTATE_OVERLAP_MINUTES)
    transient: DirectoryUnavailable | None = None
    try:
        first = AccountCredential.objects.filter(pk=change_id).values_list(
            "purpose", "status").first()
        if first == (Purpose.ROTATE, Status.PENDING) and overlap > 0:
            _hold_old_values(change_id)
    except TRANSIENT_EXCEPTIONS as exc:
        transient = DirectoryUnavailable(f"{exc.__class__.__name__}: {exc}")
    except DirectoryUnavailable as exc:
        transient = exc
    except (DirectoryRefused, InvalidAccountName, CredentialUnreadable,
            ldap_exc.LDAPException) as exc:
        # Reading the old value is best effort: without it the old password stops at once.
        log.warning("credential %s: old password not kept for the overlap: %s",
                    change_id, exc.__class__.__name__)
    if transient is not None:
        _record_attempt(change_id, str(transient))
        raise transient
    with transaction.atomic():
        row = _locked(change_id)
        if row is None:
            return "missing"
        if row.status != Status.PENDING:
            return f"skipped:{row.status}"
        row.attempts += 1
        try:
            outcome = _set_password(row, _decrypt_from(row))
        except TRANSIENT_EXCEPTIONS as exc:
            transient = DirectoryUnavailable(f"{exc.__class__.__name__}: {exc}")
        except DirectoryUnavailable as exc:
            transient = exc
        except (DirectoryRefused, InvalidAccountName, CredentialUnreadable,
                ImproperlyConfigured, ldap_exc.LDAPException) as exc:
            error = f"{exc.__class__.__name__}: {exc}"
            _fail(row, error)
            return Status.FAILED
        else:
            _offer(row, outcome, overlap)
            return row.status
        row.last_error = str(transient)
        row.save(update_fields=["attempts", "last_error", "updated_at"])
    log.info("credential %s: %s; will retry", change_id, transient)
    raise transient


def _record_attempt(change_id: int, error: str) -> None:
    AccountCredential.objects.filter(pk=change_id, status=Status.PENDING).update(
        last_error=error[:2000], updated_at=timezone.now())


def _fail(row: AccountCredential, error: str) -> None:
    _wipe(row, Status.FAILED)
    row.old_ciphertext = None
    row.last_error = error
    row.save()
    _event(row, f"Password not set: {error}. The account keeps its previous password"
                " state; an owner can rotate again once the directory is fixed.", error=error)
    log.warning("credential %s failed: %s", row.pk, error)


def _offer(row: AccountCredential, outcome: str, overlap: int) -> None:
    """The directory has the password: offer the link (or, for an invalidation, forget)."""
    now = timezone.now()
    row.set_at = now
    row.last_error = ""
    request = row.request
    if row.purpose == Purpose.INVALIDATE:
        _wipe(row, Status.DONE, now)
        # A random password replaced every value, the held old ones too.
        for other in AccountCredential.objects.filter(
            account_name=row.account_name, old_ciphertext__isnull=False
        ).exclude(pk=row.pk):
            other.old_ciphertext = None
            other.overlap_until = None
            other.save(update_fields=["old_ciphertext", "overlap_until", "updated_at"])
        row.save()
        _event(row, f"Password of {row.account_name} replaced by a random one nobody has: "
                    "the old password no longer works.")
        return
    row.status = Status.OFFERED
    row.token_salt = new_salt()
    row.token_hash = token_hash(link_token(row.pk, row.token_salt))
    row.expires_at = now + timedelta(minutes=int(settings.RELAY_CREDENTIAL_LINK_MINUTES))
    if row.old_ciphertext is not None:
        row.overlap_until = now + timedelta(minutes=overlap)
    row.save()
    _event(row, f"Password of {row.account_name} {outcome}; one-time link sent to the "
                f"owners, valid until {row.expires_at:%Y-%m-%d %H:%M} UTC.",
           expires_at=row.expires_at.isoformat(),
           overlap_until=row.overlap_until.isoformat() if row.overlap_until else None)
    recipients = owner_recipients(request)
    if recipients:
        notification_record(
            request=request, kind="credential_link", key=f"credential:{row.pk}:link",
            recipients=recipients,
            context={"credential_id": row.pk, "account": row.account_name,
                     "purpose": row.purpose, "expires_at": row.expires_at.isoformat(),
                     "overlap_until": (row.overlap_until.isoformat()
                                       if row.overlap_until else "")},
        )


@transaction.atomic
def credential_give_up(*, change_id: int, error: str) -> AccountCredential | None:
    """After the last retry: ``failed``, secret wiped (nothing half-done is left)."""
    row = _locked(change_id)
    if row is None or row.status != Status.PENDING:
        return row
    _fail(row, f"directory unreachable after {row.attempts} attempts: {error}")
    return row


# --- owners' actions ---------------------------------------------------------------------


def _owner_request(request_id: int, by: AbstractBaseUser) -> RelayRequest:
    request = RelayRequest.objects.select_for_update().filter(pk=request_id).first()
    if request is None:
        raise RelayRequest.DoesNotExist(f"request {request_id} does not exist")
    if not request.is_team_member(by):
        raise PermissionDenied(_("Only the owning team manages this account's password."))
    if not logs_in(request.kind):
        raise ActionConflict(_("Request #%(pk)s is not a functional account.") % {"pk": request.pk})
    if request.state != RequestState.ACTIVE:
        raise ActionConflict(_("Request #%(pk)s is %(state)s; only an active account's "
                               "password can be rotated.")
                             % {"pk": request.pk, "state": request.get_state_display()})
    return request


@transaction.atomic
def credential_rotate_now(*, request_id: int, by: AbstractBaseUser,
                          source_ip: str | None = None) -> AccountCredential:
    """An owner's "rotate now" (``issue`` mode): a new password and a new one-time link."""
    request = _owner_request(request_id, by)
    if credential_mode() != "issue":
        raise ActionConflict(_("The directory owns this password: change it there, then "
                               "confirm with \"I rotated it\"."))
    return _enqueue(request, Purpose.ROTATE, by=by, source_ip=source_ip)


@transaction.atomic
def credential_confirm_rotated(*, request_id: int, by: AbstractBaseUser,
                               source_ip: str | None = None) -> AccountCredential:
    """An owner's "I rotated it" (``directory`` mode): restarts the rotation clock."""
    request = _owner_request(request_id, by)
    if credential_mode() != "directory":
        raise ActionConflict(_("Relaydesk issues this password: use \"Rotate now\"."))
    now = timezone.now()
    row = AccountCredential.objects.create(
        request=request, account_name=request.account_name, purpose=Purpose.CONFIRM,
        status=Status.DONE, created_by=by, set_at=now,
    )
    _event(row, f"{by.get_username()} confirmed the password of {request.account_name} "
                "was changed in the directory.", actor=by, source_ip=source_ip)
    return row


# --- the one-time link ---------------------------------------------------------------------


def _row_for_token(token: str, *, lock: bool) -> AccountCredential:
    if not token or len(token) > 100:
        raise LinkNotFound(_("No such link."))
    query = AccountCredential.objects.select_related("request", "request__team")
    if lock:
        query = query.select_for_update(of=("self",))
    row = query.filter(token_hash=token_hash(token)).first()
    if row is None:
        raise LinkNotFound(_("No such link."))
    return row


def _expire(row: AccountCredential, now: datetime) -> None:
    _wipe(row, Status.EXPIRED, now)
    row.save()
    _event(row, f"One-time link of password #{row.pk} expired unseen; the secret was "
                "wiped. An owner can rotate to get a new one.",
           expired_at=row.expires_at.isoformat() if row.expires_at else None)


def credential_link_for(token: str, user: AbstractBaseUser) -> AccountCredential:
    """The link's row if ``user`` may open it now; reading only (nothing is revealed).

    404 forged, 403 not an owner (anonymous included), 410 used/expired/superseded.
    """
    row = _row_for_token(token, lock=False)
    if user is None or not user.is_authenticated or not row.request.is_team_member(user):
        raise PermissionDenied(_("Only a member of the owning team can open this link."))
    if row.status != Status.OFFERED or row.ciphertext is None:
        raise LinkGone(_gone_text(row))
    if row.expires_at is not None and row.expires_at <= timezone.now():
        raise LinkGone(_("This link has expired; the password was not shown. Rotate it on "
                         "the request page to get a new link."))
    return row


def _gone_text(row: AccountCredential) -> str:
    return {
        Status.VIEWED: _("This password was already shown once; it is not shown again."),
        Status.EXPIRED: _("This link has expired; the password was not shown."),
        Status.SUPERSEDED: _("A newer password replaced this one; use the newest link."),
    }.get(row.status, _("This link no longer shows anything."))


def credential_reveal(*, token: str, user: AbstractBaseUser, password: str,
                      http_request: HttpRequest | None = None,
                      source_ip: str | None = None) -> tuple[AccountCredential, str]:
    """Show the secret once: the viewer re-enters their own password (fresh login).

    Under the row lock: checks owner, state and time, decrypts, then wipes the
    ciphertext and records the view, in one transaction, so two clicks at once cannot
    both see it. A wrong password changes nothing (the link stays usable).
    """
    with transaction.atomic():
        outcome = _reveal_locked(token, user, password, http_request, source_ip)
    if outcome is None:
        # Raised after the commit, so the expiry (wipe and audit event) is kept.
        raise LinkGone(_("This link has expired; the password was not shown."))
    return outcome


def _reveal_locked(token: str, user: AbstractBaseUser, password: str,
                   http_request: HttpRequest | None,
                   source_ip: str | None) -> tuple[AccountCredential, str] | None:
    row = _row_for_token(token, lock=True)
    if user is None or not user.is_authenticated or not row.request.is_team_member(user):
        raise PermissionDenied(_("Only a member of the owning team can open this link."))
    now = timezone.now()
    if row.status == Status.OFFERED and row.expires_at is not None and row.expires_at <= now:
        _expire(row, now)
        return None
    if row.status != Status.OFFERED or row.ciphertext is None:
        raise LinkGone(_gone_text(row))
    again = authenticate(http_request, username=user.get_username(), password=password or "")
    if again is None or again.pk != user.pk:
        raise ReauthenticationRequired(_("Enter your own Relaydesk password to see the secret."))
    try:
        secret = _decrypt_from(row)
    except CredentialUnreadable as exc:
        # A changed or lost RELAY_CREDENTIAL_KEY: nothing to show; the owners rotate.
        raise LinkGone(_("This password cannot be read any more (%(error)s); rotate it on "
                         "the request page to get a new one.") % {"error": exc}) from None
    _wipe(row, Status.VIEWED, now)
    row.viewed_at = now
    row.viewed_by = user
    row.viewed_ip = source_ip or None
    row.save()
    _event(row, f"{user.get_username()} viewed password #{row.pk} of {row.account_name} "
                "(once; the stored copy was wiped).", actor=user, source_ip=source_ip)
    return row, secret


# --- rotation clock, reminders, sweep -----------------------------------------------------


def _last_set_subquery() -> Subquery:
    return Subquery(
        AccountCredential.objects.filter(
            account_name=OuterRef("account_name"), purpose__in=ROTATION_PURPOSES,
            status__in=ROTATION_STATUSES, set_at__isnull=False,
        ).values("account_name").annotate(last=Max("set_at")).values("last")[:1],
        output_field=DateTimeField(),
    )


def _with_rotation(query: QuerySet[RelayRequest]) -> QuerySet[RelayRequest]:
    return query.annotate(
        password_set_at=Coalesce(_last_set_subquery(), "activated_at"))


def last_rotated_at(request: RelayRequest) -> datetime | None:
    """When the account's password was last set or confirmed (else: its activation)."""
    found = _with_rotation(RelayRequest.objects.filter(pk=request.pk)).values_list(
        "password_set_at", flat=True).first()
    return found


def _rotate_days() -> timedelta:
    return timedelta(days=int(settings.RELAY_ACCOUNT_ROTATE_DAYS))


def overdue_accounts(now: datetime | None = None) -> list[RelayRequest]:
    """Active accounts whose password is older than ``RELAY_ACCOUNT_ROTATE_DAYS``."""
    now = now or timezone.now()
    limit = now - _rotate_days()
    accounts = _with_rotation(
        RelayRequest.objects.filter(state=RequestState.ACTIVE, kind__in=_login_kinds())
        .select_related("team")
    ).filter(password_set_at__lt=limit).order_by("password_set_at", "pk")
    found = list(accounts)
    for request in found:
        request.rotate_due = request.password_set_at + _rotate_days()
        request.overdue_days = (now - request.rotate_due).days
    return found


def _login_kinds() -> list[str]:
    return [spec.value for spec in login_kinds()]


def credential_status(request: RelayRequest, user: AbstractBaseUser | None = None,
                      now: datetime | None = None) -> dict[str, Any] | None:
    """What the page and the API show about the password (never the password itself)."""
    if not logs_in(request.kind):
        return None
    now = now or timezone.now()
    mode = credential_mode()
    last = last_rotated_at(request) if request.activated_at else None
    due = (last + _rotate_days()) if last else None
    latest = request.credentials.exclude(purpose=Purpose.CONFIRM).order_by("-pk").first() \
        if mode == "issue" else None
    status: dict[str, Any] = {
        "mode": mode,
        "password_help": password_help() if mode == "directory" else "",
        "last_set_at": last,
        "rotate_due": due,
        "overdue": bool(due and due < now),
        "latest": None,
    }
    if latest is not None:
        status["latest"] = {
            "id": latest.pk, "purpose": latest.purpose,
            "purpose_display": latest.get_purpose_display(), "status": latest.status,
            "status_display": latest.get_status_display(), "expires_at": latest.expires_at,
            "viewed_at": latest.viewed_at,
            "viewed_by": latest.viewed_by.get_username() if latest.viewed_by else "",
            "error": latest.last_error if latest.status == Status.FAILED else "",
        }
    status["can_act"] = bool(
        user is not None and request.state == RequestState.ACTIVE
        and request.is_team_member(user))
    return status


@dataclass
class CredentialStats:
    expired: int = 0
    overlaps_closed: int = 0
    reminded: int = 0
    redispatched: int = 0


def _close_overlap(row_id: int) -> bool:
    """Remove the held old value(s) from the directory: the old password stops working."""
    with transaction.atomic():
        row = _locked(row_id)
        if row is None or row.old_ciphertext is None:
            return False
        dn = account_dn(row.account_name)
        conn = open_connection()
        try:
            for value in _old_values(row):
                ok = conn.modify(dn, {"userPassword": [(ldap3.MODIFY_DELETE, [value])]})
                if not ok and conn.result.get("result") not in _NO_SUCH_VALUE:
                    raise_for(conn, f"end the overlap of {dn}")
        finally:
            _unbind(conn)
        row.old_ciphertext = None
        row.save()
        _event(row, f"Rotation overlap of {row.account_name} ended: the previous password "
                    "no longer works.")
        return True


def _remind(now: datetime) -> int:
    today = timezone.localdate(now)
    sent = 0
    days_before = sorted(set(settings.RELAY_ACCOUNT_ROTATE_REMINDER_DAYS), reverse=True)
    if not days_before:
        return 0
    mode = credential_mode()
    horizon = now + timedelta(days=max(days_before) + 1)
    for request in _with_rotation(
        RelayRequest.objects.filter(state=RequestState.ACTIVE, kind__in=_login_kinds())
        .select_related("team", "created_by", "submitted_by")
    ).filter(password_set_at__lt=horizon - _rotate_days()):
        due = timezone.localdate(request.password_set_at + _rotate_days())
        left = (due - today).days
        # The nearest reminder not yet passed: a sweep that missed a day still sends it.
        step = min((d for d in days_before if left <= d), default=None)
        if step is None:
            continue
        recipients = owner_recipients(request)
        if not recipients:
            continue
        with transaction.atomic():
            _row, created = notification_record(
                request=request, kind="credential_rotate_reminder",
                key=f"request:{request.pk}:rotate:{due.isoformat()}:{step}d",
                recipients=recipients,
                context={"days": max(left, 0), "due": due.isoformat(), "mode": mode,
                         "account": request.account_name,
                         "password_help": password_help() if mode == "directory" else ""},
            )
        sent += created
    return sent


def credential_sweep(*, now: datetime | None = None) -> CredentialStats:
    """Periodic: wipe expired links, end due overlaps, remind, re-send lost work.

    Idempotent: every step looks at the rows' state, reminders are keyed once each.
    """
    now = now or timezone.now()
    stats = CredentialStats()
    with transaction.atomic():
        for row in AccountCredential.objects.select_for_update(of=("self",)).filter(
            status=Status.OFFERED, expires_at__lte=now
        ).select_related("request")[:500]:
            _expire(row, now)
            stats.expired += 1
    for pk in AccountCredential.objects.filter(
        old_ciphertext__isnull=False, overlap_until__lte=now
    ).values_list("pk", flat=True)[:500]:
        try:
            stats.overlaps_closed += _close_overlap(pk)
        except (DirectoryUnavailable, DirectoryRefused, *TRANSIENT_EXCEPTIONS) as exc:
            log.warning("credential %s: overlap not ended yet: %s", pk, exc)
    stale = now - timedelta(seconds=settings.RELAYDESK_SWEEP_AFTER_SECONDS)
    for pk in AccountCredential.objects.filter(
        status=Status.PENDING, updated_at__lt=stale
    ).values_list("pk", flat=True)[:500]:
        dispatch_on_commit("apply_credential", pk)
        stats.redispatched += 1
    stats.reminded = _remind(now)
    log.info("credential sweep: %s", stats)
    return stats
