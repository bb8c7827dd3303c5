"""``address_policy``: which host addresses the relay may allow (a hard stop).

The rules live in ``requests_app/rules.py`` (shared with the forms and the renderer);
this module turns a ruling into a check result. The policy is the plan's gate: the
addresses it refuses are never looked up in DNS (docs/dns-checks.md, "The address
policy is a hard stop").
"""

from __future__ import annotations

from typing import Any

from requests_app import rules

from .config import CheckConfig
from .family import Applies
from .family import CheckFamily
from .family import Plan
from .results import CheckResult
from .results import CheckStatus
from .results import Message
from .results import Text
from .results import _
from .results import result

__all__ = ["ADDRESS_POLICY", "check_address"]

_listed = rules.listed
_parse_address = rules.parse_address


def check_address(address: str, config: CheckConfig) -> CheckResult:
    """The ``address_policy`` result of one address as typed (malformed ones fail)."""
    try:
        ip = _parse_address(address)
    except ValueError as exc:
        return result("address_policy", address, CheckStatus.FAIL, _refusal_text(exc),
                      address=address)
    subject = str(ip)
    evidence: dict[str, Any] = {"address": subject, "version": ip.version}
    policy = config._policy
    if not policy.lab and not _listed(ip):  # the common case: one binary search
        return result("address_policy", subject, CheckStatus.PASS,
                      Message(_("%(address)s is a global host address"), address=subject),
                      **evidence)
    ruling = policy.rule(ip, subject)
    if ruling.network is not None:
        evidence["network"] = ruling.network
    return result("address_policy", subject,
                  CheckStatus.PASS if ruling.allowed else CheckStatus.FAIL,
                  ruling.message or ruling.detail, **evidence)


def _refusal_text(exc: ValueError) -> Text:
    """A malformed address's refusal as a message (its English is ``str(exc)``), so the
    page says it in the reader's language too; any other error as its text."""
    if isinstance(exc, rules.RuleError) and not any(
            isinstance(v, BaseException) for v in exc.params.values()):
        return Message(exc.template, **exc.params)
    return str(exc)


def _judge(config: CheckConfig, _plan: Plan, address: str) -> CheckResult:
    return check_address(address, config)


def _narrow(plan: Plan, results: list[CheckResult]) -> None:
    """Forward and reverse see only the accepted addresses; refused ones are not asked.

    A malformed address has no ``version`` in its evidence and is neither.
    """
    plan.addresses = list(dict.fromkeys(r.subject for r in results
                                        if r.status is CheckStatus.PASS))
    plan.refused = list(dict.fromkeys(r.subject for r in results
                                      if r.status is not CheckStatus.PASS
                                      and "version" in r.evidence))


ADDRESS_POLICY = CheckFamily("address_policy", Applies.ADDRESS, judge=_judge, narrow=_narrow)
