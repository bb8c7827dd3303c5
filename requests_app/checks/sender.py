"""The sender domain's own records: ``sender_dmarc``, ``sender_dkim``, ``sender_domain_policy``.

* ``sender_dmarc``: the policy a receiver finds (RFC 7489 6.6.3), see docs/dns-checks.md,
  "DMARC evaluation";
* ``sender_dkim``: a key at ``SELECTOR._domainkey.DOMAIN`` (only with a selector);
* ``sender_domain_policy``: whether the domain is one the relay is approved for (no DNS).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from requests_app.dns import DnsAnswer

from .config import CheckConfig
from .family import Applies
from .family import CheckFamily
from .family import Plan
from .lookups import Run
from .names import organisational_domain
from .results import CheckResult
from .results import CheckStatus
from .results import Message
from .results import _
from .results import result

__all__ = ["DKIM", "DMARC", "DOMAIN_POLICY"]

_DMARC_POLICIES = ("none", "quarantine", "reject")
# RFC 7489 6.3/6.4: the first tag is v; its name is case-insensitive (an ABNF string), its
# value "MUST match precisely" DMARC1.
_DMARC1 = re.compile(r"v[ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)", re.I)
_DMARC1_EXACT = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
# RFC 7489 6.4: dmarc-uri = URI [ "!" size ]; "," and "!" inside a URI are %-encoded
_MONITORS = _("DMARC at %(name)s only monitors (%(tag)s=none)%(notes)s")
_WITH_POLICY = _("DMARC at %(name)s with %(tag)s=%(policy)s%(notes)s")
_DMARC_URI = re.compile(r"([a-z][a-z0-9+.-]*):((?:[a-z0-9\-._~$&'()*+;=:@/?#]|%[0-9a-f]{2})+)"
                        r"(?:![0-9]+[kmgt]?)?", re.I)
_MAILTO_ADDRESS = re.compile(r"[^@?]+@(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[^\]]+\])(?:\?.*)?",
                             re.I)
_LOWER_POLICY = {"reject": "quarantine", "quarantine": "none"}  # RFC 7489 6.6.4


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            tags.setdefault(key.strip().lower(), value.strip())
    return tags


def _report_uris(value: str) -> list[str]:
    """The syntactically valid URIs of a ``rua``/``ruf`` list (RFC 7489 6.4, RFC 3986).

    A ``mailto:`` URI must also name an address: a report needs somewhere to go.
    """
    valid = []
    for uri in (u.strip(" \t") for u in value.split(",")):
        match = _DMARC_URI.fullmatch(uri)
        if match and (match.group(1).lower() != "mailto"
                      or _MAILTO_ADDRESS.fullmatch(match.group(2))):
            valid.append(uri)
    return valid


def _discarded(values: Sequence[str], records: list[str]) -> list[str]:
    """TXT values that look like DMARC records but are not ``v=DMARC1`` exactly."""
    if len(values) == len(records):
        return []
    return [v for v in values if v not in records and _DMARC1.match(v)]


async def _dmarc_at(run: Run, domain: str) -> tuple[str, DnsAnswer, list[str]]:
    name = f"_dmarc.{domain}"
    answer = await run.q(name, "TXT")
    # RFC 7489 6.6.3 step 3: other TXT records (verification tokens ...) are discarded
    return name, answer, [v for v in answer.values if _DMARC1_EXACT.match(v)]


async def _check_dmarc(run: Run, _plan: Plan, domain: str) -> CheckResult:
    """``sender_dmarc``: the policy a receiver finds for ``domain`` (RFC 7489 6.6.3).

    A record counts only with the exact version ``v=DMARC1``; an invalid ``p`` or ``sp``
    (on whichever record applies) makes receivers fall back to ``p=none`` when ``rua``
    holds a valid URI, and apply no DMARC otherwise (step 6). ``pct`` below 100 is
    reported, with what receivers do with the rest (RFC 7489 6.6.4).
    """
    org = organisational_domain(domain)
    evidence: dict[str, Any] = {"domain": domain, "organisational_domain": org}
    name, answer, records = await _dmarc_at(run, domain)
    evidence["queried"] = {name: list(answer.values)}
    discarded = _discarded(answer.values, records)
    found_at = domain
    if not records and org and org != domain:  # RFC 7489 6.6.3: fall back to the org domain
        name, answer, records = await _dmarc_at(run, org)
        evidence["queried"][name] = list(answer.values)
        discarded += _discarded(answer.values, records)
        found_at = org
    if discarded:
        evidence["discarded"] = discarded
    if not records:
        why: Message | str = (Message(_("; %(record)r is not one: the version must be "
                                        "exactly DMARC1 (RFC 7489 6.3)"),
                                      record=discarded[0]) if discarded else "")
        if org and org != domain:
            return result("sender_dmarc", domain, CheckStatus.FAIL,
                          Message(_("no DMARC record at _dmarc.%(domain)s or "
                                    "_dmarc.%(org)s%(why)s"), domain=domain, org=org, why=why),
                          **evidence)
        return result("sender_dmarc", domain, CheckStatus.FAIL,
                      Message(_("no DMARC record at _dmarc.%(domain)s%(why)s"), domain=domain,
                              why=why), **evidence)
    if len(records) > 1:
        return result("sender_dmarc", domain, CheckStatus.FAIL,
                      Message(_("%(name)s has %(count)s DMARC records; receivers ignore "
                                "them all (RFC 7489 6.6.3 step 5)"), name=name,
                              count=len(records)), **evidence)
    tags = _tags(records[0])
    evidence["found_at"], evidence["record"] = name, records[0]
    p, sp = tags.get("p"), tags.get("sp")
    if (p is None or p.lower() not in _DMARC_POLICIES
            or sp is not None and sp.lower() not in _DMARC_POLICIES):  # RFC 7489 6.6.3 step 6
        invalid = {tag: value for tag, value in (("p", p), ("sp", sp))
                   if (tag == "p" or value is not None)
                   and (value or "").lower() not in _DMARC_POLICIES}
        uris = _report_uris(tags.get("rua", ""))
        evidence.update(invalid_tags=invalid, rua_valid=uris)
        parts: list[Message | str] = [
            f"{t}={v!r}" if v is not None else Message(_("a missing %(tag)s="), tag=t)
            for t, v in invalid.items()]
        what = (parts[0] if len(parts) == 1
                else Message(_("%(first)s and %(second)s"), first=parts[0], second=parts[1]))
        if not uris:
            return result("sender_dmarc", domain, CheckStatus.FAIL,
                          Message(_("%(name)s: %(what)s is not a valid policy and rua= "
                                    "holds no valid URI, so receivers apply no DMARC "
                                    "(RFC 7489 6.6.3 step 6)"), name=name, what=what),
                          **evidence)
        evidence["policy"] = "none"
        return result("sender_dmarc", domain, CheckStatus.WARN,
                      Message(_("%(name)s: %(what)s is not a valid policy; receivers act "
                                "as if p=none (only monitor) because rua= holds a valid URI "
                                "(RFC 7489 6.6.3 step 6)"), name=name, what=what),
                      **evidence)
    tag = "sp" if found_at != domain and sp is not None else "p"  # a subdomain: the org's sp=
    policy = str(sp if tag == "sp" else p).lower()  # both valid, checked above
    evidence["policy"], evidence["pct"] = policy, 100
    pct_text = tags.get("pct")
    if pct_text is None:  # the common case: the policy applies to all failing mail
        if policy == "none":
            return result("sender_dmarc", domain, CheckStatus.WARN,
                          Message(_MONITORS, name=name, tag=tag, notes=""), **evidence)
        return result("sender_dmarc", domain, CheckStatus.PASS,
                      Message(_WITH_POLICY, name=name, tag=tag, policy=policy, notes=""),
                      **evidence)
    return _dmarc_with_pct(domain, name, tag, policy, pct_text, evidence)


def _dmarc_with_pct(domain: str, name: str, tag: str, policy: str, pct_text: str,
                    evidence: dict[str, Any]) -> CheckResult:
    """A valid policy with a ``pct`` tag: say how much of the failing mail it covers.

    RFC 7489 6.6.4: mail outside the percentage gets the next policy down (reject ->
    quarantine -> none), so ``p=quarantine; pct=0`` quarantines nothing. An invalid
    ``pct`` is named and warned about: receivers differ in what they make of it.
    """
    notes: list[Message] = []
    status = CheckStatus.PASS
    pct = 100
    if re.fullmatch(r"[0-9]{1,3}", pct_text) and int(pct_text) <= 100:
        pct = int(pct_text)
    else:
        evidence["invalid_tags"] = {"pct": pct_text}
        notes.append(Message(_("pct=%(pct)r is not an integer from 0 to 100 (RFC 7489 6.3)"),
                             pct=pct_text))
        status = CheckStatus.WARN
    evidence["pct"] = pct
    if pct < 100 and policy in _LOWER_POLICY:
        notes.append(Message(_("%(tag)s=%(policy)s applies to %(pct)s%% of failing mail "
                               "(pct=%(pct)s); the rest gets %(lower)s (RFC 7489 6.6.4)"),
                             tag=tag, policy=policy, pct=pct, lower=_LOWER_POLICY[policy]))
    # "; " before the notes: not a sentence, so not in the catalog (gettext returns it)
    suffix: Message | str = Message("; %(notes)s", notes=notes) if notes else ""
    if policy == "none":
        return result("sender_dmarc", domain, CheckStatus.WARN,
                      Message(_MONITORS, name=name, tag=tag, notes=suffix), **evidence)
    if pct == 0 and policy == "quarantine":
        return result("sender_dmarc", domain, CheckStatus.WARN,
                      Message(_("DMARC at %(name)s quarantines no mail%(notes)s"), name=name,
                              notes=suffix), **evidence)
    return result("sender_dmarc", domain, status,
                  Message(_WITH_POLICY, name=name, tag=tag, policy=policy, notes=suffix),
                  **evidence)


async def _check_dkim(run: Run, plan: Plan, domain: str) -> CheckResult:
    selector = plan.selector
    name = f"{selector}._domainkey.{domain}"
    answer = await run.q(name, "TXT")
    evidence: dict[str, Any] = {"name": name, "chain": list(answer.chain),
                                "records": list(answer.values)}
    keys = [v for v in answer.values if "p" in _tags(v)]
    if not keys:
        return result("sender_dkim", domain, CheckStatus.FAIL,
                      Message(_("no DKIM key at %(name)s (%(status)s)"), name=name,
                              status=str(answer.status)), **evidence)
    live = [v for v in keys if _tags(v)["p"]]
    if not live:
        return result("sender_dkim", domain, CheckStatus.FAIL,
                      Message(_("the DKIM key at %(name)s is revoked (empty p=)"), name=name),
                      **evidence)
    if len(answer.chain) > 1:
        return result("sender_dkim", domain, CheckStatus.PASS,
                      Message(_("DKIM key at %(name)s via CNAME to %(target)s"), name=name,
                              target=answer.canonical_name), **evidence)
    return result("sender_dkim", domain, CheckStatus.PASS,
                  Message(_("DKIM key at %(name)s"), name=name), **evidence)


def _check_domain_policy(config: CheckConfig, _plan: Plan, domain: str) -> CheckResult:
    approved = config.approved_sender_domains
    match = next((d for d in approved if domain == d or domain.endswith("." + d)), None)
    if match:
        return result("sender_domain_policy", domain, CheckStatus.PASS,
                      Message(_("%(domain)s is an approved sender domain (%(match)s)"),
                              domain=domain, match=match),
                      domain=domain, approved=list(approved), matched=match)
    return result("sender_domain_policy", domain, CheckStatus.WARN,
                  Message(_("%(domain)s is not an approved sender domain: From/Return-Path "
                            "will be rewritten"), domain=domain),
                  domain=domain, approved=list(approved))


def _dmarc_first(_plan: Plan, domain: str) -> Iterable[tuple[str, str]]:
    return ((f"_dmarc.{domain}", "TXT"),)


def _dkim_first(plan: Plan, domain: str) -> Iterable[tuple[str, str]]:
    return ((f"{plan.selector}._domainkey.{domain}", "TXT"),)


DMARC = CheckFamily("sender_dmarc", Applies.SENDER_DOMAIN, check=_check_dmarc,
                    first_lookups=_dmarc_first)
DKIM = CheckFamily("sender_dkim", Applies.SENDER_DOMAIN_WITH_SELECTOR, check=_check_dkim,
                   first_lookups=_dkim_first)
DOMAIN_POLICY = CheckFamily("sender_domain_policy", Applies.SENDER_DOMAIN,
                            judge=_check_domain_policy)
