"""Relay config versions: build from the database, record history, activate requests.

A version is built from the active entries plus those waiting in ``provisioning``;
the same transaction stores the version (file texts, line-level changes attributed to
requests) and moves the provisioning requests to ``active``. So "active" means "in the
newest config version", with one visible exception: an entry the renderer cannot render
(a row from before a rule change) is left out of the version, listed in its ``skipped``
and flagged on the request, and never holds back the other entries. A functional
account also needs its relay-group change done before it is active (``activation.py``:
the build holds it in ``provisioning`` and the directory side activates it later).

Removals (revoke, expiry, suspension) are announced by the build that leaves the entry
out, in its transaction, and the periodic sweep asks :func:`relay_config_stale` whether
the newest version still serves an entry that has left, so a lost broker message
delays a revocation by at most one sweep.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.db import transaction
from django.db.models import Case
from django.db.models import Exists
from django.db.models import IntegerField
from django.db.models import OuterRef
from django.db.models import Q
from django.db.models import QuerySet
from django.db.models import Sum
from django.db.models import Value
from django.db.models import When
from django.utils import timezone

from . import activation
from . import events
from . import relay_store
from .actions import AFTER_REMOVAL
from .artifacts_io import MANIFEST_NAME
from .artifacts_io import write_artifacts_atomically
from .checking import check_config
from .credentials import credential_after_transition
from .directory import directory_sync
from .kinds import KINDS
from .kinds import KindSpec
from .kinds import login_kinds
from .models import Notification
from .models import RelayConfigChange
from .models import RelayConfigVersion
from .models import RelayRequest
from .models import RequestEvent
from .models import RequestState
from .notifications import notification_enqueue
from .relay_backend import AccountEntry
from .relay_backend import RelayBackend
from .relay_backend import RelaySettings
from .relay_backend import ServerEntry
from .relay_backend import load_backend

__all__ = [
    "config_changes",
    "config_diff",
    "current_version",
    "history_changes",
    "relay_config_prune",
    "relay_config_export",
    "relay_config_rebuild",
    "relay_backend",
    "relay_config_stale",
    "relay_entries",
]

IN_CONFIG_STATES = (RequestState.ACTIVE, RequestState.PROVISIONING)
# Entries that left the relay config for good; their owners are told once a version
# without them exists (the build that removes them writes the mail).
REMOVED_STATES = (RequestState.REVOKED, RequestState.EXPIRED)
REMOVAL_TRIGGERS = tuple(AFTER_REMOVAL)  # revoke, expire (declared in actions.py)
# How far before the newest version a removal is still looked at. A removal's
# ``updated_at`` is taken before its transaction commits, and web and worker hosts'
# clocks may disagree: the margin covers both, at the cost of re-reading a few rows.
REMOVAL_LOOKBACK = timedelta(minutes=15)
# What an approver reads about a left-out entry; the renderer's text names the value.
_REASON_MAX = 1000


def relay_settings(*, include_db: bool = True) -> RelaySettings:
    """The relay settings of this deployment, as the back-end renders them.

    The approved sender domains are those the checks use (``checking.check_config``:
    ``RELAY_APPROVED_SENDER_DOMAINS`` plus the admin's list, normalised and sorted), so
    the relay passes unchanged exactly what the request page promised. ``include_db``
    False leaves out the admin's list (the start-up checks run before the database
    may exist). Values are passed as configured: the renderer checks them and raises
    ``ValueError`` naming the setting.
    """
    return RelaySettings(
        relay_host=settings.RELAY_HOST,
        submission_port=settings.RELAY_SUBMISSION_PORT,
        smtps_port=settings.RELAY_SMTPS_PORT,
        map_directory=settings.RELAY_MAP_DIRECTORY,
        # The address policy the forms and checks apply: the renderer applies it again.
        lab_networks=tuple(settings.RELAY_LAB_NETWORKS),
        allow_private=bool(settings.RELAY_ALLOW_PRIVATE),
        sender_mode=settings.RELAY_SENDER_MODE,
        rewrite_domain=settings.RELAY_REWRITE_DOMAIN,
        approved_sender_domains=check_config(include_db=include_db).approved_sender_domains,
        require_tls=settings.RELAY_REQUIRE_TLS,
        sandbox_daily=settings.RELAY_SANDBOX_DAILY_LIMIT,
        sandbox_per_second=settings.RELAY_SANDBOX_PER_SECOND,
        production_per_second=settings.RELAY_PRODUCTION_PER_SECOND,
        policy_service=settings.RELAY_POLICY_SERVICE,
        srs_forward=settings.RELAY_SRS_FORWARD,
        srs_reverse=settings.RELAY_SRS_REVERSE,
        reinject_port=settings.RELAY_REINJECT_PORT,
        # who checks account logins (the renderer refuses anything but dovecot|cyrus)
        sasl_type=settings.RELAY_SASL_TYPE,
        sasl_path=settings.RELAY_SASL_PATH,
    )


def relay_backend() -> RelayBackend:
    """The relay back-end of ``RELAY_BACKEND`` for ``RELAY_MAP_TYPE``.

    Asked on every use (it is cheap), so a changed setting takes effect at once.
    ``ValueError`` naming the setting for a back-end or map type nobody implements.
    """
    return load_backend(settings.RELAY_BACKEND, settings.RELAY_MAP_TYPE)


def relay_entries(
    states: tuple[str, ...] = IN_CONFIG_STATES,
    *,
    pks: list[int] | None = None,
) -> tuple[Iterator[ServerEntry], Iterator[AccountEntry]]:
    """Stream the entries from the database (``values_list`` + ``iterator``: no models).

    ``pks`` limits them to those requests (to try a few entries without the rest).
    """
    # Suspended entries (drifted past the grace period) stay active but leave the config.
    base = RelayRequest.objects.filter(state__in=states, suspended_at__isnull=True).order_by("pk")
    if pks is not None:
        base = base.filter(pk__in=pks)
    return _entries_of(base)


def _entries_of(base: QuerySet[RelayRequest]) -> tuple[Iterator[ServerEntry],
                                                      Iterator[AccountEntry]]:
    """The relay entries of these rows, each built as its kind says (``kinds.py``):
    the kinds that log in become account entries, the others server entries."""
    address_kinds = tuple(spec for spec in KINDS.values() if not spec.authenticates)
    return _stream(base, address_kinds), _stream(base, login_kinds())


def _stream(base: QuerySet[RelayRequest], specs: tuple[KindSpec, ...]) -> Iterator[Any]:
    for spec in specs:
        rows = (base.filter(kind=spec.value)
                .values_list("pk", "team__slug", *spec.relay_columns)
                .iterator(chunk_size=5000))
        entry = spec.relay_entry
        with closing(rows):  # a closed stream closes its cursor (PostgreSQL: server-side)
            for row in rows:
                yield entry(*row)


def _content_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        if name != MANIFEST_NAME:
            digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()


def current_version() -> RelayConfigVersion | None:
    return RelayConfigVersion.objects.order_by("-number").first()


# pg_advisory_xact_lock key of the relay config build ("rdsk" in ASCII).
_BUILD_LOCK_KEY = 0x7264736B


def _serialise_builds() -> None:
    """Wait for any other relay config build to commit (PostgreSQL; SQLite's IMMEDIATE
    transactions already serialise writers)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_BUILD_LOCK_KEY])


@transaction.atomic
def relay_config_rebuild(*, reason: str = "") -> RelayConfigVersion | None:
    """Build a new version if the content changed, and activate provisioning requests.

    Returns the new version, or ``None`` when the content is unchanged and nothing was
    activated. Two builders at once: the unique version number lets only one commit;
    the other raises ``IntegrityError`` and its task retries.

    An entry the renderer refuses is left out and listed in the version's ``skipped``;
    everything else still goes out. A request waiting in ``provisioning`` that is left
    out stays there with the reason and an attempt counted, and moves to
    ``provisioning_failed`` (owners and approvers are told) after
    ``RELAY_PROVISION_MAX_ATTEMPTS`` builds; an active entry that is left out keeps its
    state and carries the reason in ``provision_error`` until a build renders it again.
    Owners of revoked and expired entries are told here, in the transaction of the
    version that no longer has them, never before.

    On PostgreSQL builds take one transaction-scoped advisory lock first, so they run
    one after the other: concurrent builds locking the waiting rows, the newest version
    and the shared file blobs in turn deadlocked (seen with eight approvals at once).
    """
    _serialise_builds()
    waiting = list(
        RelayRequest.objects.select_for_update()
        .filter(state=RequestState.PROVISIONING)
        .order_by("pk")
    )
    # A renewal replaces its entry only if it can itself be rendered: otherwise the
    # old entry would leave the config and nothing would take its place.
    refused = _unrenderable([r for r in waiting if r.replaces_id])
    _supersede_replaced([r for r in waiting if r.pk not in refused])
    previous = (
        RelayConfigVersion.objects.select_for_update().order_by("-number").first()
    )
    # Before the entries are read: every removal seen here is then absent from what
    # this build renders, so its mail can never precede a version without it.
    removals = _removals_to_announce(previous)
    number = (previous.number + 1) if previous else 1
    now = timezone.now()
    servers, accounts = relay_entries()
    try:
        files = relay_backend().build(servers, accounts, relay_settings(), version=number,
                                      generated_at=now)
    finally:
        # Close the server-side cursors (PostgreSQL) while the transaction is still good.
        servers.close()
        accounts.close()
    skipped = [{"request": s["request"], "reason": str(s["reason"])[:_REASON_MAX]}
               for s in files.skipped]
    left_out = {s["request"]: s["reason"] for s in skipped}
    rendered = [r for r in waiting if r.pk not in left_out]
    # Active means usable: an account also needs its relay-group change done (read
    # under the row locks taken above; the directory side activates it otherwise).
    usable = activation.directory_done(rendered)
    activating = [r for r in rendered if r.pk in usable]
    held = [r for r in rendered if r.pk not in usable]
    digest = _content_digest(files)
    version = None
    if previous is None or previous.digest != digest or activating:
        counts = json.loads(files[MANIFEST_NAME])["counts"]
        version = RelayConfigVersion.objects.create(
            number=number,
            created_at=now,
            digest=digest,
            server_count=counts["servers"],
            account_count=counts["accounts"],
            reason=reason[:200],
            skipped=skipped,
            history=True,
        )
        relay_store.store_files(version, files)
        _record_changes(previous, version, files)
        relay_config_prune(now=now)
    served = version or previous
    for request in activating:
        activation.activate(request, version=number, comment=f"in relay config v{number}")
    if held and served is not None:
        activation.record_config_served(held, served.number)
    for request in waiting:
        if request.pk in left_out:
            _provisioning_left_out(request, left_out[request.pk], version)
    _flag_active_left_out(left_out, {r.pk for r in waiting}, version)
    _announce_removals(removals, served)
    return version


def _unrenderable(requests: list[RelayRequest]) -> dict[int, str]:
    """Which of these requests the renderer would leave out, and why (renders only them)."""
    if not requests:
        return {}
    servers, accounts = relay_entries(pks=[r.pk for r in requests])
    try:
        files = relay_backend().build(servers, accounts, relay_settings(), version=0,
                                      generated_at=datetime(1970, 1, 1, tzinfo=UTC))
    finally:
        servers.close()
        accounts.close()
    return {s["request"]: str(s["reason"]) for s in files.skipped}


def _provisioning_left_out(
    request: RelayRequest, reason: str, version: RelayConfigVersion | None
) -> None:
    """Count a failed attempt; after the last one the request stops waiting, visibly.

    The request keeps waiting for a few builds because the cause may be the renderer's
    rules rather than the data (a deployment can change them back); then it goes to
    ``provisioning_failed``, where approvers retry or reject it, so nothing is stuck.
    """
    limit = max(1, int(settings.RELAY_PROVISION_MAX_ATTEMPTS))
    request.provision_attempts += 1
    request.provision_error = reason
    where = f"relay config v{version.number}" if version else "the relay config build"
    if request.provision_attempts < limit:
        request.save()
        events.request_left_out_event(
            request, reason=reason, attempt=request.provision_attempts, limit=limit,
            version=version.number if version else None,
            comment=f"left out of {where} (attempt {request.provision_attempts} of "
                    f"{limit}): {reason}",
        )
        return
    request.provisioning_failed()
    request.save()
    event = events.request_transition_event(
        request,
        action="provisioning_failed",
        from_state=RequestState.PROVISIONING,
        actor=None,
        comment=f"left out of {where} {request.provision_attempts} times: {reason}",
        parameters={"attempts": request.provision_attempts, "reason": reason,
                    "version": version.number if version else None},
    )
    notification_enqueue(request=request, trigger="provisioning_failed", event=event)


def _flag_active_left_out(
    left_out: dict[int, str], waiting: set[int], version: RelayConfigVersion | None
) -> None:
    """Active entries the renderer refused carry the reason; rendered ones lose it.

    The audit trail gets one event when an entry is first left out (or for another
    reason), not one per build.
    """
    active_ids = [pk for pk in left_out if pk not in waiting]
    where = f"relay config v{version.number}" if version else "the relay config"
    for entry in RelayRequest.objects.filter(
        pk__in=active_ids, state=RequestState.ACTIVE
    ).only("pk", "state", "provision_error"):
        reason = left_out[entry.pk]
        if entry.provision_error == reason:
            continue
        # update(), not save(): no lock is held on active rows, and a concurrent revoke
        # must neither be undone nor make this build fail.
        RelayRequest.objects.filter(pk=entry.pk).update(provision_error=reason)
        events.request_left_out_event(
            entry, reason=reason, attempt=None, limit=None,
            version=version.number if version else None,
            comment=f"active, but left out of {where}: {reason}",
        )
    RelayRequest.objects.filter(state=RequestState.ACTIVE).exclude(
        provision_error="").exclude(pk__in=list(left_out)).update(provision_error="")


def _removals_to_announce(
    previous: RelayConfigVersion | None,
) -> list[tuple[RelayRequest, RequestEvent]]:
    """Revoked and expired entries whose owners have not been told yet, with the event.

    Only removals around or after the newest version can still be unannounced (every
    build announces what it removes), which keeps this to a handful of rows.
    """
    told = Notification.objects.filter(request=OuterRef("pk"),
                                       kind__in=tuple(AFTER_REMOVAL.values()))
    candidates = RelayRequest.objects.filter(state__in=REMOVED_STATES).exclude(Exists(told))
    if previous is not None:
        candidates = candidates.filter(updated_at__gte=previous.created_at - REMOVAL_LOOKBACK)
    requests = {r.pk: r for r in candidates.select_related("team", "created_by",
                                                            "submitted_by")}
    if not requests:
        return []
    found: dict[int, RequestEvent] = {}
    for event in RequestEvent.objects.filter(
        request_id__in=list(requests), type=RequestEvent.Type.TRANSITION,
        to_state__in=REMOVED_STATES,
    ).order_by("request_id", "-pk"):
        found.setdefault(event.request_id, event)
    return [
        (requests[pk], event) for pk, event in sorted(found.items())
        if event.parameters.get("action") in REMOVAL_TRIGGERS
    ]


def _announce_removals(
    removals: list[tuple[RelayRequest, RequestEvent]], served: RelayConfigVersion | None
) -> None:
    for request, event in removals:
        notification_enqueue(
            request=request, trigger=event.parameters["action"], event=event,
            extra_context={"version": served.number if served else None},
        )


def _version_texts(latest: RelayConfigVersion, names: tuple[str, ...]) -> dict[str, str]:
    """Only these files of a version (their blobs; the others are not read)."""
    texts = relay_store.version_texts(latest, names)
    return {name: texts.get(name, "") for name in names}


def relay_config_prune(*, now: datetime | None = None) -> tuple[int, int]:
    """Apply the retention settings: (versions whose files were dropped, blobs deleted).

    Kept: the ``RELAY_CONFIG_KEEP_VERSIONS`` newest versions and every version of the
    last ``RELAY_CONFIG_KEEP_DAYS`` days, and always the newest (what the relay pulls).
    Runs after each build, in its transaction. Version rows and their line history
    (``RelayConfigChange``) stay, so the diff of any two versions is still answered.
    """
    return relay_store.prune(keep_versions=int(settings.RELAY_CONFIG_KEEP_VERSIONS),
                             keep_days=float(settings.RELAY_CONFIG_KEEP_DAYS),
                             now=now or timezone.now())


def _quota_grant_unserved(backend: RelayBackend, latest: RelayConfigVersion,
                          since: datetime) -> bool:
    """A production grant around or after the newest version that it does not apply.

    The grant dispatches a rebuild after commit; if that message is lost the entry would
    keep its sandbox quota until some other change rebuilt the config. Exact, like the
    removals: only entries granted since the newest version (minus the clock margin) are
    looked up, in the back-end's own files (``QuotaBackend``; one without quotas has
    nothing to apply).
    """
    serves_quota = getattr(backend, "serves_quota", None)
    if serves_quota is None:
        return False
    granted = (RelayRequest.objects.filter(
        state__in=IN_CONFIG_STATES, suspended_at__isnull=True,
        pk__in=RequestEvent.objects.filter(
            parameters__action="grant_production", created_at__gte=since,
        ).values("request_id"),
    ).order_by("pk"))
    servers, accounts = _entries_of(granted)
    entries: list[ServerEntry | AccountEntry] = [*servers, *accounts]
    if not entries:
        return False
    files = _version_texts(latest, tuple(backend.attributed_names))
    return not serves_quota(files, entries)


def relay_config_stale() -> bool:
    """Whether the newest version still serves an entry that has left the relay config,
    or does not yet apply a production grant (:func:`_quota_grant_unserved`).

    For the periodic sweep: a revoke, expiry or suspension dispatches a rebuild after
    commit, and if that message is lost (broker down) nothing else would rebuild. The
    answer is exact, so the sweep rebuilds only when something is really left over,
    never every minute "just in case": the candidates are the entries that left around
    or after the newest version (a few rows), and the back-end looks each up in the
    version's text (:meth:`RelayBackend.stale`), given the live entries of the same
    logins, whose lines are served legitimately (a renewal of a revoked account, say).
    """
    latest = RelayConfigVersion.objects.only("pk", "created_at").order_by("-number").first()
    if latest is None:
        return False
    since = latest.created_at - REMOVAL_LOOKBACK
    servers, accounts = _entries_of(
        RelayRequest.objects.filter(
            Q(state__in=REMOVED_STATES, updated_at__gte=since)
            | Q(state=RequestState.ACTIVE, suspended_at__gte=since)
        ).order_by("pk")
    )
    left: list[ServerEntry | AccountEntry] = [*servers, *accounts]
    backend = relay_backend()
    if _quota_grant_unserved(backend, latest, since):
        return True
    if not left:
        return False
    # Only the files the back-end looks at, straight out of the JSON column.
    files = _version_texts(latest, tuple(backend.attributed_names))
    logins = {entry.account for entry in left if isinstance(entry, AccountEntry)}
    live: list[AccountEntry] = []
    if logins:
        in_config = RelayRequest.objects.filter(
            state__in=IN_CONFIG_STATES, suspended_at__isnull=True).order_by("pk")
        for spec in login_kinds():
            named = in_config.filter(**{f"{spec.login_field}__in": logins})
            live.extend(_stream(named, (spec,)))
    return backend.stale(files, left, live)


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
        directory_sync(old, "supersede")
        credential_after_transition(old, "supersede")


def _login_owners() -> dict[str, int]:
    """Login -> the newest request holding it (lines that name a login, not a request)."""
    login_owner: dict[str, int] = {}
    for spec in login_kinds():
        login_owner.update(
            RelayRequest.objects.filter(kind=spec.value)
            .order_by("pk")
            .values_list(spec.login_field, "pk")
        )
    return login_owner


def _units(backend: RelayBackend, name: str, text: str,
           login_owner: dict[str, int]) -> set[tuple[str, int | None]]:
    """(line, request) pairs of a file: the back-end's ``attribute_units`` where it has
    one (one pair per request sharing a merged line), else one pair per distinct line."""
    units = getattr(backend, "attribute_units", None)
    if units is not None:
        return set(units(name, text, login_owner))
    return set(backend.attribute(name, text, login_owner).items())


def config_changes(old_files: dict[str, str], new_files: dict[str, str],
                   login_owner: dict[str, int] | None = None, *,
                   names: list[str] | tuple[str, ...] | None = None,
                   ) -> list[tuple[str, str, str, int | None]]:
    """What each request added and removed between two versions' files, sorted:
    ``(file, "added"|"removed", line, request id)``.

    Compared as (line, request) pairs, so a line two requests share (a shared address,
    a sender two accounts may use) counts for each of them: adding the second request
    records its share as added, removing one records only that one's share as removed.
    ``names`` limits the comparison to those files (the others are known unchanged).
    """
    backend = relay_backend()
    if login_owner is None:
        login_owner = _login_owners()
    out = []
    for name in (backend.attributed_names if names is None else names):
        old = _units(backend, name, old_files.get(name, ""), login_owner)
        new = _units(backend, name, new_files.get(name, ""), login_owner)
        out += [(name, RelayConfigChange.Action.ADDED, line, req) for line, req in new - old]
        out += [(name, RelayConfigChange.Action.REMOVED, line, req) for line, req in old - new]
    return sorted(out, key=lambda c: (c[0], c[1], c[2], c[3] or 0))


def _record_changes(previous: RelayConfigVersion | None, version: RelayConfigVersion,
                    files: dict[str, bytes]) -> None:
    """Store what each request added and removed against the version before.

    Only the files whose bytes differ from the previous version's are read and compared
    (their hashes say which): an unchanged file has no changes, and its old body is not
    decoded.
    """
    names = relay_backend().attributed_names
    new_sha = {name: hashlib.sha256(files[name]).hexdigest() for name in names
               if name in files}
    old_meta = relay_store.file_meta(previous, names) if previous else {}
    changed = [name for name in names
               if new_sha.get(name) != (old_meta[name].sha256 if name in old_meta else None)]
    if not changed:
        return
    old_files = relay_store.version_texts(previous, changed) if previous else {}
    new_files = {name: files[name].decode() for name in changed if name in files}
    rows = [RelayConfigChange(version=version, request_id=req, file=name, action=action,
                              line=line)
            for name, action, line, req in config_changes(old_files, new_files,
                                                          names=changed)]
    RelayConfigChange.objects.bulk_create(rows, batch_size=2000)


def history_changes(old: RelayConfigVersion, new: RelayConfigVersion
                    ) -> list[tuple[str, str, str, int | None]] | None:
    """What each request added and removed from ``old`` to ``new``, from the stored
    line history (``RelayConfigChange``), in the order of :func:`config_changes`.

    The rows of the versions after ``old`` up to ``new`` are netted in SQL per (file,
    line, request): a line added and removed again in between is no change. The history
    holds (line, request) units (``attribute_units``), so a merged line is netted per
    request, as :func:`config_changes` counts it. Going back (``old`` newer) swaps the
    actions. ``None`` when a version in the range was stored without history (then the
    caller compares the files).
    """
    low, high = sorted((old.number, new.number))
    if low == high:
        return []
    if RelayConfigVersion.objects.filter(number__gt=low, number__lte=high,
                                         history=False).exists():
        return None
    added, removed = RelayConfigChange.Action.ADDED, RelayConfigChange.Action.REMOVED
    rows = (RelayConfigChange.objects
            .filter(version__number__gt=low, version__number__lte=high)
            .values("file", "line", "request_id")
            .annotate(net=Sum(Case(When(action=added, then=Value(1)), default=Value(-1),
                                   output_field=IntegerField())))
            .exclude(net=0)
            .order_by()
            .values_list("file", "net", "line", "request_id"))
    forward = old.number < new.number
    out = [(name, added if (net > 0) == forward else removed, line, req)
           for name, net, line, req in rows]
    return sorted(out, key=lambda c: (c[0], c[1], c[2], c[3] or 0))


#: Above this many bytes (both sides of a changed file together) the page shows no
#: unified diff of that file: comparing two 100k-entry files costs seconds and hundreds
#: of megabytes, and the changes by request (from history) list every changed line.
DIFF_MAX_BYTES = 2 * 1024 * 1024


def config_diff(old: RelayConfigVersion, new: RelayConfigVersion
                ) -> dict[str, list[str] | None]:
    """A unified diff per file between two versions (for the approvers' page).

    Metadata first: a file with the same body in both versions is unchanged without
    reading it. A changed file is diffed only if both bodies exist and are small enough
    (``DIFF_MAX_BYTES``); otherwise its entry is ``None`` (the page says why).
    """
    old_meta, new_meta = relay_store.file_meta(old), relay_store.file_meta(new)
    out: dict[str, list[str] | None] = {}
    wanted: list[str] = []
    for name in sorted(set(old_meta) | set(new_meta)):
        if name == MANIFEST_NAME:
            continue
        a, b = old_meta.get(name), new_meta.get(name)
        if a is not None and b is not None and a.sha256 == b.sha256:
            out[name] = []
            continue
        pruned = (a is None and old.files_pruned_at) or (b is None and new.files_pruned_at)
        size = (a.size if a else 0) + (b.size if b else 0)
        out[name] = None
        if not pruned and size <= DIFF_MAX_BYTES:
            wanted.append(name)
    old_texts = relay_store.version_texts(old, wanted) if wanted else {}
    new_texts = relay_store.version_texts(new, wanted) if wanted else {}
    for name in wanted:
        out[name] = list(
            difflib.unified_diff(
                old_texts.get(name, "").splitlines(),
                new_texts.get(name, "").splitlines(),
                fromfile=f"v{old.number}/{name}",
                tofile=f"v{new.number}/{name}",
                lineterm="",
            )
        )
    return out


def relay_config_export(out_dir: Path) -> tuple[RelayConfigVersion | None, bool]:
    """Write the current version's files to ``out_dir`` atomically.

    Returns the version and whether anything on disk changed. With no version yet,
    an empty configuration (version 0) is written so a relay starts from a valid state.
    """
    version = current_version()
    if version is None:
        # A fixed time keeps "same state, same bytes" true for the empty config too.
        files = relay_backend().build([], [], relay_settings(), version=0,
                                      generated_at=datetime(1970, 1, 1, tzinfo=UTC))
    else:
        files = relay_store.version_bytes(version)
    changed = write_artifacts_atomically(out_dir, files)
    return version, changed
