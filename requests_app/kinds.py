"""What a request kind is, in one place: forms, validation, services, checks, relay and
snippets ask this module instead of branching on ``kind``.

A kind declares its own fields (what its form asks and only it may carry), its
cross-field rules, which field names it in lists and mail (its subject), whether the
host checks (address policy, forward and reverse DNS) apply, how an in-config row
becomes a relay entry, whether it logs in (an account: the directory group, SASL in the
snippets, the login map) and which configuration snippets its owners get. A new kind is
one more :class:`KindSpec` here (and ``RequestKind`` in ``models.py``, which the
migrations record), plus its form, its templates and, if the relay serves it
differently, the back-end's renderer.

No model imports: ``models.py`` asks it for the subject, so it sits below the models.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .relay_backend import AccountEntry
from .relay_backend import ServerEntry

__all__ = (
    "COMMON_FIELDS",
    "KINDS",
    "KIND_FIELDS",
    "KindSpec",
    "kind_spec",
    "login_kinds",
    "logs_in",
)

#: Called by a kind's rules for each error: (field, message, code).
AddError = Callable[[str, str, str], None]

#: The fields every kind has (and a service may change while the request is editable).
COMMON_FIELDS = (
    "contact_email",
    "chat_channel",
    "sender_domains",
    "sender_addresses",
    "dkim_selector",
    "expected_daily_volume",
)


@dataclass(frozen=True, slots=True)
class KindSpec:
    """One request kind. See the module docstring for why each part is here."""

    value: str
    #: The fields only this kind has, in form order.
    fields: tuple[str, ...]
    #: The field lists and mail subjects show.
    subject_field: str
    #: Its cross-field rules (required and refused fields) over the submitted data.
    validate: Callable[[Mapping[str, Any], AddError], None]
    #: Other kinds' fields a new request of this kind drops (set to their empty value).
    cleared_on_create: tuple[str, ...]
    #: Whether the host checks apply: the FQDN and its addresses (address policy,
    #: forward, reverse). The sender checks (SPF, DMARC, DKIM) apply to every kind.
    host_checks: bool
    #: The field holding the login ("" if the kind does not log in to the relay).
    login_field: str
    #: The columns (after ``pk`` and the team's slug) a relay entry is built from.
    relay_columns: tuple[str, ...]
    #: Builds the relay entry from ``pk``, team slug and ``relay_columns``.
    relay_entry: Callable[..., ServerEntry | AccountEntry]
    #: The configuration snippets the owners get, in page order.
    snippets: tuple[str, ...]
    #: What the owners configure with the snippets ("Settings for your ...").
    snippet_target: str
    #: The template of its own facts on the request page.
    facts_template: str
    #: Whether the form offers the as-you-type DNS check of the host.
    quick_check: bool
    #: What the "New request" page says about the kind, under its label.
    description: str

    @property
    def authenticates(self) -> bool:
        """Logs in to the relay: a directory group member, an entry of the login map."""
        return bool(self.login_field)


def _validate_server(data: Mapping[str, Any], add: AddError) -> None:
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


def _validate_account(data: Mapping[str, Any], add: AddError) -> None:
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


def _server_entry(
    pk: int, team: str, fqdn: str, ipv4: list[str], ipv6: list[str],
    addresses: list[str], domains: list[str], tier: str, volume: int,
) -> ServerEntry:
    return ServerEntry(pk, fqdn, team, tuple(ipv6) + tuple(ipv4),
                       senders=tuple(addresses) + tuple("@" + d for d in domains),
                       production=tier == "production", daily_volume=volume)


def _account_entry(
    pk: int, team: str, account: str, addresses: list[str], domains: list[str],
    tier: str, volume: int,
) -> AccountEntry:
    return AccountEntry(pk, account, team, tuple(addresses) + tuple("@" + d for d in domains),
                        production=tier == "production", daily_volume=volume)


SERVER = KindSpec(
    value="server",
    fields=("fqdn", "ipv4", "ipv6", "purpose"),
    subject_field="fqdn",
    validate=_validate_server,
    cleared_on_create=(),
    host_checks=True,
    login_field="",
    relay_columns=("fqdn", "ipv4", "ipv6", "sender_addresses", "sender_domains",
                   "quota_tier", "expected_daily_volume"),
    relay_entry=_server_entry,
    snippets=("postfix", "django", "smtplib", "nodemailer", "test"),
    snippet_target="server",
    facts_template="requests_app/kinds/server_facts.html",
    quick_check=True,
    description=gettext_lazy("A server or appliance sends through the relay from fixed IP "
                             "addresses. Needs forward and reverse DNS."),
)

ACCOUNT = KindSpec(
    value="account",
    fields=("account_name", "use_case", "tls_mode"),
    subject_field="account_name",
    validate=_validate_account,
    cleared_on_create=("fqdn", "ipv4", "ipv6"),
    host_checks=False,
    login_field="account_name",
    relay_columns=("account_name", "sender_addresses", "sender_domains", "quota_tier",
                   "expected_daily_volume"),
    relay_entry=_account_entry,
    snippets=("postfix", "sasl_passwd", "django", "smtplib", "nodemailer", "test"),
    snippet_target="application",
    facts_template="requests_app/kinds/account_facts.html",
    quick_check=False,
    description=gettext_lazy("An application authenticates with a service account over "
                             "STARTTLS (587) or implicit TLS (465). No IP allowlisting."),
)

#: Every kind by its value, in the order ``RequestKind`` lists them.
KINDS: dict[str, KindSpec] = {spec.value: spec for spec in (SERVER, ACCOUNT)}

#: Every kind-specific field, each once, in declaration order.
KIND_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for s in KINDS.values() for f in s.fields))


def kind_spec(value: object) -> KindSpec:
    """The spec of kind ``value``; ``ValueError`` naming the kinds there are."""
    spec = KINDS.get(value) if isinstance(value, str) else None
    if spec is None:
        raise ValueError(f"unknown request kind {value!r} (known: {', '.join(KINDS)})")
    return spec


def login_kinds() -> tuple[KindSpec, ...]:
    """The kinds that log in to the relay (their login is in ``login_field``)."""
    return tuple(spec for spec in KINDS.values() if spec.authenticates)


def logs_in(value: object) -> bool:
    """Whether requests of kind ``value`` log in to the relay (False for an unknown kind)."""
    spec = KINDS.get(value) if isinstance(value, str) else None
    return spec is not None and spec.authenticates
