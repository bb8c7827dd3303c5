"""API representations. Input is validated by the same validators as the web forms."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .. import accounts
from .. import activation
from ..kinds import KIND_FIELDS
from ..models import CHECK_STATUS_CHOICES
from ..models import CheckResult
from ..models import RelayRequest
from ..models import RequestEvent
from ..models import RequestKind
from ..models import TlsMode
from ..quotas import PRODUCTION_TEXT_LIMIT
from ..quotas import PRODUCTION_VOLUME_MAX
from ..quotas import limits_for
from ..selectors import source_ip_visible
from ..validators import split_list
from ..validators import validate_account_name
from ..validators import validate_dkim_selector
from ..validators import validate_fqdn
from ..validators import validate_free_text
from ..validators import validate_ip_list
from ..validators import validate_request
from ..validators import validate_sender_addresses
from ..validators import validate_sender_domains

__all__ = [
    "CheckResultSerializer",
    "ProductionRequestSerializer",
    "QuotaLimitsSerializer",
    "QuickCheckSerializer",
    "RelayRequestSerializer",
    "RequestEventSerializer",
]


def _django(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a Django validator and re-raise its messages as a DRF error for this field."""
    try:
        return fn(*args, **kwargs)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from None


class TeamSlugField(serializers.CharField):
    """A team, read and written as its slug under one name, ``team``.

    It was a read-only ``team`` beside a write-only ``team_slug``, so the schema asked
    generated clients for ``team_slug`` while the README and the code took ``team``.
    The slug is looked up by the service that checks membership (400 naming ``team``).
    """

    def to_representation(self, value: Any) -> str:
        return value.slug


class StringListField(serializers.ListField):
    child = serializers.CharField(max_length=320)

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            data = split_list(data)
        return super().to_internal_value(data)


_FIX_RECORD = {
    "type": "object",
    "required": ["action", "type", "name", "value", "note"],
    "properties": {
        "action": {"type": "string", "enum": ["add", "replace", "remove", "none"],
                   "description": "add beside what is there; replace the record of this "
                                  "type and name (SPF, DMARC stay one record); remove; "
                                  "none: no DNS record fixes it (see note)"},
        "type": {"type": "string", "description": "A, AAAA, PTR, TXT; empty for none"},
        "name": {"type": "string", "description": "owner name, no trailing dot"},
        "value": {"type": "string", "description": "the record's value; a DKIM key "
                                                   "is <public key> (only the signer knows it)"},
        "note": {"type": "string"},
        "strings": {"type": "array", "items": {"type": "string", "maxLength": 255},
                    "description": "a TXT value longer than 255 characters, cut into "
                                   "the character-strings to publish"},
    },
}


@extend_schema_field({
    "type": "object",
    "additionalProperties": True,
    "description": "What the check found (keys depend on the check). A warn or fail "
                   "result has fix: the records to publish (checks/fixes.py).",
    "properties": {"fix": {"type": "array", "items": _FIX_RECORD}},
})
class CheckEvidenceField(serializers.JSONField):
    """A check's evidence; typed for the schema so generated clients see ``fix``."""


class CheckResultSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="check_id")
    evidence = CheckEvidenceField(read_only=True)

    class Meta:
        model = CheckResult
        fields = ("id", "subject", "status", "detail", "evidence")


class RequestEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name")
    time = serializers.DateTimeField(source="created_at")

    class Meta:
        model = RequestEvent
        fields = (
            "id", "time", "type", "actor", "source_ip", "from_state", "to_state", "comment",
            "parameters",
        )

    def to_representation(self, instance: RequestEvent) -> dict[str, Any]:
        """``source_ip`` is null unless the caller may see it (approvers, auditors, or
        the actor themself); without a request in the context nobody may."""
        data = super().to_representation(instance)
        request = self.context.get("request")
        if not source_ip_visible(getattr(request, "user", None), instance):
            data["source_ip"] = None
        return data


class QuotaLimitsSerializer(serializers.Serializer):
    """The sending limits the relay applies to the entry (``quotas.limits_for``)."""

    tier = serializers.CharField()
    daily = serializers.IntegerField(help_text="Messages per 24 hours.")
    per_second = serializers.IntegerField(help_text="Messages per second.")


class ProductionRequestSerializer(serializers.Serializer):
    """The input of ``POST /api/requests/{id}/request_production/`` (for the schema).

    The endpoint hands the raw values to ``quotas.request_production_access``, which
    checks the caller's role and the entry's state first (403, 409) and then these
    fields (400 naming each), so the web form and the API answer alike.
    """

    volume = serializers.IntegerField(min_value=1, max_value=PRODUCTION_VOLUME_MAX,
                                      help_text="Messages per day in production.")
    use_case = serializers.CharField(max_length=PRODUCTION_TEXT_LIMIT,
                                     help_text="What is sent, to whom, and why they expect it.")
    bounce_handling = serializers.CharField(
        max_length=PRODUCTION_TEXT_LIMIT,
        help_text="Who reads bounces and complaints, and how such addresses are removed.")


class RelayRequestSerializer(serializers.ModelSerializer):
    """``kind`` selects the fields: server (fqdn, ipv4, ipv6, purpose) or account
    (account_name, use_case, tls_mode). ``team`` is the team's slug."""

    team = TeamSlugField(
        max_length=50,
        help_text="The owning team's slug: required to create, fixed afterwards (400 on "
                  "a change); you must be a member.")
    check_verdict = serializers.ChoiceField(
        choices=CHECK_STATUS_CHOICES, allow_blank=True, read_only=True,
        help_text="The worst status of the current check run; empty (\"\") before "
                  "checks ran or while they run again.")
    kind = serializers.ChoiceField(choices=RequestKind.choices)
    tls_mode = serializers.ChoiceField(
        choices=TlsMode.choices, required=False, allow_blank=True
    )
    sender_domains = StringListField(required=False)
    sender_addresses = StringListField(required=False)
    ipv4 = StringListField(required=False)
    ipv6 = StringListField(required=False)
    expected_daily_volume = serializers.IntegerField(min_value=1, max_value=100_000_000)
    checks = CheckResultSerializer(many=True, read_only=True)
    checks_stale = serializers.BooleanField(
        read_only=True,
        help_text="Checks ran, but not on the current content (edited since): approve and "
                  "override wait for a fresh run.",
    )
    created_by = serializers.CharField(source="created_by.get_username", read_only=True)
    # A method, not a dotted source with a default: DRF skips a defaulted field in a
    # partial update's answer (PATCH), which then lacked this required property.
    assigned_to = serializers.SerializerMethodField(
        help_text="The approver who claimed the request (claim/release), or null.")
    submit = serializers.BooleanField(write_only=True, required=False, default=False)
    quota_limits = serializers.SerializerMethodField(
        help_text="The limits the relay applies: the sandbox's, or the granted volume and "
                  "the production rate. Changed only by request_production and an "
                  "approver's grant_production.")

    pending = serializers.SerializerMethodField(
        help_text="While provisioning: what the request still waits for before it is active "
                  "(the relay config; for an account also its relay-allow group change, "
                  "automatic or a manual to-do). Empty otherwise.")
    warnings = serializers.SerializerMethodField(
        help_text="Other open requests naming the same FQDN or address (a warning, not a "
                  "refusal), each sentence naming the request.")
    overlaps = serializers.SerializerMethodField(
        help_text="The same as warnings, as data: [{request, state, team, field, value}].")

    class Meta:
        model = RelayRequest
        fields = (
            "id", "kind", "state", "pending", "warnings", "overlaps",
            "team", "contact_email", "chat_channel",
            "sender_domains", "sender_addresses", "dkim_selector", "expected_daily_volume",
            "fqdn", "ipv4", "ipv6", "purpose", "account_name", "use_case", "tls_mode",
            "check_verdict", "check_summary", "checks_ran_at", "checks", "checks_stale",
            "check_attempts", "check_next_attempt_at", "override_reason", "decision_note",
            "created_by", "assigned_to", "assigned_at", "created_at", "submitted_at",
            "decided_at", "activated_at", "provision_attempts", "provision_error", "submit",
            "quota_tier", "quota_limits", "production_requested_at", "production_volume",
            "production_use_case", "production_bounce_handling",
        )
        read_only_fields = (
            "state", "check_verdict", "check_summary", "checks_ran_at", "override_reason",
            # why a request waits in checking: attempts so far and when the next one runs
            "check_attempts", "check_next_attempt_at",
            "decision_note", "created_at", "submitted_at", "decided_at", "activated_at",
            "assigned_at",
            # why the relay config leaves the request out (provisioning, failed, active)
            "provision_attempts", "provision_error",
            # the sending quota: changed only through the quota actions
            "quota_tier", "production_requested_at", "production_volume",
            "production_use_case", "production_bounce_handling",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # one host look-up per object serialized alone, shared by warnings and overlaps
        self._own_overlaps: dict[int | None, list[accounts.Holder]] = {}

    def _overlaps(self, obj: RelayRequest) -> list[accounts.Holder]:
        # A list response precomputes every row's overlaps in one query (views.py). A
        # single object's are looked up once and kept for both fields that show them
        # (``warnings`` and ``overlaps``), keyed by the object's id.
        known = self.context.get("overlaps")
        if known is None:
            if obj.pk not in self._own_overlaps:
                self._own_overlaps[obj.pk] = accounts.host_overlaps(
                    [accounts.subject_of(obj)]).get(obj.pk, [])
            return self._own_overlaps[obj.pk]
        return known.get(obj.pk, [])

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_assigned_to(self, obj: RelayRequest) -> str | None:
        return obj.assigned_to.get_username() if obj.assigned_to_id else None

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_pending(self, obj: RelayRequest) -> list[str]:
        known = self.context.get("pending")
        if known is None:
            return activation.pending_reasons(obj)
        return known.get(obj.pk, [])

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_warnings(self, obj: RelayRequest) -> list[str]:
        return [accounts.overlap_warning(h) for h in self._overlaps(obj)]

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_overlaps(self, obj: RelayRequest) -> list[dict[str, object]]:
        return [h.as_dict() for h in self._overlaps(obj)]

    @extend_schema_field(QuotaLimitsSerializer)
    def get_quota_limits(self, obj: RelayRequest) -> dict[str, Any]:
        limits = limits_for(obj)
        return {"tier": str(limits.tier), "daily": limits.daily,
                "per_second": limits.per_second}

    def validate_fqdn(self, value: str) -> str:
        return _django(validate_fqdn, value) if value else ""

    def validate_ipv4(self, value: list[str]) -> list[str]:
        return _django(validate_ip_list, value, version=4)

    def validate_ipv6(self, value: list[str]) -> list[str]:
        return _django(validate_ip_list, value, version=6)

    def validate_sender_domains(self, value: list[str]) -> list[str]:
        return _django(validate_sender_domains, value)

    def validate_sender_addresses(self, value: list[str]) -> list[str]:
        return _django(validate_sender_addresses, value)

    def validate_account_name(self, value: str) -> str:
        return _django(validate_account_name, value) if value else ""

    def validate_dkim_selector(self, value: str) -> str:
        return _django(validate_dkim_selector, value)

    def validate_purpose(self, value: str) -> str:
        return _django(validate_free_text, value, field="purpose")

    def validate_use_case(self, value: str) -> str:
        return _django(validate_free_text, value, field="use_case")

    def validate_chat_channel(self, value: str) -> str:
        return _django(validate_free_text, value, field="chat_channel")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if self.instance is None:
            merged = attrs  # ``team`` is a required field: DRF names it when missing
        else:
            if "kind" in attrs and attrs["kind"] != self.instance.kind:
                raise serializers.ValidationError({"kind": ["The kind cannot be changed."]})
            if "team" in attrs:
                raise serializers.ValidationError({"team": ["The team cannot be changed."]})
            merged = {
                f: getattr(self.instance, f)
                for f in ("kind", *KIND_FIELDS, "sender_domains", "sender_addresses",
                          "expected_daily_volume")
            } | attrs
        errors = validate_request(merged)
        if errors:
            raise serializers.ValidationError(
                {f: [m for e in errs for m in e.messages] for f, errs in errors.items()}
            )
        return attrs


class QuickCheckSerializer(serializers.Serializer):
    fqdn = serializers.CharField(max_length=253)
    ipv4 = StringListField(required=False)
    ipv6 = StringListField(required=False)

    def validate_fqdn(self, value: str) -> str:
        return _django(validate_fqdn, value)

    def validate_ipv4(self, value: list[str]) -> list[str]:
        return _django(validate_ip_list, value, version=4)

    def validate_ipv6(self, value: list[str]) -> list[str]:
        return _django(validate_ip_list, value, version=6)
