"""Relay config versions: build from the database, record history, activate requests.

A version is built from the active entries plus those waiting in ``provisioning``;
the same transaction stores the version (file texts, line-level changes attributed to
requests) and moves the provisioning requests to ``active``. So "active" always means
"in the newest config version".
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import events
from .models import RelayConfigChange
from .models import RelayConfigVersion
from .models import RelayRequest
from .models import RequestKind
from .models import RequestState
from .postfix import ACCESS_MAP_NAME
from .postfix import LOGIN_MAP_NAME
from .postfix import MANIFEST_NAME
from .postfix import AccountEntry
from .postfix import RelaySettings
from .postfix import ServerEntry
from .postfix import build_artifacts
from .postfix import write_artifacts_atomically

__all__ = [
    "config_diff",
    "current_version",
    "relay_config_export",
    "relay_config_rebuild",
    "relay_entries",
]

IN_CONFIG_STATES = (RequestState.ACTIVE, RequestState.PROVISIONING)
_COMMENT_RE = re.compile(r"^# request (\d+) ")


def relay_settings() -> RelaySettings:
    return RelaySettings(
        relay_host=settings.RELAY_HOST,
        submission_port=settings.RELAY_SUBMISSION_PORT,
        smtps_port=settings.RELAY_SMTPS_PORT,
        map_directory=settings.RELAY_MAP_DIRECTORY,
    )


def relay_entries(
    states: tuple[str, ...] = IN_CONFIG_STATES,
) -> tuple[Iterator[ServerEntry], Iterator[AccountEntry]]:
    """Stream the entries from the database (``values_list`` + ``iterator``: no models)."""
    # Suspended entries (drifted past the grace period) stay active but leave the config.
    base = RelayRequest.objects.filter(state__in=states, suspended_at__isnull=True).order_by("pk")
    servers = (
        ServerEntry(pk, fqdn, team, tuple(ipv6) + tuple(ipv4))
        for pk, fqdn, team, ipv4, ipv6 in base.filter(kind=RequestKind.SERVER)
        .values_list("pk", "fqdn", "team__slug", "ipv4", "ipv6")
        .iterator(chunk_size=5000)
    )
    accounts = (
        AccountEntry(pk, account, team, tuple(addresses) + tuple("@" + d for d in domains))
        for pk, account, team, addresses, domains in base.filter(kind=RequestKind.ACCOUNT)
        .values_list("pk", "account_name", "team__slug", "sender_addresses", "sender_domains")
        .iterator(chunk_size=5000)
    )
    return servers, accounts


def _content_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        if name != MANIFEST_NAME:
            digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()


def current_version() -> RelayConfigVersion | None:
    return RelayConfigVersion.objects.order_by("-number").first()


def _owned_lines(name: str, text: str, account_owner: dict[str, int]) -> dict[str, int | None]:
    """Map each effective line of a map to the request that put it there."""
    owners: dict[str, int | None] = {}
    current: int | None = None
    for line in text.splitlines():
        match = _COMMENT_RE.match(line)
        if match:
            current = int(match.group(1))
            continue
        if not line or line.startswith("#"):
            continue
        if name == ACCESS_MAP_NAME:
            owners[line] = current
        else:
            accounts = line.split()[-1].split(",")
            owners[line] = account_owner.get(accounts[0])
    return owners


@transaction.atomic
def relay_config_rebuild(*, reason: str = "") -> RelayConfigVersion | None:
    """Build a new version if the content changed, and activate provisioning requests.

    Returns the new version, or ``None`` when the content is unchanged and nothing was
    waiting. Two builders at once: the unique version number lets only one commit; the
    other raises ``IntegrityError`` and its task retries.
    """
    waiting = list(
        RelayRequest.objects.select_for_update()
        .filter(state=RequestState.PROVISIONING)
        .order_by("pk")
    )
    _supersede_replaced(waiting)
    previous = (
        RelayConfigVersion.objects.select_for_update().order_by("-number").first()
    )
    number = (previous.number + 1) if previous else 1
    now = timezone.now()
    servers, accounts = relay_entries()
    try:
        files = build_artifacts(servers, accounts, relay_settings(), version=number,
                                generated_at=now)
    finally:
        # Close the server-side cursors (PostgreSQL) while the transaction is still good,
        # so a ValueError from a bad row surfaces as itself, not as a cursor error.
        servers.close()
        accounts.close()
    digest = _content_digest(files)
    if previous is not None and previous.digest == digest and not waiting:
        return None
    counts = json.loads(files[MANIFEST_NAME])["counts"]
    version = RelayConfigVersion.objects.create(
        number=number,
        created_at=now,
        files={name: data.decode() for name, data in files.items()},
        digest=digest,
        server_count=counts["servers"],
        account_count=counts["accounts"],
        reason=reason[:200],
    )
    _record_changes(previous, version)
    for request in waiting:
        request.activate()
        request.save()
        events.request_transition_event(
            request,
            action="activate",
            from_state=RequestState.PROVISIONING,
            actor=None,
            comment=f"in relay config v{number}",
            parameters={"version": number},
        )
    return version


def _supersede_replaced(waiting: list[RelayRequest]) -> None:
    """A renewal that goes live replaces the entry it renews, in the same version.

    Only a renewal of the entry's current team replaces it: one drafted by a team that
    has since handed the entry over never removes the new owners' entry (the handover
    clears such links; this is the second line of defence).
    """
    replaced_ids = [r.replaces_id for r in waiting
                    if r.replaces_id and r.team_id == r.replaces.team_id]
    if not replaced_ids:
        return
    for old in RelayRequest.objects.select_for_update().filter(
        pk__in=replaced_ids, state=RequestState.ACTIVE
    ):
        old.supersede()
        old.save()
        events.request_transition_event(
            old, action="supersede", from_state=RequestState.ACTIVE, actor=None,
            comment="replaced by its renewal",
            parameters={"replaced_by": [r.pk for r in waiting if r.replaces_id == old.pk]},
        )
        from .services import directory_sync

        directory_sync(old, "supersede")


def _record_changes(previous: RelayConfigVersion | None, version: RelayConfigVersion) -> None:
    account_owner = dict(
        RelayRequest.objects.filter(kind=RequestKind.ACCOUNT)
        .order_by("pk")
        .values_list("account_name", "pk")
    )
    rows = []
    for name in (ACCESS_MAP_NAME, LOGIN_MAP_NAME):
        old = _owned_lines(name, previous.files.get(name, "") if previous else "", account_owner)
        new = _owned_lines(name, version.files.get(name, ""), account_owner)
        for line in sorted(new.keys() - old.keys()):
            rows.append(RelayConfigChange(version=version, request_id=new[line], file=name,
                                          action=RelayConfigChange.Action.ADDED, line=line))
        for line in sorted(old.keys() - new.keys()):
            rows.append(RelayConfigChange(version=version, request_id=old[line], file=name,
                                          action=RelayConfigChange.Action.REMOVED, line=line))
    RelayConfigChange.objects.bulk_create(rows, batch_size=2000)


def config_diff(old: RelayConfigVersion, new: RelayConfigVersion) -> dict[str, list[str]]:
    """A unified diff per file between two versions (for the approvers' page)."""
    out = {}
    for name in sorted(set(old.files) | set(new.files)):
        if name == MANIFEST_NAME:
            continue
        lines = list(
            difflib.unified_diff(
                old.files.get(name, "").splitlines(),
                new.files.get(name, "").splitlines(),
                fromfile=f"v{old.number}/{name}",
                tofile=f"v{new.number}/{name}",
                lineterm="",
            )
        )
        out[name] = lines
    return out


def relay_config_export(out_dir: Path) -> tuple[RelayConfigVersion | None, bool]:
    """Write the current version's files to ``out_dir`` atomically.

    Returns the version and whether anything on disk changed. With no version yet,
    an empty configuration (version 0) is written so a relay starts from a valid state.
    """
    version = current_version()
    if version is None:
        # A fixed time keeps "same state, same bytes" true for the empty config too.
        files = build_artifacts([], [], relay_settings(), version=0,
                                generated_at=datetime(1970, 1, 1, tzinfo=UTC))
    else:
        files = {name: text.encode() for name, text in version.files.items()}
    changed = write_artifacts_atomically(out_dir, files)
    return version, changed
