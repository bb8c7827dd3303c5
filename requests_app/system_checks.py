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
