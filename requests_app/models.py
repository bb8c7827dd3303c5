"""Relaydesk's data: teams, relay requests and their state machine, checks, audit events.

The state machine is declared here and only here: transitions set fields on
their own row and nothing else. Services (``services.py``) lock the row, check the
transition permission, call the transition, save, write the event and schedule work.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django_fsm import ConcurrentTransitionMixin
from django_fsm import FSMField
from django_fsm import transition

from . import relay_chunks
from .actions import ACTIONS
from .actions import Role
from .checks import CheckStatus
from .kinds import KINDS
from .kinds import KindSpec
from .validators import validate_sender_domains

if TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Iterable
    from collections.abc import Mapping

    from django.contrib.auth.models import AbstractBaseUser

__all__ = [
    "APPROVERS_GROUP",
    "AUDITORS_GROUP",
    "CHECKED_FIELDS",
    "CHECK_STATUS_CHOICES",
    "POLICY_REFUSED",
    "QuotaTier",
    "ROLE_PERMISSIONS",
    "AccountCredential",
    "ApprovedSenderDomain",
    "CheckResult",
    "CheckRun",
    "DirectoryChange",
    "CheckStatus",
    "Membership",
    "Notification",
    "RelayConfigBlob",
    "RelayConfigBlobChunk",
    "RelayConfigChunk",
    "RelayConfigChange",
    "RelayConfigFile",
    "RelayConfigVersion",
    "RelayEndpoint",
    "RelayRequest",
    "RequestComment",
    "RequestEvent",
    "RequestKind",
    "RequestState",
    "RowInsertJSONField",
    "Team",
    "TimeStampedModel",
    "TlsMode",
    "checks_current",
    "checks_policy_clear",
    "content_fingerprint",
    "is_approver",
    "is_auditor",
    "permission_of",
    "production_askable",
    "production_conflict",
    "production_pending",
    "team_ids_of",
    "requesting_side",
    "role_refusal",
]

APPROVERS_GROUP = "approvers"
AUDITORS_GROUP = "auditors"


def _in_group(user: AbstractBaseUser | None, name: str) -> bool:
    if user is None or not user.is_authenticated:
        return False
    # Cache per user object: the queue asks this once per row.
    cache = user.__dict__.setdefault("_relaydesk_groups", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True))
        user.__dict__["_relaydesk_groups"] = cache
    return name in cache


def is_approver(user: AbstractBaseUser | None) -> bool:
    """Approvers (help desk, mail team) are the members of the ``approvers`` group."""
    return _in_group(user, APPROVERS_GROUP)


def is_auditor(user: AbstractBaseUser | None) -> bool:
    """Auditors read every request and event; they never act."""
    return _in_group(user, AUDITORS_GROUP)


class TimeStampedModel(models.Model):
    """Abstract base giving every row its creation and last-change time."""

    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        abstract = True


class Team(TimeStampedModel):
    """A team that owns servers and service accounts; its members may file requests."""

    slug = models.SlugField(_("slug"), unique=True, help_text=_("Short id used in the API."))
    name = models.CharField(_("name"), max_length=200)
    contact_email = models.EmailField(_("team contact e-mail"), blank=True)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        through="Membership",
        related_name="teams",
        verbose_name=_("members"),
    )

    class Meta:
        ordering = ("slug",)
        verbose_name = _("team")
        verbose_name_plural = _("teams")

    def __str__(self) -> str:
        return self.name or self.slug


class Membership(TimeStampedModel):
    """A user's membership of a team (who may file and see the team's requests)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, verbose_name=_("team"))
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, verbose_name=_("user")
    )

    class Meta:
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")
        constraints = [
            models.UniqueConstraint(
                fields=("team", "user"),
                name="membership_unique_team_user",
                violation_error_message=_("This user is already a member of the team."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team}"


def team_ids_of(user: AbstractBaseUser) -> models.QuerySet:
    """The ids of the teams ``user`` is a member of: the one definition of membership.

    A subquery where the selectors scope what a requester sees, a set in
    ``RelayRequest.is_team_member`` (the role rules), the filter of the teams a user
    may file for.
    """
    return Membership.objects.filter(user=user).values_list("team_id", flat=True)


class ApprovedSenderDomain(TimeStampedModel):
    """A sender domain the relay passes without rewriting From/Return-Path.

    Added to ``RELAY_APPROVED_SENDER_DOMAINS`` from the environment; the union is used.
    """

    domain = models.CharField(_("domain"), max_length=253, unique=True)
    note = models.CharField(_("note"), max_length=200, blank=True)

    class Meta:
        ordering = ("domain",)
        verbose_name = _("approved sender domain")
        verbose_name_plural = _("approved sender domains")

    def __str__(self) -> str:
        return self.domain

    def save(self, *args: object, **kwargs: object) -> None:
        # Every save, not only the admin's: a malformed row would reach every check run.
        self.clean()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        """The domain must be one the request forms accept as a sender domain.

        The admin form calls this, so a value like ``exa mple.org`` is a field error
        there; stored in normal form (IDN as punycode, lower case, no final dot).
        """
        super().clean()
        try:
            self.domain = validate_sender_domains([self.domain])[0]
        except ValidationError as exc:
            raise ValidationError({"domain": exc.error_list}) from None


class RelayEndpoint(TimeStampedModel):
    """A relay host requesters send to; the default one feeds the snippets.

    When none is marked default, ``RELAY_HOST`` and the port settings are used.
    """

    name = models.CharField(_("name"), max_length=100, unique=True)
    host = models.CharField(_("host name"), max_length=253)
    submission_port = models.PositiveIntegerField(_("STARTTLS port"), default=587)
    smtps_port = models.PositiveIntegerField(_("implicit TLS port"), default=465)
    is_default = models.BooleanField(_("default endpoint"), default=False)

    class Meta:
        ordering = ("name",)
        verbose_name = _("relay endpoint")
        verbose_name_plural = _("relay endpoints")
        constraints = [
            models.UniqueConstraint(
                fields=("is_default",),
                condition=models.Q(is_default=True),
                name="relayendpoint_single_default",
                violation_error_message=_("Only one relay endpoint can be the default."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.host})"


class RequestKind(models.TextChoices):
    SERVER = "server", _("Server allowlisting")
    ACCOUNT = "account", _("Functional-account relay access")


class TlsMode(models.TextChoices):
    STARTTLS = "starttls", _("STARTTLS on port 587")
    SMTPS = "smtps", _("Implicit TLS (SMTPS) on port 465")


class QuotaTier(models.TextChoices):
    """How much an entry may send: every new entry starts in the sandbox (a small daily
    quota), production (its approved daily volume) is granted after a review."""

    SANDBOX = "sandbox", _("Sandbox")
    PRODUCTION = "production", _("Production")


class RequestState(models.TextChoices):
    DRAFT = "draft", _("Draft")
    CHECKING = "checking", _("Checking")
    NEEDS_CHANGES = "needs_changes", _("Needs changes")
    PENDING_APPROVAL = "pending_approval", _("Pending approval")
    PROVISIONING = "provisioning", _("Provisioning")
    PROVISIONING_FAILED = "provisioning_failed", _("Provisioning failed")
    ACTIVE = "active", _("Active")
    REJECTED = "rejected", _("Rejected")
    WITHDRAWN = "withdrawn", _("Withdrawn")
    REVOKED = "revoked", _("Revoked")
    EXPIRED = "expired", _("Expired")


# The columns of check outcomes. ``CheckStatus`` is the check engine's (``checks``, no
# Django) and so is the ranking of a verdict (``checks.worst_status``); the choices keep
# the statuses' historical order, which is not the ranking.
CHECK_STATUS_CHOICES = [(status.value, status.value) for status in CheckStatus]


# --- roles: the one copy of who may act; the transitions' permissions derive from it ----


def requesting_side(instance: RelayRequest, user: AbstractBaseUser) -> str:
    """How ``user`` stands on the request's own side: ``"filed"`` (created or submitted
    it), ``"team"`` (a member of its team), or ``""`` (neither).

    Segregation of duties: nobody on that side decides the request or confirms its
    directory change; another approver must.
    """
    if instance.created_by_id == user.pk or instance.submitted_by_id == user.pk:
        return "filed"
    return "team" if instance.is_team_member(user) else ""


def role_refusal(role: Role, instance: RelayRequest, user: AbstractBaseUser,
                 doing: str) -> str | None:
    """Why ``user`` may not act on ``instance`` in ``role`` (``None``: they may).

    ``doing`` completes "Only approvers can ..." ("request changes", "edit request #7").
    The transitions' ``permission=`` functions (:data:`ROLE_PERMISSIONS`) and the
    services' 403 messages both come from here, so the rule cannot differ between them.
    """
    if role is Role.REQUESTER:
        if instance.is_team_member(user):
            return None
        return gettext("Only members of the owning team can %(doing)s.") % {"doing": doing}
    if role is Role.INDEPENDENT_APPROVER:
        if not is_approver(user):
            return gettext("Only approvers can %(doing)s.") % {"doing": doing}
        side = requesting_side(instance, user)
        if side == "filed":
            return gettext("Approvers cannot decide a request they filed themselves.")
        if side == "team":
            return gettext("Approvers cannot decide a request of a team they are a member of.")
        return None
    return gettext("Only the system can %(doing)s.") % {"doing": doing}


def _is_requester(instance: RelayRequest, user: AbstractBaseUser) -> bool:
    """A member of the owning team acts for the team."""
    return role_refusal(Role.REQUESTER, instance, user, "") is None


def _is_independent_approver(instance: RelayRequest, user: AbstractBaseUser) -> bool:
    """Segregation of duties: approvers never decide their own team's or own request."""
    return role_refusal(Role.INDEPENDENT_APPROVER, instance, user, "") is None


def _system_only(instance: RelayRequest, user: AbstractBaseUser) -> bool:
    """Transitions driven by tasks (check results, provisioning): no user may fire them."""
    return False


# django-fsm's ``permission=`` (instance, user) -> bool, one function per role.
ROLE_PERMISSIONS = {
    Role.REQUESTER: _is_requester,
    Role.INDEPENDENT_APPROVER: _is_independent_approver,
    Role.SYSTEM: _system_only,
}


def permission_of(action: str) -> Callable[[RelayRequest, AbstractBaseUser], bool]:
    """The ``permission=`` of a transition: the one of its declared role (``actions``).

    A transition without a declaration fails here, when the model is loaded.
    """
    return ROLE_PERMISSIONS[ACTIONS[action].role]


# --- conditions: pure, read only the instance -----------------------------------------

# What the checks read of a request: a change to any of these makes a verdict stale.
CHECKED_FIELDS = (
    "kind", "fqdn", "ipv4", "ipv6", "sender_domains", "sender_addresses", "dkim_selector",
)
# ``check_summary`` key listing the addresses the address policy refused in that run.
POLICY_REFUSED = "policy_refused"


def content_fingerprint(request: object) -> str:
    """sha256 of the checked fields in canonical JSON (sorted keys, no spaces, UTF-8).

    Why: a verdict is only worth something for the content it was computed on. The
    check task fingerprints the row it loaded and the result is stored with the
    verdict, so approve and override can tell a run of the current content from one
    of content edited since. Lists keep their stored order: any stored change counts.
    Works on a model row or any object with the same attributes (the recheck's rows).
    """
    content = {name: getattr(request, name) for name in CHECKED_FIELDS}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def checks_current(instance: RelayRequest) -> bool:
    """The stored verdict was computed on exactly the request's current content."""
    fingerprint = instance.checked_fingerprint
    return bool(fingerprint) and fingerprint == content_fingerprint(instance)


def checks_policy_clear(instance: RelayRequest) -> bool:
    """No address of the current run was refused by the address policy.

    A hard stop: loopback, private (unless allowed), link-local, multicast,
    documentation and the other special ranges never reach the relay, whatever an
    approver writes, so neither override nor approval may pass such a run.
    """
    summary = instance.check_summary if isinstance(instance.check_summary, dict) else {}
    return not summary.get(POLICY_REFUSED)


def checks_allow_approval(instance: RelayRequest) -> bool:
    """Approval needs passing checks, or a written override of a failed/errored check."""
    if instance.check_verdict in (CheckStatus.PASS, CheckStatus.WARN):
        return True
    return bool(instance.override_reason.strip())


def checks_need_override(instance: RelayRequest) -> bool:
    return instance.check_verdict in (CheckStatus.FAIL, CheckStatus.ERROR)


def production_askable(instance: RelayRequest) -> bool:
    """The owners may ask for production access: still in the sandbox, nothing pending.

    One open request at a time, so approvers never decide on a superseded volume.
    """
    return instance.quota_tier == QuotaTier.SANDBOX and instance.production_requested_at is None


def production_pending(instance: RelayRequest) -> bool:
    """A request for production access waits for an approver's decision."""
    return instance.quota_tier == QuotaTier.SANDBOX and instance.production_requested_at is not None


def production_conflict(instance: RelayRequest, action: str) -> str | None:
    """Why a quota action cannot happen on this active entry (the 409's words), or
    ``None`` when the quota conditions are not what stops it (another state: the
    services' generic message says that)."""
    if instance.state != RequestState.ACTIVE:
        return None
    if action == "request_production" and instance.quota_tier == QuotaTier.PRODUCTION:
        return gettext("Request #%(pk)s already has production access (%(volume)s messages "
                       "per 24 hours).") % {
            "pk": instance.pk, "volume": instance.expected_daily_volume}
    if action == "request_production" and production_pending(instance):
        return gettext("Production access for request #%(pk)s was already requested on "
                       "%(when)s UTC and waits for an approver's decision; ask again only "
                       "after it is decided.") % {
            "pk": instance.pk,
            "when": instance.production_requested_at.strftime("%Y-%m-%d %H:%M")}
    if action in ("grant_production", "refuse_production") and not production_pending(instance):
        return gettext("Request #%(pk)s has no pending request for production access to "
                       "decide.") % {"pk": instance.pk}
    return None


class RelayRequest(ConcurrentTransitionMixin, TimeStampedModel):
    """One request for relay access: a server to allowlist or a functional account.

    List fields (addresses, sender domains) are stored normalised as JSON lists; a
    denormalised ``search_text`` keeps the approver queue's search to one indexed
    column, and ``check_summary`` keeps the queue row's evidence without a join.
    """

    kind = models.CharField(_("kind"), max_length=10, choices=RequestKind.choices)
    state = FSMField(
        _("state"),
        default=RequestState.DRAFT,
        choices=RequestState.choices,
        protected=True,
        db_index=True,
    )
    team = models.ForeignKey(
        Team, on_delete=models.PROTECT, related_name="requests", verbose_name=_("owning team")
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="relay_requests",
        verbose_name=_("created by"),
    )
    contact_email = models.EmailField(_("contact e-mail"))
    chat_channel = models.CharField(_("chat channel"), max_length=200, blank=True)
    sender_domains = models.JSONField(_("sender domains"), default=list, blank=True)
    sender_addresses = models.JSONField(_("sender addresses"), default=list, blank=True)
    dkim_selector = models.CharField(_("DKIM selector"), max_length=63, blank=True)
    expected_daily_volume = models.PositiveIntegerField(_("expected messages per day"))
    # server allowlisting
    fqdn = models.CharField(_("FQDN"), max_length=253, blank=True, db_index=True)
    ipv4 = models.JSONField(_("IPv4 addresses"), default=list, blank=True)
    ipv6 = models.JSONField(_("IPv6 addresses"), default=list, blank=True)
    purpose = models.TextField(_("purpose"), blank=True)
    # functional account
    account_name = models.CharField(_("account name"), max_length=64, blank=True, db_index=True)
    use_case = models.TextField(_("use case"), blank=True)
    tls_mode = models.CharField(
        _("TLS mode"), max_length=10, choices=TlsMode.choices, blank=True
    )
    # workflow facts, set by transitions
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("submitted by"),
    )
    submitted_at = models.DateTimeField(_("submitted at"), null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("decided by"),
    )
    decided_at = models.DateTimeField(_("decided at"), null=True, blank=True)
    decision_note = models.TextField(_("decision note"), blank=True)
    override_reason = models.TextField(_("check override reason"), blank=True)
    activated_at = models.DateTimeField(_("active since"), null=True, blank=True)
    # check results, denormalised for the queue
    check_verdict = models.CharField(
        _("check verdict"), max_length=5, choices=CHECK_STATUS_CHOICES, blank=True
    )
    check_summary = models.JSONField(_("check summary"), default=dict, blank=True)
    checks_ran_at = models.DateTimeField(_("checks ran at"), null=True, blank=True)
    check_attempts = models.PositiveIntegerField(_("check attempts"), default=0)
    checked_fingerprint = models.CharField(
        _("checked content fingerprint"),
        max_length=64,
        blank=True,
        help_text=_(
            "sha256 of the checked fields (FQDN, addresses, senders, selector) the current "
            "verdict was computed for; a verdict of other content is stale."
        ),
    )
    check_next_attempt_at = models.DateTimeField(
        _("next check attempt"),
        null=True,
        blank=True,
        help_text=_("When the scheduled retry of the checks is due (one retry chain)."),
    )
    provision_attempts = models.PositiveIntegerField(
        _("provisioning attempts"),
        default=0,
        help_text=_("Config builds that tried and failed to include this request."),
    )
    provision_error = models.TextField(
        _("provisioning error"),
        blank=True,
        help_text=_("Why the last config build left this request out."),
    )
    idempotency_key = models.CharField(
        _("idempotency key"),
        max_length=100,
        blank=True,
        help_text=_("Client-chosen key: a retried create with the same key returns the "
                    "first request instead of making a second."),
    )
    search_text = models.TextField(_("search text"), blank=True, editable=False)
    # the approver working on it ("assigned to me" in the queue)
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("assigned to"),
    )
    assigned_at = models.DateTimeField(_("assigned at"), null=True, blank=True)
    # sending quota: sandbox until an approver grants production access
    quota_tier = models.CharField(
        _("quota tier"), max_length=10, choices=QuotaTier.choices, default=QuotaTier.SANDBOX
    )
    production_requested_at = models.DateTimeField(
        _("production access requested at"), null=True, blank=True,
        help_text=_("Set while the owners' request for production access awaits approvers."),
    )
    production_volume = models.PositiveIntegerField(
        _("requested production volume (messages per day)"), null=True, blank=True
    )
    production_use_case = models.TextField(_("production use case"), blank=True)
    production_bounce_handling = models.TextField(_("bounce and complaint handling"),
                                                  blank=True)
    # lifecycle after approval
    recertify_by = models.DateField(_("recertify by"), null=True, blank=True, db_index=True)
    drifted_at = models.DateTimeField(_("drift seen at"), null=True, blank=True, db_index=True)
    drift_detail = models.JSONField(_("drift detail"), default=dict, blank=True)
    suspended_at = models.DateTimeField(
        _("suspended at"),
        null=True,
        blank=True,
        help_text=_("Drifted past the grace period: left out of the relay config."),
    )
    replaces = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="replaced_by",
        verbose_name=_("replaces"),
        help_text=_("The active entry this request recertifies with changes, or renews."),
    )

    class Meta:
        ordering = ("created_at", "pk")
        verbose_name = _("relay request")
        verbose_name_plural = _("relay requests")
        permissions = [
            ("approve_relayrequest", "Can approve, reject or revoke relay requests"),
        ]
        indexes = [
            models.Index(fields=("state", "submitted_at"), name="request_queue_idx"),
            # the dashboard's aggregates: decisions in a window (the median reads both
            # columns from the index), active entries by team
            models.Index(fields=("decided_at", "submitted_at"), name="request_decided_idx"),
            models.Index(fields=("state", "team"), name="request_state_team_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expected_daily_volume__gte=1),
                name="request_volume_positive",
                violation_error_message=_("Expected volume must be a positive integer."),
            ),
            models.CheckConstraint(
                condition=~models.Q(kind="server") | ~models.Q(fqdn=""),
                name="request_server_has_fqdn",
                violation_error_message=_("A server request needs an FQDN."),
            ),
            models.UniqueConstraint(
                fields=("created_by", "idempotency_key"),
                condition=~models.Q(idempotency_key=""),
                name="request_idempotency_key_unique",
                violation_error_message=_("A request with this idempotency key exists."),
            ),
            models.CheckConstraint(
                condition=~models.Q(kind="account") | ~models.Q(account_name=""),
                name="request_account_has_name",
                violation_error_message=_("A functional-account request needs an account name."),
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.subject}"

    def save(self, *args: object, **kwargs: object) -> None:
        self.search_text = " ".join(
            [self.fqdn, self.account_name, *self.ipv4, *self.ipv6, *self.sender_domains]
        ).lower()
        update_fields = kwargs.get("update_fields")
        if update_fields is not None:
            kwargs["update_fields"] = {*update_fields, "search_text", "updated_at"}
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("requests:detail", kwargs={"pk": self.pk})

    @property
    def kind_spec(self) -> KindSpec | None:
        """What this request's kind is (``kinds.py``); None for a kind no spec declares."""
        return KINDS.get(self.kind)

    @property
    def subject(self) -> str:
        """What the request is about, as shown in lists and mail subjects (its kind's
        ``subject_field``)."""
        spec = KINDS.get(self.kind)
        return getattr(self, spec.subject_field) if spec else ""

    @property
    def addresses(self) -> list[str]:
        return [*self.ipv6, *self.ipv4]

    @property
    def checks_stale(self) -> bool:
        """Checks ran, but not on the current content: edited since, or run before
        verdicts were bound to content. Approve and override wait for a fresh run."""
        ran = self.checks_ran_at is not None or bool(self.check_verdict)
        return ran and not checks_current(self)

    def is_team_member(self, user: AbstractBaseUser | None) -> bool:
        if user is None or not user.is_authenticated:
            return False
        team_ids = user.__dict__.get("_relaydesk_team_ids")
        if team_ids is None:
            team_ids = set(team_ids_of(user))
            user.__dict__["_relaydesk_team_ids"] = team_ids
        return self.team_id in team_ids

    # --- transitions: declarations only -------------------------------------------

    @transition(
        field=state,
        source=[RequestState.DRAFT, RequestState.NEEDS_CHANGES],
        target=RequestState.CHECKING,
        permission=permission_of("submit"),
    )
    def submit(self, by: AbstractBaseUser) -> None:
        self.submitted_by = by
        self.submitted_at = timezone.now()
        self.override_reason = ""
        self.check_attempts = 0
        self.check_next_attempt_at = None  # a new retry chain starts

    @transition(
        field=state,
        source=[RequestState.PENDING_APPROVAL, RequestState.NEEDS_CHANGES],
        target=RequestState.CHECKING,
        permission=permission_of("recheck"),
    )
    def recheck(self, by: AbstractBaseUser) -> None:
        self.override_reason = ""
        self.check_attempts = 0
        self.check_next_attempt_at = None  # a new retry chain starts

    @transition(
        field=state,
        source=RequestState.CHECKING,
        target=RequestState.PENDING_APPROVAL,
        permission=permission_of("checks_passed"),
    )
    def checks_passed(self) -> None:
        """Pass/warn, or error after the retries ran out: approvers decide with evidence."""

    @transition(
        field=state,
        source=RequestState.CHECKING,
        target=RequestState.NEEDS_CHANGES,
        permission=permission_of("checks_failed"),
    )
    def checks_failed(self) -> None:
        """A definitive failure goes back to the requester with the reasons."""

    @transition(
        field=state,
        source=[RequestState.NEEDS_CHANGES, RequestState.PENDING_APPROVAL],
        target=RequestState.PENDING_APPROVAL,
        permission=permission_of("override_checks"),
        conditions=[checks_current, checks_policy_clear, checks_need_override],
    )
    def override_checks(self, by: AbstractBaseUser, reason: str) -> None:
        self.override_reason = reason

    @transition(
        field=state,
        source=RequestState.PENDING_APPROVAL,
        target=RequestState.PROVISIONING,
        permission=permission_of("approve"),
        conditions=[checks_current, checks_policy_clear, checks_allow_approval],
    )
    def approve(self, by: AbstractBaseUser, note: str = "") -> None:
        self.decided_by = by
        self.decided_at = timezone.now()
        self.decision_note = note
        self._keep_production_of_replaced()

    def _keep_production_of_replaced(self) -> None:
        """A renewal of the team's own production entry stays in production.

        Its owners already passed the production review; sending it back to the sandbox
        would throttle a sender that was fine yesterday. Only up to the volume approved
        then: more needs a new production request. Decided at approval, so the config
        build that puts the renewal live already applies the production quota.
        """
        replaced = self.replaces
        if (replaced is None or replaced.team_id != self.team_id
                or replaced.quota_tier != QuotaTier.PRODUCTION):
            return
        self.quota_tier = QuotaTier.PRODUCTION
        self.expected_daily_volume = min(self.expected_daily_volume,
                                         replaced.expected_daily_volume)

    @transition(
        field=state,
        source=RequestState.PENDING_APPROVAL,
        target=RequestState.NEEDS_CHANGES,
        permission=permission_of("request_changes"),
    )
    def request_changes(self, by: AbstractBaseUser, note: str = "") -> None:
        self.decision_note = note

    @transition(
        field=state,
        source=[RequestState.PENDING_APPROVAL, RequestState.PROVISIONING_FAILED],
        target=RequestState.REJECTED,
        permission=permission_of("reject"),
    )
    def reject(self, by: AbstractBaseUser, note: str = "") -> None:
        self.decided_by = by
        self.decided_at = timezone.now()
        self.decision_note = note

    @transition(
        field=state,
        source=[
            RequestState.DRAFT,
            RequestState.CHECKING,
            RequestState.NEEDS_CHANGES,
            RequestState.PENDING_APPROVAL,
        ],
        target=RequestState.WITHDRAWN,
        permission=permission_of("withdraw"),
    )
    def withdraw(self, by: AbstractBaseUser) -> None:
        """Only the owning team withdraws."""

    @transition(
        field=state,
        source=RequestState.PROVISIONING,
        target=RequestState.ACTIVE,
        permission=permission_of("activate"),
    )
    def activate(self) -> None:
        self.provision_error = ""
        self.activated_at = timezone.now()
        self.recertify_by = (self.activated_at + settings.RELAY_RECERTIFY_AFTER).date()

    @transition(
        field=state,
        source=RequestState.PROVISIONING,
        target=RequestState.PROVISIONING_FAILED,
        permission=permission_of("provisioning_failed"),
    )
    def provisioning_failed(self) -> None:
        """Config builds left it out ``RELAY_PROVISION_MAX_ATTEMPTS`` times (the renderer
        refused a value); ``provision_error`` says why. Approvers retry or reject."""

    @transition(
        field=state,
        source=RequestState.PROVISIONING_FAILED,
        target=RequestState.PROVISIONING,
        permission=permission_of("retry_provisioning"),
    )
    def retry_provisioning(self, by: AbstractBaseUser, note: str = "") -> None:
        """Try again (after the renderer's rules or the data were fixed): attempts restart."""
        self.provision_attempts = 0
        self.provision_error = ""

    @transition(
        field=state,
        source=RequestState.ACTIVE,
        target=RequestState.ACTIVE,
        permission=permission_of("recertify"),
    )
    def recertify(self, by: AbstractBaseUser) -> None:
        """The owner confirms the entry is still needed and correct."""
        self.recertify_by = (timezone.now() + settings.RELAY_RECERTIFY_AFTER).date()

    @transition(
        field=state,
        source=RequestState.ACTIVE,
        target=RequestState.ACTIVE,
        permission=permission_of("request_production"),
        conditions=[production_askable],
    )
    def request_production(self, by: AbstractBaseUser, *, volume: int, use_case: str,
                           bounce_handling: str) -> None:
        """The owners ask to leave the sandbox; the values were validated by
        ``quotas.request_production_access`` and wait for an approver."""
        self.production_requested_at = timezone.now()
        self.production_volume = volume
        self.production_use_case = use_case
        self.production_bounce_handling = bounce_handling

    @transition(
        field=state,
        source=RequestState.ACTIVE,
        target=RequestState.ACTIVE,
        permission=permission_of("grant_production"),
        conditions=[production_pending],
    )
    def grant_production(self, by: AbstractBaseUser) -> None:
        """The requested volume becomes the entry's daily quota (the relay's policy file
        carries it from the next config build). The request's texts stay as the record
        of what was granted."""
        self.quota_tier = QuotaTier.PRODUCTION
        self.expected_daily_volume = self.production_volume
        self.production_requested_at = None

    @transition(
        field=state,
        source=RequestState.ACTIVE,
        target=RequestState.ACTIVE,
        permission=permission_of("refuse_production"),
        conditions=[production_pending],
    )
    def refuse_production(self, by: AbstractBaseUser) -> None:
        """The entry stays in the sandbox; the reason is in the audit event and the mail.
        The owners may ask again."""
        self.production_requested_at = None

    @transition(
        field=state,
        source=RequestState.ACTIVE,
        target=RequestState.REVOKED,
        permission=permission_of("supersede"),
    )
    def supersede(self) -> None:
        """Replaced by an approved request that recertified it with changes."""

    @transition(
        field=state,
        source=RequestState.ACTIVE,
        target=RequestState.REVOKED,
        permission=permission_of("revoke"),
    )
    def revoke(self, by: AbstractBaseUser, note: str = "") -> None:
        self.decided_by = by
        self.decided_at = timezone.now()
        self.decision_note = note

    @transition(
        field=state,
        source=RequestState.ACTIVE,
        target=RequestState.EXPIRED,
        permission=permission_of("expire"),
    )
    def expire(self) -> None:
        """Recertification missed (lifecycle issue)."""


class RowInsertJSONField(models.JSONField):
    """A JSONField that PostgreSQL bulk-inserts as ``VALUES`` rows, not an ``UNNEST`` array.

    Why: Django 5.2 bulk-inserts literal values on PostgreSQL through ``UNNEST(%s::jsonb[])``.
    With psycopg's client-side binding (Django's default) each document then becomes an
    array element escaped by a Python regex, one substitution per double quote: for the
    recheck's multi-kilobyte results that was most of the time its inserts took
    (docs/architecture.md, "Measured choices"). A ``get_placeholder`` makes Django keep
    the plain multi-row ``VALUES`` form, whose literals libpq escapes in C. The column
    and its contents are unchanged.
    """

    def get_placeholder(self, value: object, compiler: object, connection: object) -> str:
        return "%s"


class CheckRun(models.Model):
    """One periodic re-verification of an active entry (history of drift)."""

    request = models.ForeignKey(
        RelayRequest, on_delete=models.CASCADE, related_name="check_runs",
        verbose_name=_("request"),
    )
    ran_at = models.DateTimeField(_("ran at"), default=timezone.now, db_index=True)
    verdict = models.CharField(_("verdict"), max_length=5, choices=CHECK_STATUS_CHOICES)
    drifted = models.BooleanField(_("drifted"), default=False)
    results = RowInsertJSONField(_("results"), default=list)

    class Meta:
        ordering = ("-ran_at", "-pk")
        verbose_name = _("check run")
        verbose_name_plural = _("check runs")

    def __str__(self) -> str:
        return f"#{self.request_id} {self.ran_at:%Y-%m-%d %H:%M} {self.verdict}"


class DirectoryChange(TimeStampedModel):
    """A change to the relay-allow group in the directory for a functional account.

    Done by the LDAP provisioner when a directory is configured; otherwise left as a
    ``manual`` to-do with the exact LDIF an administrator applies.
    """

    class Action(models.TextChoices):
        ADD = "add", _("add to relay group")
        REMOVE = "remove", _("remove from relay group")

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        DONE = "done", _("done")
        MANUAL = "manual", _("manual to-do")
        FAILED = "failed", _("failed, needs a person")

    request = models.ForeignKey(
        RelayRequest, on_delete=models.CASCADE, related_name="directory_changes",
        verbose_name=_("request"),
    )
    action = models.CharField(_("action"), max_length=10, choices=Action.choices)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.PENDING,
        db_index=True,
    )
    ldif = models.TextField(_("LDIF of the change"), blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    done_at = models.DateTimeField(_("done at"), null=True, blank=True)
    done_by = models.CharField(_("done by"), max_length=150, blank=True)

    class Meta:
        ordering = ("created_at", "pk")
        verbose_name = _("directory change")
        verbose_name_plural = _("directory changes")

    def __str__(self) -> str:
        return f"{self.action} {self.request.account_name} ({self.status})"


class CheckResult(TimeStampedModel):
    """The latest result of one check on one subject of a request (upserted by the task)."""

    request = models.ForeignKey(
        RelayRequest, on_delete=models.CASCADE, related_name="checks", verbose_name=_("request")
    )
    check_id = models.CharField(_("check"), max_length=40)
    subject = models.CharField(_("subject"), max_length=300)
    status = models.CharField(_("status"), max_length=5, choices=CHECK_STATUS_CHOICES)
    detail = models.TextField(_("detail"), blank=True)
    evidence = models.JSONField(_("evidence"), default=dict, blank=True)

    class Meta:
        ordering = ("check_id", "subject")
        verbose_name = _("check result")
        verbose_name_plural = _("check results")
        constraints = [
            models.UniqueConstraint(
                fields=("request", "check_id", "subject"),
                name="checkresult_unique_per_subject",
                violation_error_message=_("One result per check and subject."),
            )
        ]

    def __str__(self) -> str:
        return f"{self.check_id}({self.subject}) = {self.status}"

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.check_id,
            "subject": self.subject,
            "status": self.status,
            "detail": self.detail,
            "evidence": self.evidence,
        }


class RequestEvent(models.Model):
    """One immutable line of the audit trail: who did what, when, from where.

    Rows are only ever inserted; ``save`` refuses updates and ``delete`` refuses,
    so the trail cannot be rewritten through the ORM.
    """

    class Type(models.TextChoices):
        CREATED = "created", _("created")
        UPDATED = "updated", _("edited")
        TRANSITION = "transition", _("state changed")
        OVERRIDE = "override", _("check overridden")
        CHECKS_RECORDED = "checks_recorded", _("checks recorded")
        CONFIG_BUILT = "config_built", _("relay config built")
        NOTIFICATION = "notification", _("notification sent")
        DRIFT = "drift", _("drift detected")
        DIRECTORY = "directory", _("directory provisioning")
        HANDOVER = "handover", _("handed over")
        CREDENTIAL = "credential", _("account password")
        COMMENT = "comment", _("comment")
        ASSIGNMENT = "assignment", _("assigned")

    request = models.ForeignKey(
        RelayRequest, on_delete=models.CASCADE, related_name="events", verbose_name=_("request")
    )
    type = models.CharField(_("type"), max_length=20, choices=Type.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("actor"),
    )
    actor_name = models.CharField(
        _("actor name"), max_length=150, help_text=_("Kept if the user is deleted; 'system'.")
    )
    source_ip = models.GenericIPAddressField(_("source IP"), null=True, blank=True)
    from_state = models.CharField(_("from state"), max_length=20, blank=True)
    to_state = models.CharField(_("to state"), max_length=20, blank=True)
    comment = models.TextField(_("comment"), blank=True)
    parameters = models.JSONField(_("parameters"), default=dict, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)

    class Meta:
        ordering = ("created_at", "pk")
        verbose_name = _("request event")
        verbose_name_plural = _("request events")

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_name} {self.type}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None:
            raise ValueError("Audit events are immutable.")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise ValueError("Audit events are immutable.")


class Notification(TimeStampedModel):
    """An e-mail to send, written in the same transaction as the change that causes it.

    This is the outbox: the row exists if and only if the change committed, so a
    broker outage cannot lose it (the periodic sweep re-dispatches pending rows), and
    the unique ``event_key`` plus the ``sent`` status make a redelivered task a no-op.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        SENT = "sent", _("sent")
        FAILED = "failed", _("failed")

    request = models.ForeignKey(
        RelayRequest,
        on_delete=models.CASCADE,
        related_name="notifications",
        verbose_name=_("request"),
    )
    kind = models.CharField(_("kind"), max_length=40)
    event_key = models.CharField(_("event key"), max_length=200, unique=True)
    recipients = models.JSONField(_("recipients"), default=list)
    context = models.JSONField(_("template context"), default=dict, blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    next_attempt_at = models.DateTimeField(
        _("next attempt at"),
        null=True,
        blank=True,
        help_text=_("When the running retry chain tries again; the sweep leaves it alone."),
    )
    message_id = models.CharField(_("Message-ID"), max_length=250, blank=True)
    sent_at = models.DateTimeField(_("sent at"), null=True, blank=True)

    class Meta:
        ordering = ("created_at", "pk")
        verbose_name = _("notification")
        verbose_name_plural = _("notifications")

    def __str__(self) -> str:
        return f"{self.kind} for #{self.request_id} ({self.status})"


class RelayConfigChunk(models.Model):
    """A piece of file bodies, stored once by content hash and shared by every blob that has it.

    Bodies are cut into content-defined chunks at line ends (``relay_chunks``), so a
    one-line change to a 6 MiB map stores about one chunk (a few KiB compressed), not
    the whole file again. ``body`` is the zlib-compressed bytes; ``size`` the
    uncompressed length.
    """

    sha256 = models.CharField(_("sha256 of the bytes"), max_length=64, unique=True)
    size = models.PositiveIntegerField(_("bytes"))
    body = models.BinaryField(_("zlib-compressed bytes"))

    #: zlib level of ``body`` (6: the maps compress about 5-10x at a few ms per MiB)
    LEVEL = 6
    #: Chunks compressed and inserted per statement while storing (bounds memory).
    BATCH = 64

    class Meta:
        verbose_name = _("relay config chunk")
        verbose_name_plural = _("relay config chunks")

    def __str__(self) -> str:
        return self.sha256[:12]

    @classmethod
    def ids_for(cls, pieces: Mapping[str, bytes | memoryview]) -> dict[str, int]:
        """sha256 -> pk of these pieces, creating the chunks nobody stored yet.

        Get-or-create by hash: a concurrent build storing the same chunk is harmless
        (``ignore_conflicts``, then the rows are looked up by hash). Only missing pieces
        are compressed, ``BATCH`` at a time.
        """
        known: dict[str, int] = {}
        hashes = list(pieces)
        for i in range(0, len(hashes), 500):
            known.update(cls.objects.filter(sha256__in=hashes[i:i + 500])
                         .values_list("sha256", "pk"))
        missing = [sha for sha in hashes if sha not in known]
        for i in range(0, len(missing), cls.BATCH):
            batch = missing[i:i + cls.BATCH]
            cls.objects.bulk_create(
                [cls(sha256=sha, size=len(pieces[sha]),
                     body=zlib.compress(pieces[sha], cls.LEVEL)) for sha in batch],
                ignore_conflicts=True)
            known.update(cls.objects.filter(sha256__in=batch).values_list("sha256", "pk"))
        return known


class RelayConfigBlob(models.Model):
    """One file body, stored once by content hash and shared by every version that has it.

    At 100k entries a version is megabytes of text, and most builds change one line of one
    file: the unchanged files of consecutive versions are the same blob. The bytes are
    the blob's chunks in ``position`` order (``RelayConfigBlobChunk``; none for the empty
    file); ``sha256``, ``size`` and ``lines`` describe the whole uncompressed body, so
    ETags, 304s, the manifest's sizes and the version pages never read a chunk.
    """

    sha256 = models.CharField(_("sha256 of the bytes"), max_length=64, unique=True)
    size = models.PositiveBigIntegerField(_("bytes"))
    lines = models.PositiveIntegerField(_("lines"))

    class Meta:
        verbose_name = _("relay config file body")
        verbose_name_plural = _("relay config file bodies")

    def __str__(self) -> str:
        return self.sha256[:12]

    @classmethod
    def ids_for(cls, bodies: Mapping[str, bytes]) -> dict[str, int]:
        """sha256 -> pk of these bodies (keyed by their sha256), creating missing blobs.

        A new blob is cut into chunks (``relay_chunks.cut_points``); chunks already
        stored (the unchanged parts of the previous version) are only named again. One
        transaction: a blob row is never seen (or left, by a crash) without its chunk
        list. A blob another writer stored meanwhile keeps that writer's chunk list: only
        blobs without one get this call's (cut points from other constants would
        otherwise mix two lists into one wrong body).
        """
        with transaction.atomic():
            return cls._ids_for(bodies)

    @classmethod
    def _ids_for(cls, bodies: Mapping[str, bytes]) -> dict[str, int]:
        known = dict(cls.objects.filter(sha256__in=list(bodies)).values_list("sha256", "pk"))
        missing = [sha for sha in bodies if sha not in known]
        if not missing:
            return known
        layout: dict[str, list[str]] = {}
        pieces: dict[str, memoryview] = {}
        for sha in missing:
            view, start, hashes = memoryview(bodies[sha]), 0, []
            for end in relay_chunks.cut_points(bodies[sha]):
                piece = view[start:end]
                digest = hashlib.sha256(piece).hexdigest()
                pieces.setdefault(digest, piece)
                hashes.append(digest)
                start = end
            layout[sha] = hashes
        chunk_ids = RelayConfigChunk.ids_for(pieces)
        cls.objects.bulk_create(
            [cls(sha256=sha, size=len(bodies[sha]), lines=bodies[sha].count(b"\n"))
             for sha in missing], ignore_conflicts=True)
        known.update(cls.objects.filter(sha256__in=missing).values_list("sha256", "pk"))
        listed = set(RelayConfigBlobChunk.objects.filter(
            blob_id__in=[known[sha] for sha in missing]).values_list("blob_id", flat=True))
        RelayConfigBlobChunk.objects.bulk_create(
            [RelayConfigBlobChunk(blob_id=known[sha], position=position,
                                  chunk_id=chunk_ids[digest])
             for sha in missing if known[sha] not in listed
             for position, digest in enumerate(layout[sha])],
            ignore_conflicts=True, batch_size=2000)
        return known

    @staticmethod
    def bodies(blob_ids: Iterable[int]) -> dict[int, bytes]:
        """pk -> whole uncompressed body of these blobs (for small files and tools; a
        large body is streamed by ``relay_store.stream_body``)."""
        ids = list(blob_ids)
        parts: dict[int, list[bytes]] = {pk: [] for pk in ids}
        for blob_id, body in (RelayConfigBlobChunk.objects.filter(blob_id__in=ids)
                              .order_by("blob_id", "position")
                              .values_list("blob_id", "chunk__body").iterator()):
            parts[blob_id].append(zlib.decompress(bytes(body)))
        bodies = {pk: b"".join(chunks) for pk, chunks in parts.items()}
        sizes = dict(RelayConfigBlob.objects.filter(pk__in=ids).values_list("pk", "size"))
        for pk, body in bodies.items():
            # a blob pruned (or never stored) meanwhile must not read as an empty file
            if sizes.get(pk) != len(body):
                raise RelayConfigBlob.DoesNotExist(
                    f"relay config body {pk}: {len(body)} bytes read, "
                    f"{sizes.get(pk, 'no blob')} stored")
        return bodies


class RelayConfigBlobChunk(models.Model):
    """The ``position``-th chunk of a blob's body (an ordered join, metadata only)."""

    # DO_NOTHING in Python, real foreign keys in the database: retention deletes these
    # rows, then unnamed blobs, then unused chunks, each in one DELETE (no collector that
    # would load rows first), and a row still naming a blob or chunk keeps it.
    blob = models.ForeignKey(RelayConfigBlob, on_delete=models.DO_NOTHING,
                             related_name="chunk_rows", verbose_name=_("body"),
                             db_index=False)  # the unique (blob, position) index serves
    position = models.PositiveIntegerField(_("position"))
    chunk = models.ForeignKey(RelayConfigChunk, on_delete=models.DO_NOTHING,
                              related_name="uses", verbose_name=_("chunk"))

    class Meta:
        ordering = ("blob", "position")
        constraints = [models.UniqueConstraint(fields=("blob", "position"),
                                               name="relayconfigblobchunk_blob_position")]
        verbose_name = _("relay config body chunk")
        verbose_name_plural = _("relay config body chunks")

    def __str__(self) -> str:
        return f"{self.blob_id}/{self.position}"


class RelayConfigFile(models.Model):
    """A version's file: its name and the blob holding its bytes (metadata only)."""

    version = models.ForeignKey("RelayConfigVersion", on_delete=models.CASCADE,
                                related_name="file_rows", verbose_name=_("version"))
    name = models.CharField(_("file"), max_length=100)
    # DO_NOTHING in Python, a real foreign key in the database: deleting unreferenced
    # blobs is then one DELETE (no collector that would load every body first), and a
    # blob still referenced cannot be deleted (the constraint refuses it).
    blob = models.ForeignKey(RelayConfigBlob, on_delete=models.DO_NOTHING,
                             related_name="uses", verbose_name=_("body"))

    class Meta:
        ordering = ("version", "name")
        constraints = [models.UniqueConstraint(fields=("version", "name"),
                                               name="relayconfigfile_version_name")]
        verbose_name = _("relay config file")
        verbose_name_plural = _("relay config files")

    def __str__(self) -> str:
        return self.name


class RelayConfigVersion(models.Model):
    """One generated version of the relay artefacts, kept for history and diffs.

    The files are ``RelayConfigFile`` rows naming shared, content-addressed blobs
    (``requests_app.relay_store``); this row holds only metadata, so listing versions
    never touches a file body. Retention (``RELAY_CONFIG_KEEP_VERSIONS``/``_DAYS``)
    drops the files of old versions and sets ``files_pruned_at``; the row and its line
    history (``RelayConfigChange``) stay.
    """

    number = models.PositiveIntegerField(_("version"), unique=True)
    created_at = models.DateTimeField(_("generated at"), default=timezone.now)
    digest = models.CharField(_("sha256 of the content"), max_length=64)
    server_count = models.PositiveIntegerField(_("server entries"), default=0)
    account_count = models.PositiveIntegerField(_("account entries"), default=0)
    reason = models.CharField(_("reason"), max_length=200, blank=True)
    skipped = models.JSONField(
        _("entries left out"),
        default=list,
        blank=True,
        help_text=_("Entries that could not be rendered: [{request, reason}], flagged to "
                    "approvers; the rest of the version still goes out."),
    )
    history = models.BooleanField(
        _("line history recorded"), default=False,
        help_text=_("The build stored what each request added and removed against the "
                    "version before (diffs are computed from it)."))
    files_pruned_at = models.DateTimeField(_("files pruned at"), null=True, blank=True)

    class Meta:
        ordering = ("-number",)
        verbose_name = _("relay config version")
        verbose_name_plural = _("relay config versions")

    def __str__(self) -> str:
        return f"v{self.number}"

    def save(self, *args: object, **kwargs: object) -> None:
        super().save(*args, **kwargs)  # type: ignore[arg-type]
        pending = getattr(self, "_pending_files", None)
        if pending is not None:
            self.attach_files({name: text.encode() for name, text in pending.items()})
            self._pending_files = None

    def attach_files(self, files: Mapping[str, bytes]) -> None:
        """Name these files as this version's, creating only the blobs (and chunks)
        nobody stored yet (``RelayConfigBlob.ids_for``).

        A concurrent build storing the same body is harmless; the version number's
        uniqueness decides which build commits.
        """
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        known = RelayConfigBlob.ids_for({digests[name]: data for name, data in files.items()})
        RelayConfigFile.objects.bulk_create(
            [RelayConfigFile(version=self, name=name, blob_id=known[digests[name]])
             for name in sorted(files)])

    @property
    def files(self) -> dict[str, str]:
        """Every file's text (decodes all bodies: for tests and small tools, not pages;
        ``relay_store`` reads metadata or single files)."""
        if getattr(self, "_pending_files", None) is not None:
            return dict(self._pending_files)
        names = dict(RelayConfigFile.objects.filter(version=self).values_list("name",
                                                                              "blob_id"))
        bodies = RelayConfigBlob.bodies(set(names.values()))
        return {name: bodies[blob_id].decode() for name, blob_id in names.items()}

    @files.setter
    def files(self, value: dict[str, str]) -> None:
        # ``RelayConfigVersion(files=...)`` / ``objects.create(files=...)``: stored on save.
        self._pending_files = dict(value)


class RelayConfigChange(models.Model):
    """Which request added or removed which line in a version (the config history)."""

    class Action(models.TextChoices):
        ADDED = "added", _("added")
        REMOVED = "removed", _("removed")

    version = models.ForeignKey(
        RelayConfigVersion,
        on_delete=models.CASCADE,
        related_name="changes",
        verbose_name=_("version"),
    )
    request = models.ForeignKey(
        RelayRequest,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="config_changes",
        verbose_name=_("request"),
    )
    file = models.CharField(_("file"), max_length=50)
    action = models.CharField(_("action"), max_length=10, choices=Action.choices)
    line = models.TextField(_("line"))

    class Meta:
        ordering = ("version", "file", "pk")
        verbose_name = _("relay config change")
        verbose_name_plural = _("relay config changes")

    def __str__(self) -> str:
        return f"v{self.version_id} {self.action} {self.line}"


class AccountCredential(TimeStampedModel):
    """One password event of a functional account: issued, rotated, invalidated, confirmed.

    In ``issue`` mode the new password exists in clear only in memory; this row holds it
    AES-GCM encrypted (``ciphertext``, bound to this row's id) from the moment it is made
    until the directory has it and an owner has seen it once through the one-time link,
    or the link expired: then ``ciphertext`` is emptied. Only the SHA-256 of the link's
    token is kept (``token_hash``); the token itself is derived from
    ``RELAY_CREDENTIAL_KEY`` and ``token_salt`` when the mail is rendered, so a database
    dump gives neither the password nor a working link (docs/credentials.md).
    """

    class Purpose(models.TextChoices):
        ISSUE = "issue", _("first password")
        ROTATE = "rotate", _("rotation")
        INVALIDATE = "invalidate", _("invalidated (revoke or expiry)")
        CONFIRM = "confirm", _("rotated in the directory (confirmed by an owner)")

    class Status(models.TextChoices):
        PENDING = "pending", _("waiting for the directory")
        OFFERED = "offered", _("link offered")
        VIEWED = "viewed", _("shown once")
        EXPIRED = "expired", _("link expired unseen")
        SUPERSEDED = "superseded", _("superseded by a newer password")
        FAILED = "failed", _("failed, not set")
        DONE = "done", _("done")

    request = models.ForeignKey(
        RelayRequest, on_delete=models.CASCADE, related_name="credentials",
        verbose_name=_("request"),
    )
    account_name = models.CharField(_("account name"), max_length=64, db_index=True)
    purpose = models.CharField(_("purpose"), max_length=10, choices=Purpose.choices)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.PENDING,
        db_index=True,
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+", verbose_name=_("asked by"),
    )
    ciphertext = models.BinaryField(_("encrypted password (until viewed)"), null=True,
                                    blank=True, editable=False)
    key_id = models.CharField(_("key id"), max_length=16, blank=True)
    token_salt = models.CharField(_("link token salt"), max_length=64, blank=True)
    token_hash = models.CharField(_("sha256 of the link token"), max_length=64, blank=True,
                                  db_index=True)
    set_at = models.DateTimeField(_("set in the directory at"), null=True, blank=True,
                                  db_index=True)
    expires_at = models.DateTimeField(_("link expires at"), null=True, blank=True)
    viewed_at = models.DateTimeField(_("viewed at"), null=True, blank=True)
    viewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
        related_name="+", verbose_name=_("viewed by"),
    )
    viewed_ip = models.GenericIPAddressField(_("viewed from"), null=True, blank=True)
    wiped_at = models.DateTimeField(_("secret wiped at"), null=True, blank=True)
    attempts = models.PositiveIntegerField(_("directory attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True)
    # Rotation overlap: the previous userPassword value(s), encrypted, until overlap_until.
    old_ciphertext = models.BinaryField(_("previous password values (encrypted)"), null=True,
                                        blank=True, editable=False)
    overlap_until = models.DateTimeField(_("old password valid until"), null=True,
                                         blank=True, db_index=True)

    class Meta:
        ordering = ("created_at", "pk")
        verbose_name = _("account credential")
        verbose_name_plural = _("account credentials")
        constraints = [
            models.UniqueConstraint(
                fields=("token_hash",), condition=~models.Q(token_hash=""),
                name="credential_token_hash_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.purpose} {self.account_name} ({self.status})"


class RequestComment(models.Model):
    """One message of the conversation on a request, between its team and the approvers.

    Kept apart from the audit trail so the thread reads as a conversation; each comment
    also writes an audit event (who, when, from where) and mails the other side.
    """

    request = models.ForeignKey(
        RelayRequest, on_delete=models.CASCADE, related_name="comments",
        verbose_name=_("request"),
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
        related_name="+", verbose_name=_("author"),
    )
    author_name = models.CharField(_("author name"), max_length=150, blank=True)
    body = models.TextField(_("comment"))
    created_at = models.DateTimeField(_("written at"), default=timezone.now, db_index=True)

    class Meta:
        ordering = ("created_at", "pk")
        verbose_name = _("comment")
        verbose_name_plural = _("comments")

    def __str__(self) -> str:
        return f"#{self.request_id} {self.author_name}: {self.body[:40]}"


class WakeToken(models.Model):
    """A coalesced wake-up message: armed while one is on its way to a worker.

    Why: in a burst of submissions one message per request costs a broker delivery and
    an acknowledgement each, more than the checks themselves once a task takes the
    waiting requests along. A submission arms the token (``check_dispatch``) and sends
    a message only if it was not armed; the task disarms it before it looks for work,
    so a submission committed after that look arms it again. ``armed_at`` lets a token
    whose message was lost be armed again after a while; the sweep is the safety net.
    """

    name = models.CharField(primary_key=True, max_length=40)
    armed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({'armed' if self.armed_at else 'idle'})"
