"""Glue between Django (settings, models) and the Django-free check engine."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any
from typing import Protocol

from django.conf import settings

from . import display
from .checks import CheckConfig
from .checks import CheckSpec
from .checks import run_checks_sync
from .checks import run_many_sync
from .checks.engine import make_plan
from .checks.labels import CHECKS_RUN
from .checks.results import CheckStatus
from .checks.results import Message
from .checks.results import Report
from .checks.results import _
from .checks.results import result
from .dns import make_resolver
from .kinds import KINDS
from .models import ApprovedSenderDomain
from .rules import normalise_fqdn

log = logging.getLogger(__name__)

__all__ = ["check_config", "quick_check_report", "run_checks_for", "run_checks_for_many",
           "spec_for"]


def check_config(*, include_db: bool = True) -> CheckConfig:
    """The engine's configuration: the environment's settings plus the admin's domains."""
    approved = set(settings.RELAY_APPROVED_SENDER_DOMAINS)
    if include_db:
        approved.update(_stored_approved_domains())
    return CheckConfig(
        spf_include=settings.RELAY_SPF_INCLUDE or None,
        relay_addresses=tuple(settings.RELAY_ADDRESSES),
        lab_networks=tuple(settings.RELAY_LAB_NETWORKS),
        allow_private=settings.RELAY_ALLOW_PRIVATE,
        approved_sender_domains=tuple(sorted(d.lower().rstrip(".") for d in approved)),
        lifetime=settings.DNS_LIFETIME_SECONDS,
    )


def _stored_approved_domains() -> list[str]:
    """The admin's approved sender domains in normal form; a malformed row is left out.

    The admin validates every row it saves, but a row written before that rule (or
    straight into the table) must not make every check task, quick-check and recheck
    crash: it is logged and ignored, so its domain is simply not approved.
    """
    domains = []
    for pk, domain in ApprovedSenderDomain.objects.order_by("pk").values_list("pk", "domain"):
        try:
            domains.append(normalise_fqdn(domain))
        except ValueError as exc:
            log.warning("approved sender domain row %s ignored (fix it in the admin): %s",
                        pk, exc)
    return domains


class CheckedFields(Protocol):
    """What the checks read of a request: a model row, or the recheck's plain row."""

    kind: str
    fqdn: str
    ipv4: list[str]
    ipv6: list[str]
    sender_domains: list[str]
    sender_addresses: list[str]
    dkim_selector: str


def sender_domains_of(request: CheckedFields) -> tuple[str, ...]:
    """Declared sender domains plus the domains of declared sender addresses."""
    domains = list(request.sender_domains)
    for address in request.sender_addresses:
        domains.append(address.rpartition("@")[2])
    return tuple(dict.fromkeys(d for d in domains if d))


def spec_for(request: CheckedFields) -> CheckSpec:
    """What the engine checks for a request: its kind says whether the host checks apply."""
    kind = KINDS.get(request.kind)
    host = kind is not None and kind.host_checks
    return CheckSpec(
        fqdn=request.fqdn if host else None,
        addresses=tuple(request.ipv6) + tuple(request.ipv4) if host else (),
        sender_domains=sender_domains_of(request),
        dkim_selector=request.dkim_selector or None,
        # where a proposed DMARC record sends its reports (checks/fixes.py); the
        # recheck's plain rows carry no contact, so theirs name a mailbox to create
        report_to=getattr(request, "contact_email", None) or None,
    )


def run_checks_for(request: CheckedFields) -> dict[str, Any]:
    """Run every applicable check for the request against ``DNS_NAMESERVERS``."""
    report = run_checks_sync(spec_for(request), check_config(), list(settings.DNS_NAMESERVERS))
    return report.as_dict()


def run_checks_for_many(requests: list[CheckedFields]) -> list[dict[str, Any] | None]:
    """Run the checks of several requests at once, in one batch of the engine.

    One configuration (one read of the approved domains) and one event loop for all,
    look-ups shared between them: what a burst of submissions costs is then the
    engine's work, not a loop, a resolver and a query per request. A request whose
    names the engine refuses (``ValueError``, as :func:`run_checks_for` raises) gets
    ``None`` instead of spoiling the batch; its caller runs it alone.
    """
    config = check_config()
    specs = [spec_for(r) for r in requests]
    runnable = []
    for index, spec in enumerate(specs):
        try:
            make_plan(spec, config)
        except ValueError:
            continue
        runnable.append(index)
    reports: list[dict[str, Any] | None] = [None] * len(specs)
    if runnable:
        resolver = make_resolver(list(settings.DNS_NAMESERVERS), config.lifetime)
        try:
            done = [report.as_dict() for report in run_many_sync(
                [specs[i] for i in runnable], config, resolver,
                concurrency=max(1, len(runnable)))]
        except Exception:
            # One request must not stop the batch (and every batch after it, since the
            # same request would be claimed again): each runs alone, and one that still
            # crashes gets an ``error`` report, retried and then shown to approvers.
            log.exception("a batch of %d checks failed; running them one by one",
                          len(runnable))
            done = [_alone(specs[i], config, resolver) for i in runnable]
        for index, report in zip(runnable, done, strict=True):
            reports[index] = report
    return reports


def _alone(spec: CheckSpec, config: CheckConfig, resolver: Any) -> dict[str, Any]:
    """One request's checks outside its failed batch; a crash becomes an ``error`` report."""
    try:
        return run_many_sync([spec], config, resolver, concurrency=1)[0].as_dict()
    except Exception as exc:
        log.exception("the checks of %s crashed", spec.fqdn or spec.sender_domains)
        crashed = result(CHECKS_RUN, spec.fqdn or ", ".join(spec.sender_domains),
                         CheckStatus.ERROR, Message(_("internal error: %(error)s"),
                                                    error=f"{type(exc).__name__}: {exc}"))
        return Report(verdict=CheckStatus.ERROR, checks=(crashed,)).as_dict()


def quick_check_report(*, fqdn: str, addresses: list[str]) -> dict[str, Any]:
    """The server form's as-you-type check: address policy, forward and reverse only.

    It runs on a web worker, so its whole DNS work gets the shorter of
    ``RELAYDESK_QUICK_CHECK_SECONDS`` and ``DNS_LIFETIME_SECONDS``: what does not
    answer by then is reported as ``error`` (the real checks retry later anyway).
    """
    spec = CheckSpec(fqdn=fqdn, addresses=tuple(addresses), sender_domains=(),
                     dkim_selector=None)
    lifetime = min(settings.DNS_LIFETIME_SECONDS, settings.RELAYDESK_QUICK_CHECK_SECONDS)
    config = dataclasses.replace(check_config(), lifetime=lifetime)
    report = run_checks_sync(spec, config, list(settings.DNS_NAMESERVERS))
    data = report.as_dict()
    for check in data["checks"]:  # the English detail stays; the form shows this one
        check["detail_translated"] = display.check_detail(check["detail"], check["evidence"])
    return data
