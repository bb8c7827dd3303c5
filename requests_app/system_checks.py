"""Django system checks: configuration mistakes found at start-up, not in production mail."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error
from django.core.checks import Warning
from django.core.checks import register

from .relay import relay_settings
from .relay_backend import SETTING_NAMES
from .relay_backend import enforcement_problems
from .relay_backend import load_backend

__all__ = [
    "account_credentials_configured",
    "mail_addresses_on_approved_domains",
    "relay_backend_configured",
    "relay_enforcement_configured",
]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip(">").lower()


def _approved(domain: str, approved: list[str]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in approved)


@register()
def mail_addresses_on_approved_domains(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Our own notifications must follow the rule we impose: From and Return-Path on an
    approved sender domain (else the relay rewrites them)."""
    approved = [d.lower().rstrip(".") for d in settings.RELAY_APPROVED_SENDER_DOMAINS]
    if not approved:
        return []
    out = []
    for name in ("DEFAULT_FROM_EMAIL", "RELAYDESK_RETURN_PATH"):
        domain = _domain(getattr(settings, name))
        if not _approved(domain, approved):
            out.append(Warning(
                f"{name} is on {domain}, which is not in RELAY_APPROVED_SENDER_DOMAINS.",
                hint="Use an address on an approved domain, or add the domain.",
                id="relaydesk.W001",
            ))
    return out


@register()
def relay_backend_configured(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """``RELAY_BACKEND`` and ``RELAY_MAP_TYPE`` name a back-end and map type that exist.

    Found at start-up rather than by the first relay build, which would fail in a worker
    while requests wait in provisioning.
    """
    try:
        load_backend(settings.RELAY_BACKEND, settings.RELAY_MAP_TYPE)
    except ValueError as exc:
        return [Error(str(exc), hint="See docs/relay-config.md, \"Back-ends and map types\".",
                      id="relaydesk.E001")]
    return []


@register()
def relay_enforcement_configured(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The enforcement settings (sender mode, rewrite domain, quotas, the relay-local
    services) are usable: one error per bad setting, named.

    The relay build refuses the same values (``relay_backend.enforcement_problems`` is
    the one rule), but there it fails in a worker while approved requests wait in
    provisioning; here it fails at start-up. The admin's approved domains are not read
    (the database may not exist yet); they are normalised when they are saved.
    """
    relay = relay_settings(include_db=False)
    return [
        Error(f"{SETTING_NAMES[name]} {getattr(relay, name)!r} is invalid: {why}.",
              hint="See docs/relay-enforcement.md, \"Settings\".", id="relaydesk.E002")
        for name, why in enforcement_problems(relay)
    ]


@register()
def account_credentials_configured(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """``RELAY_ACCOUNT_CREDENTIALS`` is a known mode, and ``issue`` has what it needs.

    In ``issue`` mode Relaydesk sets each account's password in the directory; without
    ``DIRECTORY_URL`` every activation would record a failed password change and offer
    no link, found only when an owner asks why. The key is checked by the production
    settings themselves (they refuse to load without one).
    """
    mode = settings.RELAY_ACCOUNT_CREDENTIALS
    if mode not in ("directory", "issue"):
        return [Error(f"RELAY_ACCOUNT_CREDENTIALS {mode!r} is invalid: must be one of "
                      "directory, issue.", hint="See docs/credentials.md.",
                      id="relaydesk.E003")]
    if mode == "issue" and not settings.DIRECTORY_URL:
        return [Error("RELAY_ACCOUNT_CREDENTIALS is issue, but DIRECTORY_URL is empty: "
                      "Relaydesk cannot set the passwords it issues.",
                      hint="Set DIRECTORY_URL (and a bind DN allowed to reset the service "
                           "accounts' passwords), or use directory mode. See "
                           "docs/credentials.md.", id="relaydesk.E003")]
    return []

