"""Active means usable: the one place a request becomes ``active``.

A server entry is usable as soon as a relay config version contains it, so the build
that renders it activates it (``relay.relay_config_rebuild``), as before. A functional
account needs a second thing: its login is accepted only once the account is a member
of the relay-allow group, which is a directory change (``directory.py``) applied by the
provisioner or by an administrator from the to-do list. Until **both** are done the
request stays ``provisioning`` and :func:`pending_reasons` says what it waits for.

Whichever finishes last activates, exactly once:

* the config build locks the waiting rows (``select_for_update``), then asks
  :func:`directory_done`; a request whose change is not done yet is held, and the
  build records that a version serves it (a ``config_built`` audit event naming the
  version, :func:`record_config_served`);
* the directory side, after closing an ``add`` change, calls :func:`activate_if_ready`,
  which locks the request row and then asks both questions again.

Both sides take the request's row lock before they read the other side's state, so
whichever commits second sees what the first committed (read committed) and the state
machine's ``provisioning -> active`` transition (under that lock) happens once.

:func:`activate` is the single activation step: state, audit event, and for accounts
the owners' "you are live" mail (``Notice("live")`` on ``activate`` in actions.py).
Anything that must happen when an account goes live (issuing a password in the
``issue`` credentials mode) belongs there, inside the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction

from . import events
from .dispatch import dispatch_on_commit
from .kinds import logs_in
from .models import DirectoryChange
from .models import RelayRequest
from .models import RequestEvent
from .models import RequestState
from .notifications import notification_enqueue

__all__ = [
    "activate",
    "activate_if_ready",
    "config_served",
    "directory_done",
    "password_source",
    "pending_reasons",
    "pending_reasons_many",
    "record_config_served",
]

#: ``parameters["served"]`` of the ``config_built`` event a build writes for a held account.
SERVED_KEY = "served_in_version"


def directory_done(requests: Iterable[RelayRequest]) -> set[int]:
    """Which of these requests may log in as far as the directory goes (one query).

    A kind that does not log in needs no directory change. An account needs its latest
    ``add`` change to be ``done`` (by the provisioner, or marked done on the to-do list).
    """
    accounts = [r.pk for r in requests if logs_in(r.kind)]
    done = {r.pk for r in requests if not logs_in(r.kind)}
    if accounts:
        latest: dict[int, str] = {}
        for request_id, status in (
            DirectoryChange.objects.filter(request_id__in=accounts,
                                           action=DirectoryChange.Action.ADD)
            .order_by("request_id", "-pk").values_list("request_id", "status")
        ):
            latest.setdefault(request_id, status)
        done |= {pk for pk, status in latest.items() if status == DirectoryChange.Status.DONE}
    return done


def config_served(request_ids: Iterable[int]) -> dict[int, int]:
    """The relay config version a build recorded as serving each held request (one query)."""
    ids = list(request_ids)
    if not ids:
        return {}
    served: dict[int, int] = {}
    for request_id, parameters in (
        RequestEvent.objects.filter(request_id__in=ids, type=RequestEvent.Type.CONFIG_BUILT,
                                    parameters__has_key=SERVED_KEY)
        .order_by("request_id", "-pk").values_list("request_id", "parameters")
    ):
        served.setdefault(request_id, int(parameters[SERVED_KEY]))
    return served


def record_config_served(requests: list[RelayRequest], version: int) -> None:
    """The build rendered these requests but their directory change is not done: say so
    in their trail, once per request (a later build serving them again adds nothing)."""
    seen = config_served(r.pk for r in requests)
    for request in requests:
        if request.pk in seen:
            continue
        events.system_event(
            request, RequestEvent.Type.CONFIG_BUILT,
            comment=f"in relay config v{version}; waiting for the directory change "
                    "(relay-allow group) before it is active",
            parameters={SERVED_KEY: version},
        )


def password_source(request: RelayRequest) -> str:
    """Where the owners get the account's password, in words (mail, page, snippets).

    ``RELAY_ACCOUNT_CREDENTIALS``: ``directory`` (the organisation's directory owns it;
    ``DIRECTORY_PASSWORD_HELP`` says where to set it) or ``issue`` (Relaydesk sets one on
    activation and offers it once, by link).
    """
    mode = getattr(settings, "RELAY_ACCOUNT_CREDENTIALS", "directory")
    if mode == "issue":
        return "from the one-time link in your activation mail"
    help_text = getattr(settings, "DIRECTORY_PASSWORD_HELP", "") or (
        "ask your directory administrators; Relaydesk never sees it")
    return f"set in the directory: {help_text}"


def activate(request: RelayRequest, *, version: int, comment: str,
             parameters: dict[str, Any] | None = None) -> RequestEvent:
    """Move a locked ``provisioning`` request to ``active``: the only caller of the
    ``activate`` transition. Writes the audit event and, for an account, the owners'
    "you are live" mail (with the snippets link and where the password comes from).

    The caller holds the row lock and has checked :func:`pending_reasons` is empty.
    Hook for credential issuance (``issue`` mode): here, before the mail is enqueued,
    so the mail can carry what the issuance adds to ``extra``.
    """
    request.activate()
    request.save()
    event = events.request_transition_event(
        request, action="activate", from_state=RequestState.PROVISIONING, actor=None,
        comment=comment, parameters={"version": version, **(parameters or {})},
    )
    if logs_in(request.kind):
        # issue mode: the first password is made and set after commit (credentials.py;
        # by task name: credentials imports directory, which imports this module)
        dispatch_on_commit("issue_credential", request.pk)
        extra: dict[str, Any] = {
            "version": version,
            "account": request.account_name,
            "password_source": password_source(request),
        }
        notification_enqueue(request=request, trigger="activate", event=event,
                             extra_context=extra)
    return event


def activate_if_ready(request_id: int, *, via: str) -> bool:
    """Activate the request if a relay config version serves it and its directory
    change is done; for the directory side, after it closed an ``add`` change.

    Takes the request's row lock first (in the caller's transaction), so a concurrent
    config build either sees the change done or is seen by this call. Returns whether
    it activated the request now.
    """
    with transaction.atomic():
        request = (RelayRequest.objects.select_for_update()
                   .filter(pk=request_id, state=RequestState.PROVISIONING).first())
        if request is None:
            return False
        if request.pk not in directory_done([request]):
            return False
        version = config_served([request.pk]).get(request.pk)
        if version is None:
            return False  # the next build activates it
        activate(request, version=version,
                 comment=f"in relay config v{version}; {via}",
                 parameters={"completed_by": via})
        return True


def pending_reasons_many(requests: Iterable[RelayRequest]) -> dict[int, list[str]]:
    """What each ``provisioning`` request still waits for, in words; two queries for
    any number of requests (the list and detail pages, the API)."""
    waiting = [r for r in requests if r.state == RequestState.PROVISIONING]
    if not waiting:
        return {}
    accounts = [r for r in waiting if logs_in(r.kind)]
    served = config_served(r.pk for r in accounts)
    latest: dict[int, DirectoryChange] = {}
    for change in DirectoryChange.objects.filter(
            request_id__in=[r.pk for r in accounts], action=DirectoryChange.Action.ADD
    ).order_by("request_id", "-pk").only("request_id", "status", "attempts", "last_error"):
        latest.setdefault(change.request_id, change)
    out: dict[int, list[str]] = {}
    for request in waiting:
        reasons: list[str] = []
        if request.provision_error:
            reasons.append(f"waiting for the relay config (left out of the last build: "
                           f"{request.provision_error})")
        elif request.pk not in served:
            reasons.append("waiting for the relay config")
        if logs_in(request.kind):
            change = latest.get(request.pk)
            if change is None:
                reasons.append("waiting for the directory change (none recorded: ask an "
                               "approver)")
            elif change.status == DirectoryChange.Status.MANUAL:
                reasons.append("waiting for the directory change (manual to-do)")
            elif change.status == DirectoryChange.Status.PENDING:
                reasons.append("waiting for the directory change (automatic"
                               + (f", {change.attempts} attempt(s) so far" if change.attempts
                                  else "") + ")")
            elif change.status == DirectoryChange.Status.FAILED:
                reasons.append("waiting for the directory change (failed, on the approvers' "
                               "to-do list)")
        out[request.pk] = reasons
    return out


def pending_reasons(request: RelayRequest) -> list[str]:
    """:func:`pending_reasons_many` for one request (empty unless ``provisioning``)."""
    return pending_reasons_many([request]).get(request.pk, [])
