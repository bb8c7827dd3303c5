"""Django system checks: configuration mistakes found at start-up, not in production mail."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Warning
from django.core.checks import register

__all__ = ["mail_addresses_on_approved_domains"]


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
