"""``forward`` and ``reverse``: the server's name and addresses agree in DNS.

``forward``: the FQDN's A/AAAA (CNAME chain followed) hold every accepted address.
``reverse``: each accepted address has a PTR naming the FQDN or its canonical name.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import Any

from requests_app.dns import DnsAnswer
from requests_app.dns import DnsStatus
from requests_app.dns import reverse_name

from .family import Applies
from .family import CheckFamily
from .family import Plan
from .lookups import Run
from .results import CheckResult
from .results import CheckStatus
from .results import Message
from .results import _
from .results import result

__all__ = ["FORWARD", "REVERSE"]


async def _addresses(run: Run, fqdn: str) -> tuple[DnsAnswer, DnsAnswer]:
    # Both are in flight before either is awaited; cheaper than gather()'s two extra tasks.
    a_task, aaaa_task = run.start(fqdn, "A"), run.start(fqdn, "AAAA")
    return await asyncio.shield(a_task), await asyncio.shield(aaaa_task)


async def _check_forward(run: Run, plan: Plan, fqdn: str) -> CheckResult:
    """The name's A/AAAA must contain every accepted address (``plan.addresses``).

    Addresses the policy ``refused`` are not compared: the name need not resolve to
    them (that would be a second failure for one fault), and one it does resolve to is
    not "extra". The evidence lists them under ``not_compared`` so the page says why.
    """
    addresses, refused = plan.addresses, plan.refused
    a, aaaa = await _addresses(run, fqdn)
    chain = list(a.chain if len(a.chain) >= len(aaaa.chain) else aaaa.chain)
    found = sorted({*a.values, *aaaa.values}, key=_address_key)
    evidence: dict[str, Any] = {"name": fqdn, "chain": chain, "canonical_name": chain[-1],
                                "A": list(a.values), "AAAA": list(aaaa.values),
                                "expected": list(addresses)}
    note: Message | str = ""
    if refused:
        evidence["not_compared"] = list(refused)
        note = Message(_("; %(addresses)s not compared (refused by the address policy, "
                         "not looked up)"), addresses=", ".join(refused))
    if a.status is DnsStatus.NXDOMAIN and aaaa.status is DnsStatus.NXDOMAIN:
        if len(chain) > 1:
            return result("forward", fqdn, CheckStatus.FAIL, Message(
                _("%(fqdn)s does not exist (NXDOMAIN) (CNAME target %(target)s)%(note)s"),
                fqdn=fqdn, target=chain[-1], note=note), **evidence)
        return result("forward", fqdn, CheckStatus.FAIL, Message(
            _("%(fqdn)s does not exist (NXDOMAIN)%(note)s"), fqdn=fqdn, note=note), **evidence)
    missing = [x for x in addresses if x not in found]
    extra = [x for x in found if x not in addresses and x not in refused]
    evidence.update(missing=missing, extra=extra)
    if not found:
        return result("forward", fqdn, CheckStatus.FAIL,
                      Message(_("%(fqdn)s has no A or AAAA record%(note)s"), fqdn=fqdn,
                              note=note), **evidence)
    if missing:
        return result("forward", fqdn, CheckStatus.FAIL,
                      Message(_("%(fqdn)s does not resolve to %(addresses)s%(note)s"),
                              fqdn=fqdn, addresses=", ".join(missing), note=note), **evidence)
    if extra:
        return result("forward", fqdn, CheckStatus.WARN,
                      Message(_("%(fqdn)s also resolves to %(addresses)s, not in the "
                                "request%(note)s"), fqdn=fqdn, addresses=", ".join(extra),
                              note=note), **evidence)
    if not refused:
        text = _("%(fqdn)s resolves to exactly the requested addresses%(note)s")
    elif addresses:
        text = _("%(fqdn)s resolves to every accepted address%(note)s")
    else:
        text = _("%(fqdn)s exists; no accepted address to compare%(note)s")
    return result("forward", fqdn, CheckStatus.PASS, Message(text, fqdn=fqdn, note=note),
                  **evidence)


def _address_key(text: str) -> tuple[int, bytes]:
    # IPv4 first, then numeric order (packed bytes of one length sort as numbers)
    if ":" in text:
        return 6, socket.inet_pton(socket.AF_INET6, text)
    return 4, socket.inet_pton(socket.AF_INET, text)


async def _check_reverse(run: Run, plan: Plan, address: str) -> CheckResult:
    fqdn: str = plan.fqdn  # type: ignore[assignment]  # HOST_ADDRESS: a server entry
    ptr_name = reverse_name(address)
    ptr = await run.q(ptr_name, "PTR")
    names = sorted(set(ptr.values))
    evidence: dict[str, Any] = {"address": address, "ptr_name": ptr_name, "ptr": names,
                                "fqdn": fqdn}
    if not names:
        return result("reverse", address, CheckStatus.FAIL,
                      Message(_("%(address)s has no PTR record (%(status)s)"),
                              address=address, status=str(ptr.status)), **evidence)
    if fqdn in names:
        evidence["matched"] = fqdn
        return result("reverse", address, CheckStatus.PASS,
                      Message(_("PTR of %(address)s is %(name)s"), address=address,
                              name=fqdn), **evidence)
    a, aaaa = await _addresses(run, fqdn)  # memoised: the forward check asked already
    canonical = (a if len(a.chain) >= len(aaaa.chain) else aaaa).canonical_name
    evidence["canonical_name"] = canonical
    if canonical in names:
        evidence["matched"] = canonical
        return result("reverse", address, CheckStatus.PASS,
                      Message(_("PTR of %(address)s is %(name)s, the canonical name of "
                                "%(fqdn)s"), address=address, name=canonical, fqdn=fqdn),
                      **evidence)
    if canonical != fqdn:
        return result("reverse", address, CheckStatus.FAIL,
                      Message(_("PTR of %(address)s is %(names)s, not %(fqdn)s or "
                                "%(canonical)s"), address=address, names=", ".join(names),
                              fqdn=fqdn, canonical=canonical), **evidence)
    return result("reverse", address, CheckStatus.FAIL,
                  Message(_("PTR of %(address)s is %(names)s, not %(fqdn)s"), address=address,
                          names=", ".join(names), fqdn=fqdn), **evidence)


def _forward_first(_plan: Plan, fqdn: str) -> Iterable[tuple[str, str]]:
    return (fqdn, "A"), (fqdn, "AAAA")


def _reverse_first(_plan: Plan, address: str) -> Iterable[tuple[str, str]]:
    return ((reverse_name(address), "PTR"),)


FORWARD = CheckFamily("forward", Applies.FQDN, check=_check_forward,
                      first_lookups=_forward_first)
REVERSE = CheckFamily("reverse", Applies.HOST_ADDRESS, check=_check_reverse,
                      first_lookups=_reverse_first)
