"""Web forms: validate and normalise input; they never act.

The view passes ``cleaned_data`` to a service. List fields are typed one per line
(commas and spaces also separate) and stored as normalised lists.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from .models import RelayRequest
from .models import RequestKind
from .models import Team
from .models import TlsMode
from .quotas import PRODUCTION_TEXT_LIMIT
from .quotas import PRODUCTION_VOLUME_MAX
from .selectors import team_list_for_user
from .validators import FREE_TEXT_LIMITS
from .validators import split_list
from .validators import validate_account_name
from .validators import validate_dkim_selector
from .validators import validate_fqdn
from .validators import validate_free_text
from .validators import validate_ip_list
from .validators import validate_request
from .validators import validate_sender_addresses
from .validators import validate_sender_domains

__all__ = [
    "AccountRequestForm",
    "DecisionForm",
    "ProductionRequestForm",
    "ServerRequestForm",
    "form_class_for",
    "initial_for",
]


class ListField(forms.CharField):
    """A textarea holding one item per line; ``to_python`` returns a list."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        return split_list(value)


class _RequestForm(forms.Form):
    kind: str = ""
    team = forms.ModelChoiceField(
        queryset=Team.objects.none(),
        to_field_name="slug",
        label=_("Owning team"),
        empty_label=None,
    )
    contact_email = forms.EmailField(
        label=_("Contact e-mail"),
        error_messages={"invalid": _("Contact e-mail: enter a valid e-mail address.")},
    )
    chat_channel = forms.CharField(label=_("Chat channel"), required=False,
                                   max_length=FREE_TEXT_LIMITS["chat_channel"])
    sender_domains = ListField(
        label=_("Sender domains"),
        required=False,
        help_text=_("Domains used in From and Return-Path, one per line."),
    )
    sender_addresses = ListField(
        label=_("Sender addresses"),
        required=False,
        help_text=_("Full addresses (noreply@example.org) or @domain, one per line."),
    )
    dkim_selector = forms.CharField(label=_("DKIM selector"), required=False, max_length=63)
    expected_daily_volume = forms.IntegerField(
        label=_("Expected messages per day"),
        min_value=1,
        max_value=100_000_000,
        error_messages={
            "invalid": _("Expected volume must be a whole number."),
            "min_value": _("Expected volume must be a positive integer."),
        },
    )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if user is not None:
            self.fields["team"].queryset = team_list_for_user(user)

    def clean_chat_channel(self) -> str:
        return validate_free_text(self.cleaned_data["chat_channel"], field="chat_channel")

    def clean_sender_domains(self) -> list[str]:
        return validate_sender_domains(self.cleaned_data["sender_domains"])

    def clean_sender_addresses(self) -> list[str]:
        return validate_sender_addresses(self.cleaned_data["sender_addresses"])

    def clean_dkim_selector(self) -> str:
        return validate_dkim_selector(self.cleaned_data["dkim_selector"])

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        for field, errors in validate_request({"kind": self.kind, **data}).items():
            target = field if field in self.fields else None
            for error in errors:
                self.add_error(target, error)
        return data

    def service_data(self) -> dict[str, Any]:
        """The cleaned fields a service accepts (everything except the team)."""
        return {k: v for k, v in self.cleaned_data.items() if k != "team"}


class ServerRequestForm(_RequestForm):
    kind = RequestKind.SERVER
    fqdn = forms.CharField(label=_("FQDN"), max_length=253)
    ipv6 = ListField(label=_("IPv6 addresses"), required=False, help_text=_("Preferred."))
    ipv4 = ListField(label=_("IPv4 addresses"), required=False)
    purpose = forms.CharField(label=_("Purpose"), widget=forms.Textarea(attrs={"rows": 3}),
                              max_length=FREE_TEXT_LIMITS["purpose"])

    field_order = [
        "team", "fqdn", "ipv6", "ipv4", "purpose", "contact_email", "chat_channel",
        "sender_domains", "sender_addresses", "dkim_selector", "expected_daily_volume",
    ]

    def clean_purpose(self) -> str:
        return validate_free_text(self.cleaned_data["purpose"], field="purpose")

    def clean_fqdn(self) -> str:
        return validate_fqdn(self.cleaned_data["fqdn"])

    def clean_ipv4(self) -> list[str]:
        return validate_ip_list(self.cleaned_data["ipv4"], version=4)

    def clean_ipv6(self) -> list[str]:
        return validate_ip_list(self.cleaned_data["ipv6"], version=6)


class AccountRequestForm(_RequestForm):
    kind = RequestKind.ACCOUNT
    account_name = forms.CharField(
        label=_("Account name"), max_length=64, help_text=_("One account per use case.")
    )
    use_case = forms.CharField(label=_("Use case"), widget=forms.Textarea(attrs={"rows": 3}),
                               max_length=FREE_TEXT_LIMITS["use_case"])
    tls_mode = forms.ChoiceField(
        label=_("TLS mode"),
        choices=TlsMode.choices,
        error_messages={
            "invalid_choice": _("TLS mode must be STARTTLS (587) or implicit TLS (465).")
        },
    )

    field_order = [
        "team", "account_name", "use_case", "tls_mode", "contact_email", "chat_channel",
        "sender_addresses", "sender_domains", "dkim_selector", "expected_daily_volume",
    ]

    def clean_use_case(self) -> str:
        return validate_free_text(self.cleaned_data["use_case"], field="use_case")

    def clean_account_name(self) -> str:
        return validate_account_name(self.cleaned_data["account_name"])


#: Each kind's form (its fields are the kind's ``fields`` in ``kinds.py`` plus the common ones).
_FORMS: dict[str, type[_RequestForm]] = {
    form.kind: form for form in (ServerRequestForm, AccountRequestForm)
}


def form_class_for(kind: str) -> type[_RequestForm]:
    form = _FORMS.get(kind) if isinstance(kind, str) else None
    if form is None:
        raise ValidationError(_("Unknown request kind."), code="invalid_kind")
    return form


def initial_for(request: RelayRequest) -> dict[str, Any]:
    fields = form_class_for(request.kind).base_fields
    initial = {name: getattr(request, name) for name in fields if name != "team"}
    initial["team"] = request.team.slug
    return initial


class DecisionForm(forms.Form):
    """The comment (or override reason) that goes with a lifecycle action."""

    comment = forms.CharField(
        label=_("Comment"), required=False, widget=forms.Textarea(attrs={"rows": 3}),
        max_length=FREE_TEXT_LIMITS["comment"],
    )

    def clean_comment(self) -> str:
        return validate_free_text(self.cleaned_data["comment"], field="comment")


class ProductionRequestForm(forms.Form):
    """The owners' request for production access. The widgets carry the limits for the
    browser; the rules are ``quotas.validate_production_request``'s, which the view's
    service call applies (so the web and the API refuse the same input in the same words).
    """

    volume = forms.CharField(
        label=_("Messages per day in production"), required=False,
        widget=forms.NumberInput(attrs={"min": 1, "max": PRODUCTION_VOLUME_MAX, "step": 1}),
    )
    use_case = forms.CharField(
        label=_("Use case: what is sent, to whom, and why the recipients expect it"),
        required=False, strip=False,
        widget=forms.Textarea(attrs={"rows": 3, "maxlength": PRODUCTION_TEXT_LIMIT}),
    )
    bounce_handling = forms.CharField(
        label=_("Bounce and complaint handling: who reads bounces, how bouncing and "
                "complaining addresses are removed"),
        required=False, strip=False,
        widget=forms.Textarea(attrs={"rows": 3, "maxlength": PRODUCTION_TEXT_LIMIT}),
    )
