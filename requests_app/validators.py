"""Field validators shared by the web forms, the API serializers and ``model.clean()``.

Each raises ``ValidationError`` with a message naming the rule and a stable ``code``.
Normalisation (IDN to punycode, lower case, no trailing dot, compressed IPv6) uses the
same Django-free functions as the DNS checks, so what is stored is what is checked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils.translation import gettext as _

from .checks import normalise_address
from .checks import normalise_fqdn

__all__ = [
    "MAX_LIST_ITEMS",
    "normalise_list",
    "split_list",
    "validate_account_name",
    "validate_dkim_selector",
    "validate_fqdn",
    "validate_ip_list",
    "validate_request",
    "validate_sender_addresses",
    "validate_sender_domains",
]

MAX_LIST_ITEMS = 50
ACCOUNT_RE = re.compile(r"^[a-z][a-z0-9._-]{1,62}[a-z0-9]$")
SELECTOR_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def split_list(value: str | Sequence[str] | None) -> list[str]:
    """Accept a list, or text with one item per line / comma / space separated."""
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable[str] = re.split(r"[\s,;]+", value)
    else:
        items = value
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValidationError(_("Each item must be a text value."), code="not_text")
        item = item.strip()
        if item:
            out.append(item)
    return out


def normalise_list(items: Iterable[str]) -> list[str]:
    """Drop duplicates, keep the user's order."""
    return list(dict.fromkeys(items))


def validate_fqdn(value: str) -> str:
    """A syntactically valid host name: no wildcard, no empty label, labels <= 63."""
    if isinstance(value, str) and value.strip() and "." not in value.strip().rstrip("."):
        raise ValidationError(
            _("A fully qualified name needs at least two labels (e.g. host.example.org)."),
            code="not_fully_qualified",
        )
    try:
        fqdn = normalise_fqdn(value)
    except ValueError as exc:
        raise ValidationError(
            _("Not a valid host name (FQDN rule): %(reason)s"),
            code="invalid_fqdn",
            params={"reason": exc},
        ) from None
    return fqdn


def validate_ip_list(values: Sequence[str], *, version: int) -> list[str]:
    """Host addresses of one IP version, normalised; a prefix such as /24 is refused."""
    if len(values) > MAX_LIST_ITEMS:
        raise ValidationError(
            _("At most %(n)d addresses."), code="too_many", params={"n": MAX_LIST_ITEMS}
        )
    out = []
    for raw in values:
        if "/" in raw:
            raise ValidationError(
                _("%(value)s is a network; give host addresses only (no prefix)."),
                code="prefix_not_allowed",
                params={"value": raw},
            )
        try:
            parsed = ipaddress.ip_address(raw)
            address = normalise_address(raw)
        except ValueError:
            raise ValidationError(
                _("%(value)s is not a valid IPv%(version)d address."),
                code="invalid_ip",
                params={"value": raw, "version": version},
            ) from None
        if parsed.version != version:
            raise ValidationError(
                _("%(value)s is not an IPv%(version)d address."),
                code="wrong_ip_version",
                params={"value": raw, "version": version},
            )
        out.append(address)
    return normalise_list(out)


def validate_sender_domains(values: Sequence[str]) -> list[str]:
    if len(values) > MAX_LIST_ITEMS:
        raise ValidationError(
            _("At most %(n)d domains."), code="too_many", params={"n": MAX_LIST_ITEMS}
        )
    out = []
    for raw in values:
        try:
            domain = normalise_fqdn(raw.lstrip("@"))
        except ValueError as exc:
            raise ValidationError(
                _("%(value)s is not a valid domain name: %(reason)s"),
                code="invalid_domain",
                params={"value": raw, "reason": exc},
            ) from None
        if "." not in domain:
            raise ValidationError(
                _("%(value)s is not a registrable domain (needs a dot)."),
                code="invalid_domain",
                params={"value": raw},
            )
        out.append(domain)
    return normalise_list(out)


def validate_sender_addresses(values: Sequence[str]) -> list[str]:
    """Full addresses ``user@domain`` or whole domains ``@domain`` (Postfix map keys)."""
    if len(values) > MAX_LIST_ITEMS:
        raise ValidationError(
            _("At most %(n)d addresses."), code="too_many", params={"n": MAX_LIST_ITEMS}
        )
    out = []
    for raw in values:
        if raw.startswith("@"):
            out.append("@" + validate_sender_domains([raw[1:]])[0])
            continue
        local, sep, domain = raw.rpartition("@")
        try:
            if not sep or not local:
                raise ValidationError("missing @")
            domain = validate_sender_domains([domain])[0]
            validate_email(f"{local}@{domain}")
        except ValidationError:
            raise ValidationError(
                _("%(value)s is not a valid e-mail address or @domain."),
                code="invalid_sender",
                params={"value": raw},
            ) from None
        out.append(f"{local.lower()}@{domain}")
    return normalise_list(out)


def validate_account_name(value: str) -> str:
    name = value.strip().lower()
    if not ACCOUNT_RE.match(name):
        raise ValidationError(
            _(
                "Account names are 3-64 characters: lower-case letters, digits, '.', '_' "
                "or '-', starting with a letter."
            ),
            code="invalid_account",
        )
    return name


def validate_dkim_selector(value: str) -> str:
    selector = value.strip().lower()
    if selector and not SELECTOR_RE.match(selector):
        raise ValidationError(
            _("A DKIM selector is one DNS label (letters, digits, '-')."),
            code="invalid_selector",
        )
    return selector


def validate_request(data: dict[str, Any]) -> dict[str, list[ValidationError]]:
    """Cross-field rules for a request of either kind; returns errors per field."""
    errors: dict[str, list[ValidationError]] = {}

    def add(field: str, message: str, code: str) -> None:
        errors.setdefault(field, []).append(ValidationError(message, code=code))

    kind = data.get("kind")
    if kind == "server":
        if not data.get("fqdn"):
            add("fqdn", _("A server request needs its FQDN."), "required")
        if not data.get("ipv4") and not data.get("ipv6"):
            add(
                "ipv6",
                _("Give at least one IPv4 or IPv6 address of the server (IPv6 preferred)."),
                "address_required",
            )
        if not (data.get("purpose") or "").strip():
            add("purpose", _("Say what the server sends mail for."), "required")
        for field in ("account_name", "use_case", "tls_mode"):
            if data.get(field):
                add(field, _("Not used for a server request (only for functional accounts)."),
                    "not_allowed")
    elif kind == "account":
        if not data.get("account_name"):
            add("account_name", _("A functional-account request needs the account name."),
                "required")
        if not (data.get("use_case") or "").strip():
            add("use_case", _("Describe the one use case this account serves."), "required")
        if data.get("tls_mode") not in ("starttls", "smtps"):
            add(
                "tls_mode",
                _("Choose STARTTLS (587) or implicit TLS (465): the relay refuses plain text."),
                "invalid_tls_mode",
            )
        if data.get("ipv4") or data.get("ipv6"):
            add("ipv4", _("Functional accounts are not IP-allowlisted."), "not_allowed")
    else:
        add("kind", _("Kind must be 'server' or 'account'."), "invalid_kind")
    if not data.get("sender_domains") and not data.get("sender_addresses"):
        add(
            "sender_domains",
            _("Give the sender domains or addresses used in From and Return-Path."),
            "sender_required",
        )
    volume = data.get("expected_daily_volume")
    if not isinstance(volume, int) or isinstance(volume, bool) or volume < 1:
        add(
            "expected_daily_volume",
            _("Expected volume per day must be a positive integer."),
            "invalid_volume",
        )
    return errors
