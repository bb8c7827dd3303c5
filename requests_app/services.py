"""Services: the only code that writes.

Every state change follows one path: lock the row, check the role (403) and the state
(409), call the django-fsm transition, ``full_clean``, ``save``, write the audit event
and schedule tasks after commit. Views, the API, management commands and tasks all
call these functions; none touches ``state`` directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db import connection
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django_fsm import ConcurrentTransition
from django_fsm import can_proceed
from django_fsm import has_transition_perm

from . import accounts
from . import events
from . import notifications
from .actions import ACTIONS
from .actions import PRODUCTION_ACTIONS
from .actions import USER_ACTIONS
from .actions import Action
from .actions import Role
from .bulk_sql import insert_values
from .bulk_sql import update_rows
from .check_dispatch import dispatch_checks_on_commit
from .checks import worst_status
from .credentials import credential_after_transition
from .directory import directory_sync
from .dispatch import dispatch_on_commit
from .exceptions import ActionConflict
from .kinds import COMMON_FIELDS
from .kinds import KIND_FIELDS
from .kinds import KINDS
from .models import CHECKED_FIELDS
from .models import POLICY_REFUSED
from .models import CheckResult
from .models import CheckStatus
from .models import RelayRequest
from .models import RequestEvent
from .models import RequestState
from .models import Team
from .models import checks_current
from .models import checks_policy_clear
from .models import content_fingerprint
from .models import production_conflict
from .models import role_refusal
from .models import team_ids_of
from .rules import TEAM_RE
from .validators import validate_free_text
from .validators import validate_request

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

__all__ = [
    "EDITABLE_FIELDS",
    "request_act",
    "request_create",
    "request_create_once",
    "request_expire",
    "request_handover",
    "request_record_checks",
    "request_record_checks_many",
    "request_renew",
    "request_update",
    "validate_idempotency_key",
]

log = logging.getLogger(__name__)

# What a requester may change while the request is editable: every kind's fields.
EDITABLE_FIELDS = (*COMMON_FIELDS, *KIND_FIELDS)
EDITABLE_STATES = (RequestState.DRAFT, RequestState.NEEDS_CHANGES)




def _valid_comment(comment: str) -> str:
    """The comment of an action or handover, stripped, within the free-text rules.

    Every front end passes comments through here (web form, API, commands), so the
    length limit and the refusal of control and text-direction characters hold for
    the audit trail and the mails that quote it, whoever calls.
    """
    comment = (comment or "").strip()
    if comment:
        try:
            validate_free_text(comment, field="comment")
        except ValidationError as exc:
            raise ValidationError({"comment": exc.error_list}) from None
    return comment


def _locked(request_id: int) -> RelayRequest:
    """Lock the row so concurrent actors queue up and the second sees the new state."""
    return RelayRequest.objects.select_for_update().select_related("team").get(pk=request_id)


def _require_role(role: Role, request: RelayRequest, user: AbstractBaseUser,
                  doing: str) -> None:
    """403 unless ``user`` may act in ``role``; the rule and its words are the model's
    (``models.role_refusal``), the same the transitions' permissions use."""
    refusal = role_refusal(role, request, user, doing)
    if refusal is not None:
        raise PermissionDenied(refusal)


def _conflict_message(request: RelayRequest, spec: Action) -> str:
    action = spec.name
    quota = production_conflict(request, action)
    if quota is not None:
        return quota
    decides_on_checks = (
        (action == "approve" and request.state == RequestState.PENDING_APPROVAL)
        or (action == "override_checks" and request.state in (
            RequestState.NEEDS_CHANGES, RequestState.PENDING_APPROVAL))
    )
    if decides_on_checks and not checks_current(request):
        return _(
            "The check results are stale: they were not computed on the request's current "
            "content (it was edited since, or no checks ran on it). The checks must be "
            "re-run (recheck) before it can be %(action)s."
        ) % {"action": spec.past}
    if decides_on_checks and not checks_policy_clear(request):
        return _(
            "The address policy refuses %(addresses)s: this cannot be overridden or "
            "approved; the requester must change the address."
        ) % {"addresses": ", ".join(request.check_summary.get(POLICY_REFUSED, []))}
    if action in ("approve",) and request.state == RequestState.PENDING_APPROVAL:
        return _(
            "Checks ended with '%(verdict)s': override them with a written reason first."
        ) % {"verdict": request.check_verdict or "none"}
    if action == "override_checks" and request.check_verdict not in (
            CheckStatus.FAIL, CheckStatus.ERROR):
        return _("There is no failed check to override.")
    if action == "retry_provisioning":
        return _("Only a request whose provisioning failed can be retried; this one is "
                 "%(state)s.") % {"state": request.get_state_display().lower()}
    decided = request.decided_by.get_username() if request.decided_by else None
    if decided and request.state in (
        RequestState.PROVISIONING,
        RequestState.ACTIVE,
        RequestState.REJECTED,
        RequestState.REVOKED,
    ):
        return _("Already decided: the request is %(state)s (by %(who)s).") % {
            "state": request.get_state_display().lower(),
            "who": decided,
        }
    return _("A request in state '%(state)s' cannot be %(action)s.") % {
        "state": request.get_state_display().lower(),
        "action": spec.past,
    }


@transaction.atomic
def request_act(
    *,
    request_id: int,
    action: str,
    by: AbstractBaseUser,
    comment: str = "",
    source_ip: str | None = None,
    data: Callable[[], Mapping[str, Any]] | None = None,
) -> RelayRequest:
    """Fire one user lifecycle action (the API's ``POST /api/requests/{id}/{action}/``).

    Raises ``PermissionDenied`` for a wrong role (403), ``ActionConflict`` for a wrong
    state, an unmet condition or a lost race (409), ``ValidationError`` for a missing
    comment (400).

    ``data`` validates and returns the keyword arguments of an action that declares
    ``data`` (``actions.Action.data``); it is called once the role and the state allow
    the action, so a caller who may not act learns that first, and its values go to the
    transition and to the audit event's parameters.
    """
    spec = USER_ACTIONS.get(action)
    if spec is None:
        raise ValidationError({"action": [_("Unknown action '%s'.") % action]})
    comment = _valid_comment(comment)
    request = _locked(request_id)
    # The role first, whatever the state: who may not act learns that, not the state.
    _require_role(spec.role, request, by, spec.verb)
    if spec.needs_comment and not comment:
        raise ValidationError(
            {"comment": [_("A written %(what)s is required to %(action)s.")
                         % {"what": spec.comment_noun, "action": spec.verb}]},
            code="required",
        )
    method: Callable[..., None] = getattr(request, action)
    if not can_proceed(method):
        raise ActionConflict(_conflict_message(request, spec))
    if action in ("submit", "approve"):
        _require_account_free(request, action)
    # The transition's own permission: derived from the same declaration and rule, it
    # holds even for a caller that skipped the check above.
    if not has_transition_perm(method, by):
        raise PermissionDenied(_("You may not %(action)s this request.") % {"action": spec.verb})
    arguments: dict[str, Any] = {}
    if spec.data:
        if data is None:
            raise ValidationError({field: [_("This field is required.")] for field in spec.data},
                                  code="required")
        arguments = dict(data())
    from_state = request.state
    overridden: list[dict[str, str]] = []
    if action == "override_checks":
        overridden = list(
            request.checks.filter(status__in=(CheckStatus.FAIL, CheckStatus.ERROR)).values(
                "check_id", "subject", "status"
            )
        )
    method(by=by, **({spec.comment_arg: comment} if spec.comment_arg else {}), **arguments)
    request.full_clean(exclude=["state"])  # protected FSM field: set only by transitions
    try:
        request.save()
    except ConcurrentTransition:
        raise ActionConflict(  # noqa: B904 - the conflict is the whole story
            _("Someone else changed this request at the same time; reload it.")
        )
    if action == "override_checks":
        event = events.request_override_event(
            request,
            from_state=from_state,
            actor=by,
            source_ip=source_ip,
            reason=comment,
            overridden=overridden,
        )
    else:
        event = events.request_transition_event(
            request,
            action=action,
            from_state=from_state,
            actor=by,
            source_ip=source_ip,
            comment=comment,
            parameters=arguments,
        )
    _after_transition(request, action, event)
    return request


def _require_account_free(request: RelayRequest, action: str) -> None:
    """One account per use case, at submission (400 naming ``account_name``, as on create)
    and again at approval (409: two drafts of one name may both have been submitted
    before either was checked here, and the approver must not make both live)."""
    try:
        accounts.check_account_free(request)
    except ValidationError as exc:
        if action == "approve":
            raise ActionConflict(" ".join(exc.messages)) from None
        raise


def _after_transition(request: RelayRequest, action: str, event: RequestEvent) -> None:
    """What each transition sets in motion, visibly (no signals)."""
    if request.state == RequestState.CHECKING:
        dispatch_checks_on_commit(request.pk)
    elif request.state == RequestState.PROVISIONING:
        dispatch_on_commit("provision_request", request.pk)
    elif request.state in (RequestState.REVOKED, RequestState.EXPIRED):
        dispatch_on_commit("rebuild_relay_config")
    elif action == "grant_production":
        # The relay's policy file carries each entry's limits: the production quota
        # reaches the relay with this build. Were the dispatch lost, the entry keeps
        # relaying under its sandbox limit until the next build (docs/quotas.md).
        dispatch_on_commit("rebuild_relay_config", f"production access for #{request.pk}")
    directory_sync(request, action)
    credential_after_transition(request, action)  # issue mode: invalidate on removal
    # "Revoked"/"expired" would be untrue until a config version without the entry
    # exists: the build that leaves it out writes that mail (relay.relay_config_rebuild),
    # and the sweep makes sure such a build happens even if the dispatch above is lost.
    notice = ACTIONS[action].notice
    if notice is not None and not notice.after_removal:
        notifications.notification_enqueue(request=request, trigger=action, event=event,
                                           extra_context=_quota_facts(request, action))


def _quota_facts(request: RelayRequest, action: str) -> dict[str, Any] | None:
    """What a quota mail quotes, as it was at the event (a mail sent late must not show a
    later request's volume or tier)."""
    if action not in PRODUCTION_ACTIONS:
        return None
    return {
        "quota_tier": request.quota_tier,
        "daily_volume": request.expected_daily_volume,
        "production_volume": request.production_volume,
        "production_use_case": request.production_use_case,
        "production_bounce_handling": request.production_bounce_handling,
    }


# --- create and edit ---------------------------------------------------------------


def _team_for(user: AbstractBaseUser, team: Team | str) -> Team:
    slug = team.slug if isinstance(team, Team) else team
    own = Team.objects.filter(pk__in=team_ids_of(user), slug=slug).first()
    if own is None:
        raise ValidationError(
            {"team": [_("You can only file requests for a team you are a member of.")]},
            code="not_member",
        )
    return own


def _raise_if_invalid(instance: RelayRequest) -> None:
    errors = validate_request({f: getattr(instance, f) for f in ("kind", *EDITABLE_FIELDS)})
    try:
        # The table's check constraints (volume, FQDN, account name) restate rules
        # ``validate_request`` just applied, and Django validates each with a query (and
        # a savepoint): checked only when those rules already found an error, so valid
        # content costs no round trips and invalid content reads as before. The database
        # still enforces them on write.
        instance.full_clean(exclude=["created_by", "state"], validate_constraints=bool(errors))
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(ValidationError(m) for m in messages)
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def request_create(
    *,
    by: AbstractBaseUser,
    team: Team | str,
    kind: str,
    data: dict[str, Any],
    source_ip: str | None = None,
    submit: bool = False,
    idempotency_key: str = "",
) -> RelayRequest:
    """Create a draft (and optionally submit it) from already-cleaned field values.

    A non-empty ``idempotency_key`` is stored with the row; the unique constraint on
    (creator, key) makes a second insert with the same key fail (see
    :func:`request_create_once`, which turns that into "return the first request").
    """
    team_obj = _team_for(by, team)
    fields = {k: v for k, v in data.items() if k in EDITABLE_FIELDS}
    request = RelayRequest(kind=kind, team=team_obj, created_by=by,
                           idempotency_key=idempotency_key, **fields)
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    for name in spec.cleared_on_create if spec else ():
        setattr(request, name, RelayRequest._meta.get_field(name).get_default())
    _raise_if_invalid(request)
    accounts.check_account_free(request)  # one account per use case (400 on account_name)
    request.save()
    if submit:
        _submit_created(request, by=by, source_ip=source_ip)
    else:
        events.request_created_event(request, by, source_ip)
    return request


# What the ``submit`` transition writes (``RelayRequest.submit``), saved as one UPDATE.
SUBMIT_FIELDS = ("state", "submitted_by", "submitted_at", "override_reason",
                 "check_attempts", "check_next_attempt_at")


def _submit_created(request: RelayRequest, *, by: AbstractBaseUser,
                    source_ip: str | None) -> None:
    """Submit a request this transaction has just inserted ("create and submit").

    ``request_act`` would lock and re-read the row, re-validate what was validated a
    moment ago and save every column; here nobody else can see the row yet and its
    content is the one just checked (account included), so only the role and the
    transition's permission are checked, the transition's columns are written in one
    UPDATE and both audit events in one INSERT: a create-and-submit costs about half the
    queries (``tests/test_pipeline_cost.py``).
    """
    spec = USER_ACTIONS["submit"]
    _require_role(spec.role, request, by, spec.verb)
    if not has_transition_perm(request.submit, by):
        raise PermissionDenied(_("You may not %(action)s this request.") % {"action": spec.verb})
    from_state = request.state
    created = events.request_created_event(request, by, source_ip, save=False)
    request.submit(by=by)
    request.save(update_fields=SUBMIT_FIELDS)
    event = events.request_transition_event(
        request, action="submit", from_state=from_state, actor=by, source_ip=source_ip,
        save=False,
    )
    events.insert_many([created, event])
    _after_transition(request, "submit", event)


IDEMPOTENCY_KEY_MAX_LENGTH = 100


def validate_idempotency_key(value: str | None) -> str:
    """The client's idempotency key: empty (none), or 1-100 visible ASCII characters.

    Visible ASCII only (no spaces or control characters), so the key is safe in logs
    and in an HTTP header, and two clients cannot differ only by invisible characters.
    """
    key = value or ""
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH or not all("!" <= ch <= "~" for ch in key):
        raise ValidationError(
            {"idempotency_key": [_(
                "Idempotency-Key must be 1 to %(max)d visible ASCII characters "
                "(letters, digits, punctuation; no spaces)."
            ) % {"max": IDEMPOTENCY_KEY_MAX_LENGTH}]},
            code="invalid_idempotency_key",
        )
    return key


def request_create_once(
    *, by: AbstractBaseUser, idempotency_key: str, **kwargs: Any
) -> tuple[RelayRequest, bool]:
    """``request_create`` that a double click or a client retry cannot run twice.

    Returns ``(request, created)``: with a key this user already used, the request
    first created with it (``created`` False), whatever the body says now. The insert
    is tried first and the unique constraint on (creator, key) decides, so two
    concurrent creates with one key make one row: the loser's insert fails inside its
    savepoint, nothing of it is kept (no event, no task), and it returns the winner's
    row, which it can read once the winner committed (PostgreSQL makes the loser's
    insert wait for that).
    """
    key = validate_idempotency_key(idempotency_key)
    if not key:
        return request_create(by=by, **kwargs), True
    try:
        with transaction.atomic():
            return request_create(by=by, idempotency_key=key, **kwargs), True
    except IntegrityError:
        first = RelayRequest.objects.filter(created_by=by, idempotency_key=key).first()
        if first is None:  # some other constraint: not ours to swallow
            raise
        log.info("idempotent replay of request %s (key %r)", first.pk, key)
        return first, False


@transaction.atomic
def request_update(
    *,
    request_id: int,
    by: AbstractBaseUser,
    data: dict[str, Any],
    source_ip: str | None = None,
) -> RelayRequest:
    """Edit a draft or a request that needs changes; the diff goes to the audit trail.

    An edit of a checked field (``CHECKED_FIELDS``) discards the verdict, its
    fingerprint, the results and any override: they were about other content. The
    checks run again when the request is (re)submitted or an approver re-checks it;
    until then neither approve nor override can act on it.
    """
    request = _locked(request_id)
    _require_role(Role.REQUESTER, request, by, _("edit this request"))
    if request.state not in EDITABLE_STATES:
        raise ActionConflict(
            _("A request in state '%(state)s' cannot be edited.")
            % {"state": request.get_state_display().lower()}
        )
    unknown = set(data) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({f: [_("This field cannot be changed.")] for f in sorted(unknown)})
    checked_before = content_fingerprint(request)
    changes = {}
    for field, value in data.items():
        old = getattr(request, field)
        if old != value:
            changes[field] = [old, value]
            setattr(request, field, value)
    if not changes:
        return request
    _raise_if_invalid(request)
    accounts.check_account_free(request)
    discarded = None
    if content_fingerprint(request) != checked_before:
        discarded = _discard_checks(request)
    request.save()
    events.request_updated_event(request, by, source_ip, changes, discarded_checks=discarded)
    return request


def _discard_checks(request: RelayRequest) -> dict[str, Any] | None:
    """Forget a verdict whose content changed; what was dropped, for the audit event."""
    results = request.checks.count()
    if not (request.check_verdict or request.checked_fingerprint or results
            or request.override_reason):
        return None  # never checked: nothing to discard
    discarded = {
        "verdict": request.check_verdict,
        "fingerprint": request.checked_fingerprint,
        "results": results,
        "checked_fields": sorted(CHECKED_FIELDS),
    }
    if request.override_reason:
        discarded["override_reason"] = request.override_reason
    request.checks.all().delete()
    request.check_verdict = ""
    request.check_summary = {}
    request.checked_fingerprint = ""
    request.override_reason = ""
    return discarded


# --- results from tasks --------------------------------------------------------------


@transaction.atomic
def request_record_checks(
    *,
    request_id: int,
    checks: list[dict[str, Any]],
    final: bool = True,
    fingerprint: str | None = None,
    attempt: int | None = None,
    retry_in: float | None = None,
) -> RelayRequest | None:
    """Store check results (upsert, so a re-run gives the same rows) and move on.

    The verdict is the worst status (``checks.worst_status``: a definite ``fail``
    outranks ``error``). ``pass``/``warn`` go to approval; ``fail`` goes back to the
    requester at once, even if some look-up also errored. ``error`` alone (DNS could
    not answer) keeps the request in ``checking`` while retries remain (``final=False``;
    ``retry_in`` seconds until the scheduled retry, stored as ``check_next_attempt_at``
    so the sweep leaves that retry chain alone) and, once they are exhausted, goes to
    approvers, who see that the checks could not run and may re-run or override them.

    ``fingerprint`` is :func:`content_fingerprint` of the row the checks ran on (the
    current row when ``None``); ``attempt`` is the row's ``check_attempts`` when the
    checks started. Returns ``None``, recording nothing, when the results no longer
    belong to the row: it moved on (withdrawn, say), its checked content changed
    meanwhile, or another delivery of the task already recorded this attempt (a
    duplicated message must not record a second run or start a second chain).
    """
    request = _locked(request_id)
    if not can_proceed(request.checks_passed):
        log.info("request %s is %s; check results discarded", request_id, request.state)
        return None
    current = content_fingerprint(request)
    if fingerprint is not None and fingerprint != current:
        log.info("request %s was edited while its checks ran; results discarded", request_id)
        return None
    if attempt is not None and attempt != request.check_attempts:
        log.info("request %s: attempt %s already recorded (now %s); duplicate discarded",
                 request_id, attempt + 1, request.check_attempts)
        return None
    _store_results([(request, checks)])
    statuses = [c["status"] for c in checks]
    verdict = str(worst_status(statuses))
    summary: dict[str, Any] = {s.value: statuses.count(s.value) for s in CheckStatus}
    refused = sorted({c["subject"] for c in checks
                      if c["id"] == "address_policy" and c["status"] == CheckStatus.FAIL})
    if refused:  # the hard stop, readable by the model's pure conditions
        summary[POLICY_REFUSED] = refused
    now = timezone.now()
    request.check_verdict = verdict
    request.check_summary = summary
    request.checked_fingerprint = current
    request.checks_ran_at = now
    request.check_attempts += 1
    request.check_next_attempt_at = None
    recorded = events.request_checks_recorded_event(
        request, verdict=verdict, summary=summary, attempt=request.check_attempts, save=False
    )
    if verdict == CheckStatus.ERROR and not final:
        if retry_in is not None:
            request.check_next_attempt_at = now + timedelta(seconds=retry_in)
        request.save(update_fields=RECORDED_FIELDS)
        events.insert_many([recorded])
        return request
    from_state = request.state
    action = "checks_failed" if verdict == CheckStatus.FAIL else "checks_passed"
    getattr(request, action)()
    request.save(update_fields=(*RECORDED_FIELDS, "state"))
    failing = [c for c in checks if c["status"] in (CheckStatus.FAIL, CheckStatus.ERROR)]
    comment = "; ".join(f"{c['id']}({c['subject']}): {c.get('detail', '')}" for c in failing)
    event = events.request_transition_event(
        request, action=action, from_state=from_state, actor=None, comment=comment[:2000],
        save=False,
    )
    events.insert_many([recorded, event])
    notifications.notification_enqueue(request=request, trigger=action, event=event)
    return request


@dataclass(frozen=True)
class CheckRunResult:
    """One request's run for :func:`request_record_checks_many` (the arguments of
    :func:`request_record_checks`)."""

    request_id: int
    checks: list[dict[str, Any]]
    final: bool
    fingerprint: str
    attempt: int
    retry_in: float | None = None


@transaction.atomic
def request_record_checks_many(
    runs: Sequence[CheckRunResult],
) -> dict[int, RelayRequest | None]:
    """:func:`request_record_checks` for a batch of runs, in one transaction and a
    constant number of queries: what lets a burst be recorded at database speed.

    The same rules per request (its run is discarded, ``None``, when the row moved on,
    its content changed or the attempt was recorded already; ``error`` alone keeps it
    in ``checking`` while retries remain; otherwise it moves on, audited, and the mail
    its transition declares is queued), but the rows are locked with one statement,
    results, events and mails are written in bulk and the rows updated with one
    ``bulk_update`` per set of columns.
    """
    locking = RelayRequest.objects.select_related("team", "created_by", "submitted_by")
    if connection.features.has_select_for_update_of:
        locking = locking.select_for_update(of=("self",))
    else:
        locking = locking.select_for_update()
    rows = {r.pk: r for r in locking.filter(pk__in=[run.request_id for run in runs])
            .order_by("pk")}
    outcome: dict[int, RelayRequest | None] = {}
    accepted: list[tuple[RelayRequest, CheckRunResult]] = []
    for run in runs:
        request = rows.get(run.request_id)
        outcome[run.request_id] = None
        if request is None or not can_proceed(request.checks_passed):
            log.info("request %s is gone or moved on; check results discarded", run.request_id)
        elif run.fingerprint != content_fingerprint(request):
            log.info("request %s was edited while its checks ran; results discarded",
                     run.request_id)
        elif run.attempt != request.check_attempts:
            log.info("request %s: attempt %s already recorded; duplicate discarded",
                     run.request_id, run.attempt + 1)
        else:
            accepted.append((request, run))
    _store_results([(request, run.checks) for request, run in accepted])
    now = timezone.now()
    new_events: list[RequestEvent] = []
    waiting: list[RelayRequest] = []
    moved: list[RelayRequest] = []
    mails: list[tuple[RelayRequest, str, RequestEvent, list[dict[str, Any]]]] = []
    for request, run in accepted:
        checks = run.checks
        statuses = [c["status"] for c in checks]
        verdict = str(worst_status(statuses))
        summary: dict[str, Any] = {s.value: statuses.count(s.value) for s in CheckStatus}
        refused = sorted({c["subject"] for c in checks
                          if c["id"] == "address_policy" and c["status"] == CheckStatus.FAIL})
        if refused:
            summary[POLICY_REFUSED] = refused
        request.check_verdict = verdict
        request.check_summary = summary
        request.checked_fingerprint = run.fingerprint
        request.checks_ran_at = now
        request.check_attempts += 1
        request.check_next_attempt_at = None
        request.updated_at = now
        new_events.append(events.request_checks_recorded_event(
            request, verdict=verdict, summary=summary, attempt=request.check_attempts,
            save=False))
        outcome[request.pk] = request
        if verdict == CheckStatus.ERROR and not run.final:
            if run.retry_in is not None:
                request.check_next_attempt_at = now + timedelta(seconds=run.retry_in)
            waiting.append(request)
            continue
        from_state = request.state
        action = "checks_failed" if verdict == CheckStatus.FAIL else "checks_passed"
        getattr(request, action)()
        failing = [c for c in checks if c["status"] in (CheckStatus.FAIL, CheckStatus.ERROR)]
        comment = "; ".join(f"{c['id']}({c['subject']}): {c.get('detail', '')}"
                            for c in failing)
        event = events.request_transition_event(
            request, action=action, from_state=from_state, actor=None,
            comment=comment[:2000], save=False)
        new_events.append(event)
        moved.append(request)
        mails.append((request, action, event, checks))
    update_rows(waiting, (*RECORDED_FIELDS, "updated_at"))
    update_rows(moved, (*RECORDED_FIELDS, "state", "updated_at"))
    events.insert_many(new_events)
    notifications.notification_enqueue_checked(mails)
    return outcome


# The columns a new result row is written with (``insert_values``).
RESULT_COLUMNS = ("request", "check_id", "subject", "status", "detail", "evidence")


def _store_results(runs: list[tuple[RelayRequest, list[dict[str, Any]]]]) -> None:
    """Upsert the results of one or more runs: one read, one update, one insert and one
    delete for all of them, whatever their number.

    A re-run keeps the rows (and ids) of the results it finds again, so links to a
    result stay valid; results the run no longer produces are deleted. New rows are
    inserted from plain values (``insert_values``): nobody needs their ids, and model
    instances plus Django's bulk insert cost more than the checks themselves.
    """
    if not runs:
        return
    existing: dict[tuple[int, str, str], int] = {
        (request_id, check_id, subject): pk
        for pk, request_id, check_id, subject in CheckResult.objects.filter(
            request_id__in=[request.pk for request, _checks in runs]
        ).values_list("pk", "request_id", "check_id", "subject")}
    now = timezone.now()
    changed: list[CheckResult] = []
    new: list[tuple[Any, ...]] = []
    for request, checks in runs:
        for check in checks:
            evidence = check.get("evidence") or {}
            pk = existing.pop((request.pk, check["id"], check["subject"]), None)
            if pk is None:
                new.append((request.pk, check["id"], check["subject"], check["status"],
                            check.get("detail", ""), evidence))
            else:
                changed.append(CheckResult(
                    pk=pk, request=request, check_id=check["id"], subject=check["subject"],
                    status=check["status"], detail=check.get("detail", ""),
                    evidence=evidence, updated_at=now))
    update_rows(changed, ("status", "detail", "evidence", "updated_at"))
    insert_values(CheckResult, RESULT_COLUMNS, new, same={"created_at": now, "updated_at": now})
    if existing:
        CheckResult.objects.filter(pk__in=existing.values()).delete()


# What recording a run writes on the request row (one UPDATE, not the whole row).
RECORDED_FIELDS = ("check_verdict", "check_summary", "checked_fingerprint", "checks_ran_at",
                   "check_attempts", "check_next_attempt_at")


# --- ownership and renewal -------------------------------------------------------------

RENEWABLE_STATES = (RequestState.ACTIVE, RequestState.EXPIRED, RequestState.REVOKED)
# A handover detaches the old team's renewals in these states (see request_handover) ...
DETACHED_ON_HANDOVER = (
    RequestState.DRAFT,
    RequestState.CHECKING,
    RequestState.NEEDS_CHANGES,
    RequestState.PENDING_APPROVAL,
)
# ... and waits for these: approved, the renewal replaces the entry when it goes live.
APPROVED_NOT_LIVE = (RequestState.PROVISIONING, RequestState.PROVISIONING_FAILED)


@transaction.atomic
def request_handover(
    *,
    request_id: int,
    by: AbstractBaseUser,
    to_team: Team | str,
    comment: str = "",
    source_ip: str | None = None,
) -> RelayRequest:
    """Move an entry to another team: the owning team decides, both teams are told.

    The giver must be a member of the current team; the receiving team only has to
    exist (it learns by mail and can hand it back). Not a state change, but audited.

    Renewals the old team drafted and that are not yet approved (draft, checking,
    needs changes, pending approval) would, once live, supersede an entry that now
    belongs to someone else, without the new owners having agreed. So they are
    detached: their ``replaces`` link is cleared (an audited edit on each), they go on
    as separate requests of the old team, and the handover mail names them. A renewal
    already approved (provisioning, or provisioning failed) is about to replace the
    entry: the handover is refused until it is live or rejected, and then the live
    entry is the one to hand over.
    """
    request = _locked(request_id)
    _require_role(Role.REQUESTER, request, by, _("hand over this entry"))
    slug = to_team.slug if isinstance(to_team, Team) else str(to_team)
    if not TEAM_RE.fullmatch(slug):
        raise ValidationError({"team": [_("Name the team by its slug: letters, digits, '-' "
                                          "or '_', at most 50 characters.")]},
                              code="invalid_team")
    comment = _valid_comment(comment)
    target = Team.objects.filter(slug=slug).first()
    if target is None:
        raise ValidationError({"team": [_("No team '%(slug)s'.") % {"slug": slug}]},
                              code="unknown_team")
    if target.pk == request.team_id:
        raise ValidationError({"team": [_("The entry already belongs to this team.")]},
                              code="same_team")
    # Lock the renewals too: an approval of one of them waits for this handover (and
    # then finds no link to the entry), or this handover waits for the approval (and
    # then refuses).
    renewals = list(
        RelayRequest.objects.select_for_update()
        .filter(replaces_id=request.pk, state__in=(*DETACHED_ON_HANDOVER, *APPROVED_NOT_LIVE))
        .select_related("created_by")
        .order_by("pk")
    )
    approved = [r for r in renewals if r.state in APPROVED_NOT_LIVE]
    if approved:
        raise ActionConflict(
            _("Renewal %(ids)s of this entry is approved and about to replace it; hand over "
              "the entry once that renewal is live (or rejected).")
            % {"ids": ", ".join(f"#{r.pk}" for r in approved)}
        )
    old_team = request.team
    request.team = target
    request.save(update_fields=["team"])
    if renewals:
        RelayRequest.objects.filter(pk__in=[r.pk for r in renewals]).update(replaces=None)
        for renewal in renewals:
            events.request_renewal_detached_event(
                renewal, actor=by, source_ip=source_ip, entry_id=request.pk,
                to_team=target.slug,
            )
    event = events.request_handover_event(
        request, actor=by, source_ip=source_ip, from_team=old_team.slug,
        to_team=target.slug, comment=comment,
        detached_renewals=[r.pk for r in renewals],
    )
    notifications.notification_enqueue(
        request=request, trigger="handover", event=event,
        extra_recipients=[old_team.contact_email, *(r.created_by.email for r in renewals)],
    )
    return request


@transaction.atomic
def request_renew(
    *, request_id: int, by: AbstractBaseUser, source_ip: str | None = None
) -> RelayRequest:
    """Start a new draft from an entry: recertify with changes, or ask again after expiry.

    The draft goes through the checks and approval like any request; when it becomes
    active it supersedes the entry it replaces (if that one is still active).
    """
    original = _locked(request_id)
    _require_role(Role.REQUESTER, original, by, _("renew this entry"))
    if original.state not in RENEWABLE_STATES:
        raise ActionConflict(
            _("Only active, expired or revoked entries can be renewed; this one is %(state)s.")
            % {"state": original.get_state_display().lower()}
        )
    data = {f: getattr(original, f) for f in EDITABLE_FIELDS}
    copy = RelayRequest(kind=original.kind, team=original.team, created_by=by,
                        replaces=original, **data)
    _raise_if_invalid(copy)
    accounts.check_account_free(copy)  # another renewal of it may already be open
    copy.save()
    events.request_created_event(copy, by, source_ip)
    return copy


@transaction.atomic
def request_expire(*, request_id: int) -> RelayRequest | None:
    """Recertification missed: the entry leaves the next relay config (system action).

    Returns ``None`` when the entry is no longer active (recertified, revoked or already
    expired meanwhile), so the daily sweep can run twice without harm.
    """
    request = _locked(request_id)
    if not can_proceed(request.expire):
        return None
    from_state = request.state
    request.expire()
    request.save()
    event = events.request_transition_event(
        request, action="expire", from_state=from_state, actor=None,
        comment=f"not recertified by {request.recertify_by}",
    )
    _after_transition(request, "expire", event)
    return request
