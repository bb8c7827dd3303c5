"""Field validators shared by the web forms, the API serializers and ``model.clean()``.

Each raises ``ValidationError`` with a message naming the rule and a stable ``code``.
The rules themselves are ``rules.py``'s (Django-free), the same the DNS checks and the
Postfix renderer apply: what is stored is what is checked and what can be rendered
(normalisation: IDN to punycode, lower case, no trailing dot, compressed IPv6).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

from . import rules
from .kinds import KINDS
from .rules import normalise_fqdn
from .wording import Message

__all__ = [
    "FREE_TEXT_LIMITS",
    "MAX_LIST_ITEMS",
    "message_text",
    "normalise_list",
    "rule_message",
    "settings_address_policy",
    "split_list",
    "validate_account_name",
    "validate_dkim_selector",
    "validate_fqdn",
    "validate_free_text",
    "validate_ip_list",
    "validate_request",
    "validate_sender_addresses",
    "validate_sender_domains",
]

MAX_LIST_ITEMS = 50
ACCOUNT_RE = rules.ACCOUNT_RE  # the renderer's rule for sender_login_maps values
SELECTOR_RE = rules.HOST_LABEL_RE  # a DKIM selector is one host-name label


# What a list item (address, host name, domain, sender) may hold: letters (IDN too),
# digits and . : - _ @ + = % / [ ]. A line with any other character is not a list of
# such items, so it stays whole (see split_list).
_ITEM_CHARS_RE = re.compile(r"[\w.:@+=%/\[\]-]+")



def rule_message(exc: BaseException) -> str:
    """A rule's refusal in the reader's language.

    ``rules`` has no Django, so it raises ``rules.RuleError`` with an English template and
    its values; this is the boundary where the template is looked up in the catalog (the
    name of the thing, ``what``, too, and a nested refusal in turn). Any other error
    reads as its text.
    """
    if not isinstance(exc, rules.RuleError):
        return str(exc)
    params = {
        key: rule_message(value) if isinstance(value, BaseException)
        else _(value) if key == "what" else value
        for key, value in exc.params.items()
    }
    return _(exc.template) % params


def message_text(message: Message | str) -> str:
    """A ``wording.Message`` (an address ruling's, ``rules.AddressRuling.message``) in the
    reader's language: the template is looked up in the catalog, and each value that is
    itself a message in turn (a list of them joined with "; "). Text reads as it is.
    """
    if not isinstance(message, Message):
        return str(message)
    return message.say(_)


def split_list(value: str | Sequence[str] | None) -> list[str]:
    """Accept a list, or text with one item per line / comma / semicolon / space separated.

    Spaces separate items only on a line whose pieces could each be an item: "192.0.2.1
    192.0.2.2" is two addresses, but "not a host!!" stays one value, so it is refused
    as what was typed, not as three fragments ("not is not a valid address").
    """
    if value is None:
        return []
    if isinstance(value, str):
        items: Iterable[str] = [
            item
            for line in re.split(r"[\n\r,;]+", value)
            for item in (line.split() if all(_ITEM_CHARS_RE.fullmatch(piece)
                                             for piece in line.split()) else [line])
        ]
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
    """A syntactically valid host name: no wildcard, no empty label, labels <= 63.

    The rule is ``rules.normalise_fqdn``'s alone; a one-label name gets its own code.
    """
    try:
        fqdn = normalise_fqdn(value)
    except rules.NotFullyQualified:
        raise ValidationError(
            _("A fully qualified name needs at least two labels (e.g. host.example.org)."),
            code="not_fully_qualified",
        ) from None
    except ValueError as exc:
        raise ValidationError(
            _("Not a valid host name (FQDN rule): %(reason)s"),
            code="invalid_fqdn",
            params={"reason": rule_message(exc)},
        ) from None
    return fqdn


def settings_address_policy() -> rules.AddressPolicy:
    """The address policy of ``RELAY_LAB_NETWORKS`` and ``RELAY_ALLOW_PRIVATE``."""
    return rules.address_policy(tuple(settings.RELAY_LAB_NETWORKS),
                                bool(settings.RELAY_ALLOW_PRIVATE))


def validate_ip_list(values: Sequence[str], *, version: int,
                     policy: rules.AddressPolicy | None = None) -> list[str]:
    """Host addresses of one IP version, normalised, each one the address policy accepts.

    A prefix such as /24 is refused, and so is every address the relay would refuse
    (``rules.AddressPolicy``: loopback, private unless allowed, link-local, multicast,
    documentation, IPv4-mapped/6to4/Teredo, unspecified, broadcast ...), unless it lies in
    a lab network: at once, on the field, never as an overridable check result later.
    ``policy`` defaults to the settings' (:func:`settings_address_policy`). Every bad
    address of the list is reported, not only the first.
    """
    if len(values) > MAX_LIST_ITEMS:
        raise ValidationError(
            _("At most %(n)d addresses."), code="too_many", params={"n": MAX_LIST_ITEMS}
        )
    if policy is None:
        policy = settings_address_policy()
    out = []
    errors = []
    for raw in values:
        try:
            out.append(_host_address(raw, version, policy))
        except ValidationError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ValidationError(errors)
    return normalise_list(out)


def _host_address(raw: str, version: int, policy: rules.AddressPolicy) -> str:
    if "/" in raw:
        raise ValidationError(
            _("%(value)s is a network; give host addresses only (no prefix)."),
            code="prefix_not_allowed",
            params={"value": raw},
        )
    try:
        parsed = rules.parse_address(raw)
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
    ruling = policy.rule(parsed)
    if not ruling.allowed:
        raise ValidationError(
            _("Address policy: %(reason)s."),
            code="address_policy",
            params={"value": raw, "reason": message_text(ruling.message or ruling.detail)},
        )
    return str(parsed)


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
                params={"value": raw, "reason": rule_message(exc)},
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
        # rules.normalise_sender is the renderer's rule: a local part of a-z 0-9 . _ + = -
        # only, so nothing Postfix would read as a comment, separator or routing operator
        # (# % ! | $ ' quotes, whitespace) is ever stored.
        try:
            out.append(rules.normalise_sender(raw))
        except ValueError as exc:
            raise ValidationError(
                _("%(value)s is not a valid sender (user@domain or @domain): %(reason)s."),
                code="invalid_sender",
                params={"value": raw, "reason": rule_message(exc)},
            ) from None
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
    if selector and not SELECTOR_RE.fullmatch(selector):
        raise ValidationError(
            _("A DKIM selector is one DNS label (letters, digits, '-')."),
            code="invalid_selector",
        )
    return selector


def validate_request(data: dict[str, Any]) -> dict[str, list[ValidationError]]:
    """Cross-field rules of a request; returns errors per field.

    The kind's own rules come from its spec (``kinds.py``); the rules every kind shares
    (senders, volume, free text) are here.
    """
    errors: dict[str, list[ValidationError]] = {}

    def add(field: str, message: str, code: str) -> None:
        errors.setdefault(field, []).append(ValidationError(message, code=code))

    kind = data.get("kind")
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if spec is not None:
        spec.validate(data, add)  # the kind's own fields: required, refused
    else:
        add("kind", _("Kind must be %(kinds)s.") % {
            "kinds": " or ".join(f"'{value}'" for value in KINDS)}, "invalid_kind")
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
    for field in ("purpose", "use_case", "chat_channel"):
        if data.get(field):
            try:
                validate_free_text(data[field], field=field)
            except ValidationError as exc:
                errors.setdefault(field, []).append(exc)
    return errors


# --- free text ------------------------------------------------------------------------

#: The one list of free-text limits, in characters (docs/architecture.md, "Input
#: limits"). Forms, serializers and services all check through ``validate_free_text``;
#: "comment" covers every comment typed with an action (decision note, override reason,
#: handover comment), which the audit trail and the mails quote.
FREE_TEXT_LIMITS: dict[str, int] = {
    "purpose": 2000,
    "use_case": 2000,
    "chat_channel": 200,
    "comment": 2000,
}
#: Fields that are one line: no newline or tab either.
SINGLE_LINE_FIELDS = frozenset({"chat_channel"})

# C0 and C1 controls and DEL, bidi embeddings/overrides (U+202A-U+202E) and isolates
# (U+2066-U+2069), lone surrogates. Multi-line fields keep tab, line feed and carriage
# return (browsers send a textarea's line breaks as CR LF).
_REFUSED_MULTI_LINE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_REFUSED_SINGLE_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def validate_free_text(value: object, *, field: str, max_length: int | None = None) -> str:
    """Text a person typed, bounded and without invisible control characters.

    Why: these values are shown to approvers, written to the audit trail and its CSV
    export, and quoted in mail. A text-direction override can make a reason read
    differently from what it says; a control character (NUL above all) breaks
    PostgreSQL, CSV readers and mail; unbounded text makes every page and mail that
    quotes it unbounded. ``max_length`` defaults to ``FREE_TEXT_LIMITS[field]``.
    Raises ``ValidationError`` naming the field and the rule; returns the value.
    """
    label = field.replace("_", " ").capitalize()
    if not isinstance(value, str):
        raise ValidationError(_("%(field)s must be text."), code="not_text",
                              params={"field": label})
    limit = max_length if max_length is not None else FREE_TEXT_LIMITS[field]
    if len(value) > limit:
        raise ValidationError(
            _("%(field)s is at most %(limit)d characters (this one has %(length)d)."),
            code="too_long", params={"field": label, "limit": limit, "length": len(value)},
        )
    single = field in SINGLE_LINE_FIELDS
    found = (_REFUSED_SINGLE_LINE if single else _REFUSED_MULTI_LINE).search(value)
    if found:
        allowed = "" if single else _(" (line breaks and tabs are fine)")
        raise ValidationError(
            _("%(field)s contains the invisible character U+%(code)04X at position "
              "%(position)d: control characters and text-direction overrides are not "
              "allowed%(allowed)s."),
            code="invalid_character",
            params={"field": label, "code": ord(found.group()),
                    "position": found.start() + 1, "allowed": allowed},
        )
    return value
