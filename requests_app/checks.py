"""The DNS and address checks of a relay request (no Django imports).

Ids, statuses and the report shape are a contract (DESIGN.md "Checks"). Why the engine
looks the way it does:

* Every check of a request runs concurrently, and the whole run shares one deadline
  (``CheckConfig.lifetime``): look-ups made late in a run (an SPF include five levels
  down) get only the time that is left, and a safety net marks anything still running
  at the deadline as ``error``. An unanswered query is never a pass or a fail.
* Look-ups are memoised per run (per batch in :func:`run_many`), so the forward and
  reverse checks see the same A/AAAA answer, and names shared by many requests (the
  relay's SPF include, an organisational ``_dmarc`` record) are asked once.
* SPF is evaluated as RFC 7208 ``check_host()`` does, including the limit of 10
  DNS-querying terms, because a record that exceeds it is broken for receivers even
  when it looks right.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import gc
import ipaddress
import logging
import re
import socket
import types
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Generator
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

from publicsuffixlist import PublicSuffixList

from requests_app import rules
from requests_app.dns import DnsAnswer
from requests_app.dns import DnsClient
from requests_app.dns import DnsStatus
from requests_app.dns import TransientDnsError
from requests_app.dns import make_resolver
from requests_app.dns import reverse_name

if TYPE_CHECKING:
    import dns.asyncresolver

__all__ = [
    "CheckConfig",
    "CheckResult",
    "CheckSpec",
    "CheckStatus",
    "Report",
    "VERDICT_ORDER",
    "batch_event_loop",
    "gc_paused",
    "normalise_address",
    "normalise_domain",
    "normalise_fqdn",
    "organisational_domain",
    "run_checks",
    "run_checks_sync",
    "run_many",
    "run_many_sharded",
    "run_many_sync",
    "run_sync",
    "worst_status",
]

log = logging.getLogger(__name__)

# Extra time after the lifetime before unfinished checks are declared ``error``: the
# resolver itself stops at the lifetime, this only covers scheduling and parsing.
DEADLINE_MARGIN = 0.5
SPF_LOOKUP_LIMIT = 10  # RFC 7208 section 4.6.4
SPF_VOID_LIMIT = 2  # RFC 7208 section 4.6.4, "void lookups"


class CheckStatus(enum.StrEnum):
    """Outcome of one check; the request's verdict is the worst of them."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"  # DNS could not answer: retried, never taken as pass or fail


# Best to worst. A definite failure outranks an unanswered look-up: however the DNS
# error would have ended, the request already cannot go through as it is, so it goes
# back to the requester at once instead of waiting out the retries.
VERDICT_ORDER = (CheckStatus.PASS, CheckStatus.WARN, CheckStatus.ERROR, CheckStatus.FAIL)
_RANK = {status: rank for rank, status in enumerate(VERDICT_ORDER)}


def worst_status(statuses: Iterable[str]) -> CheckStatus:
    """The verdict: ``fail`` > ``error`` > ``warn`` > ``pass`` (``pass`` when empty).

    The one definition of the order: the engine's reports, the recorded verdict of a
    request and the CLI's exit code all come from here.
    """
    return max((CheckStatus(s) for s in statuses), key=_RANK.__getitem__,
               default=CheckStatus.PASS)


# --- normalisation (the one rule set of rules.py, shared with forms and renderer) -------

# Names that are not host names (``_spf``, ``_dmarc``, DKIM selectors) may use "_".
_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PLAIN_FQDN = rules.PLAIN_FQDN_RE
_normalise_fqdn_in_full = rules.normalise_fqdn_in_full
_parse_address = rules.parse_address
normalise_fqdn = rules.normalise_fqdn
normalise_domain = normalise_fqdn  # sender domains follow host-name syntax too
normalise_address = rules.normalise_address


def _dns_name(value: str, what: str = "name") -> str:
    """Like :func:`normalise_fqdn` but allows ``_`` and single labels (SPF/DKIM names)."""
    return ".".join(rules.ascii_labels(value, what, _DNS_LABEL))


@functools.cache
def _psl() -> PublicSuffixList:
    # The list bundled with the package: never fetched at run time, updated with the package.
    return PublicSuffixList()


def organisational_domain(domain: str) -> str | None:
    """Public suffix + 1 label (RFC 7489 section 3.2), or None for a public suffix."""
    return _psl().privatesuffix(domain)


# --- inputs and outputs -----------------------------------------------------------------


def _tuple(values: Iterable[str] | str | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):  # a single setting value, not its characters
        values = [values]
    return tuple(v for v in values if v and v.strip())


@dataclass(frozen=True)
class CheckConfig:
    """Relay-wide settings the checks need (built from Django settings by the caller).

    Values are validated and normalised on construction, so a bad setting fails at
    start-up with ``ValueError`` rather than as a wrong check result.
    """

    spf_include: str | None = None
    relay_addresses: tuple[str, ...] = ()
    lab_networks: tuple[str, ...] = ()
    allow_private: bool = False
    approved_sender_domains: tuple[str, ...] = ()
    lifetime: float = 5.0
    # The address policy of rules.py with these settings (lab networks, allow_private).
    _policy: rules.AddressPolicy = field(
        default=rules.address_policy(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        include = (self.spf_include or "").strip()
        put("spf_include", _dns_name(include, "RELAY_SPF_INCLUDE") if include else None)
        put("relay_addresses", tuple(normalise_address(a) for a in _tuple(self.relay_addresses)))
        put("approved_sender_domains",
            tuple(normalise_domain(d) for d in _tuple(self.approved_sender_domains)))
        put("lab_networks", _tuple(self.lab_networks))
        try:
            put("_policy", rules.address_policy(self.lab_networks, bool(self.allow_private)))
        except ValueError as exc:
            raise ValueError(f"RELAY_LAB_NETWORKS: {exc}") from None
        if not self.lifetime or self.lifetime <= 0:
            raise ValueError("lifetime must be positive")


@dataclass(frozen=True)
class CheckSpec:
    """What to check for one request; ``fqdn=None`` is a functional account."""

    fqdn: str | None
    addresses: tuple[str, ...] = ()
    sender_domains: tuple[str, ...] = ()
    dkim_selector: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: ``{id, subject, status, detail, evidence}``."""

    id: str
    subject: str
    status: CheckStatus
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "subject": self.subject, "status": str(self.status),
                "detail": self.detail, "evidence": self.evidence}


@dataclass(frozen=True)
class Report:
    """All results of one request and their verdict (the worst status)."""

    verdict: CheckStatus
    checks: tuple[CheckResult, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": str(self.verdict), "checks": [c.as_dict() for c in self.checks]}


def _result(check_id: str, subject: str, status: CheckStatus, detail: str,
            **evidence: Any) -> CheckResult:
    return CheckResult(check_id, subject, status, detail, evidence)


# --- look-ups shared within a run -------------------------------------------------------


class _Lookups:
    """In-flight and finished look-ups by (name, type), shared by the checks of a batch."""

    def __init__(self, resolver: dns.asyncresolver.Resolver):
        self.client = DnsClient(resolver)
        self.asked: dict[tuple[str, str], asyncio.Future[DnsAnswer]] = {}

    def get(self, name: str, rdtype: str, deadline: float) -> asyncio.Future[DnsAnswer]:
        """The look-up of (name, type), started now with the time left before ``deadline``.

        One asked already (maybe answered) is returned even past the deadline; a new one
        after it raises :class:`TransientDnsError`.
        """
        future = self.asked.get((name, rdtype))
        if future is None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TransientDnsError(f"{name} {rdtype}: no time left in this run")
            future = self.asked[name, rdtype] = self.client.query(name, rdtype,
                                                                  lifetime=remaining)
        return future

    def close(self) -> None:
        for future in self.asked.values():
            if not future.cancel() and not future.cancelled():
                future.exception()  # retrieved, so asyncio does not log "never retrieved"
        self.client.close()


class _Run:
    """One request's checks: the shared look-ups and this request's deadline."""

    def __init__(self, config: CheckConfig, lookups: _Lookups):
        self.config = config
        self.lookups = lookups
        self.deadline = asyncio.get_running_loop().time() + config.lifetime

    def start(self, name: str, rdtype: str) -> asyncio.Future[DnsAnswer]:
        return self.lookups.get(name, rdtype, self.deadline)

    async def q(self, name: str, rdtype: str) -> DnsAnswer:
        # shield: a check cancelled at the deadline must not cancel a look-up others share.
        return await asyncio.shield(self.start(name, rdtype))


# --- address_policy ---------------------------------------------------------------------

# The rules live in rules.py (shared with the forms and the renderer); these names are
# the engine's view of them.
_REFUSED = rules.REFUSED_NETWORKS
_PRIVATE = rules.PRIVATE_NETWORKS
_LISTED = rules.LISTED_RANGES
_listed = rules.listed


def _check_address(address: str, config: CheckConfig) -> CheckResult:
    try:
        ip = _parse_address(address)
    except ValueError as exc:
        return _result("address_policy", address, CheckStatus.FAIL, str(exc), address=address)
    subject = str(ip)
    evidence: dict[str, Any] = {"address": subject, "version": ip.version}
    policy = config._policy
    if not policy.lab and not _listed(ip):  # the common case: one binary search
        return _result("address_policy", subject, CheckStatus.PASS,
                       f"{subject} is a global host address", **evidence)
    ruling = policy.rule(ip, subject)
    return _ruling_result(ruling, subject, evidence)


def _ruling_result(ruling: rules.AddressRuling, subject: str,
                   evidence: dict[str, Any]) -> CheckResult:
    if ruling.network is not None:
        evidence["network"] = ruling.network
    return _result("address_policy", subject,
                   CheckStatus.PASS if ruling.allowed else CheckStatus.FAIL, ruling.detail,
                   **evidence)


def _judge_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, subject: str,
                   evidence: dict[str, Any], config: CheckConfig) -> CheckResult:
    """Every address rule, in order (the lab networks are already ruled out)."""
    return _ruling_result(rules.judge_address(ip, config.allow_private, subject), subject,
                          evidence)


# --- forward and reverse ----------------------------------------------------------------


async def _addresses(run: _Run, fqdn: str) -> tuple[DnsAnswer, DnsAnswer]:
    # Both are in flight before either is awaited; cheaper than gather()'s two extra tasks.
    a_task, aaaa_task = run.start(fqdn, "A"), run.start(fqdn, "AAAA")
    return await asyncio.shield(a_task), await asyncio.shield(aaaa_task)


async def _check_forward(run: _Run, fqdn: str, addresses: Sequence[str],
                         refused: Sequence[str] = ()) -> CheckResult:
    """The name's A/AAAA must contain every accepted address (``addresses``).

    Addresses the policy ``refused`` are not compared: the name need not resolve to
    them (that would be a second failure for one fault), and one it does resolve to is
    not "extra". The evidence lists them under ``not_compared`` so the page says why.
    """
    a, aaaa = await _addresses(run, fqdn)
    chain = list(a.chain if len(a.chain) >= len(aaaa.chain) else aaaa.chain)
    found = sorted({*a.values, *aaaa.values}, key=_address_key)
    evidence: dict[str, Any] = {"name": fqdn, "chain": chain, "canonical_name": chain[-1],
                                "A": list(a.values), "AAAA": list(aaaa.values),
                                "expected": list(addresses)}
    note = ""
    if refused:
        evidence["not_compared"] = list(refused)
        note = (f"; {', '.join(refused)} not compared (refused by the address policy, "
                "not looked up)")
    if a.status is DnsStatus.NXDOMAIN and aaaa.status is DnsStatus.NXDOMAIN:
        where = f" (CNAME target {chain[-1]})" if len(chain) > 1 else ""
        return _result("forward", fqdn, CheckStatus.FAIL,
                       f"{fqdn} does not exist (NXDOMAIN){where}{note}", **evidence)
    missing = [x for x in addresses if x not in found]
    extra = [x for x in found if x not in addresses and x not in refused]
    evidence.update(missing=missing, extra=extra)
    if not found:
        return _result("forward", fqdn, CheckStatus.FAIL,
                       f"{fqdn} has no A or AAAA record{note}", **evidence)
    if missing:
        return _result("forward", fqdn, CheckStatus.FAIL,
                       f"{fqdn} does not resolve to {', '.join(missing)}{note}", **evidence)
    if extra:
        return _result("forward", fqdn, CheckStatus.WARN,
                       f"{fqdn} also resolves to {', '.join(extra)}, not in the request{note}",
                       **evidence)
    if not refused:
        what = "resolves to exactly the requested addresses"
    elif addresses:
        what = "resolves to every accepted address"
    else:
        what = "exists; no accepted address to compare"
    return _result("forward", fqdn, CheckStatus.PASS, f"{fqdn} {what}{note}", **evidence)


def _address_key(text: str) -> tuple[int, bytes]:
    # IPv4 first, then numeric order (packed bytes of one length sort as numbers)
    if ":" in text:
        return 6, socket.inet_pton(socket.AF_INET6, text)
    return 4, socket.inet_pton(socket.AF_INET, text)


async def _check_reverse(run: _Run, fqdn: str, address: str) -> CheckResult:
    ptr_name = reverse_name(address)
    ptr = await run.q(ptr_name, "PTR")
    names = sorted(set(ptr.values))
    evidence: dict[str, Any] = {"address": address, "ptr_name": ptr_name, "ptr": names,
                                "fqdn": fqdn}
    if not names:
        return _result("reverse", address, CheckStatus.FAIL,
                       f"{address} has no PTR record ({ptr.status})", **evidence)
    if fqdn in names:
        evidence["matched"] = fqdn
        return _result("reverse", address, CheckStatus.PASS,
                       f"PTR of {address} is {fqdn}", **evidence)
    a, aaaa = await _addresses(run, fqdn)  # memoised: the forward check asked already
    canonical = (a if len(a.chain) >= len(aaaa.chain) else aaaa).canonical_name
    evidence["canonical_name"] = canonical
    if canonical in names:
        evidence["matched"] = canonical
        return _result("reverse", address, CheckStatus.PASS,
                       f"PTR of {address} is {canonical}, the canonical name of {fqdn}",
                       **evidence)
    return _result("reverse", address, CheckStatus.FAIL,
                   f"PTR of {address} is {', '.join(names)}, not {fqdn}"
                   + (f" or {canonical}" if canonical != fqdn else ""), **evidence)


# --- SPF (RFC 7208) ---------------------------------------------------------------------


class _SpfError(Exception):
    def __init__(self, result: str, message: str):
        super().__init__(message)
        self.result = result  # "permerror" or "temperror"


class _Unknowable(Exception):
    """A macro needs the client IP or sender, which a structural walk does not have."""


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_MODIFIER = re.compile(r"([a-z][a-z0-9_.-]*)=(.*)", re.I)
_MECHANISM = re.compile(r"([+\-~?]?)([a-z][a-z0-9_.-]*)(.*)", re.I)
_CIDR_SUFFIX = re.compile(r"(?:/(\d+))?(?://(\d+))?$")
_MACRO = re.compile(r"%(?:%|_|-|\{([a-zA-Z])(\d*)(r?)([.\-+,/_=]*)\})", re.I)


@functools.lru_cache(maxsize=4096)
def _parse_record(record: str) -> tuple[tuple[tuple[str, str, str, int, int], ...],
                                        str | None]:
    """Split a record into directives; any syntax error is a permerror (RFC 7208 4.6).

    Memoised by the text alone: the relay's include record, and records written from one
    template, are the same for many sender domains of a batch. The result is immutable,
    so sharing it is safe; errors are not cached (:func:`_parse_spf` names the domain).
    """
    mechanisms, modifiers = [], {}
    for term in record.split()[1:]:
        mod = _MODIFIER.fullmatch(term)
        if mod:
            name = mod.group(1).lower()
            if name in modifiers and name in ("redirect", "exp"):
                raise _SpfError("permerror", f"{name}= appears twice")
            modifiers[name] = mod.group(2)
            continue
        mech = _MECHANISM.fullmatch(term)
        if not mech or mech.group(2).lower() not in _MECHANISMS:
            raise _SpfError("permerror", f"unknown term {term!r}")
        qualifier, name, rest = mech.group(1) or "+", mech.group(2).lower(), mech.group(3)
        cidr4, cidr6 = 32, 128
        if name in ("a", "mx"):
            suffix = _CIDR_SUFFIX.search(rest)
            assert suffix is not None  # the pattern can match the empty end
            rest = rest[: suffix.start()]
            cidr4 = int(suffix.group(1)) if suffix.group(1) else 32
            cidr6 = int(suffix.group(2)) if suffix.group(2) else 128
            if cidr4 > 32 or cidr6 > 128:
                raise _SpfError("permerror", f"bad prefix length in {term!r}")
        if rest and not rest.startswith(":") or rest == ":":
            raise _SpfError("permerror", f"bad term {term!r}")
        arg = rest[1:]
        if name == "all" and arg or name in ("include", "exists", "ip4", "ip6") and not arg:
            raise _SpfError("permerror", f"bad term {term!r}")
        if name in ("ip4", "ip6"):
            try:
                net = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise _SpfError("permerror", f"bad network in {term!r}") from None
            if net.version != int(name[2]) or "/" in arg and not arg.split("/")[1].isdigit():
                raise _SpfError("permerror", f"bad network in {term!r}")
        mechanisms.append((qualifier, name, arg, cidr4, cidr6))
    return tuple(mechanisms), modifiers.get("redirect") if "all" not in {
        m[1] for m in mechanisms} else None


def _parse_spf(record: str, domain: str) -> tuple[tuple[tuple[str, str, str, int, int], ...],
                                                  str | None]:
    """:func:`_parse_record`, its errors naming ``domain``."""
    try:
        return _parse_record(record)
    except _SpfError as exc:
        raise _SpfError(exc.result, f"{domain}: {exc}") from None


@dataclass
class _Spf:
    """State of one ``check_host()`` evaluation; ``ip=None`` walks the record structure."""

    run: _Run
    sender_domain: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    lookups: int = 0
    voids: int = 0
    records: dict[str, str] = field(default_factory=dict)
    includes: list[tuple[str, bool]] = field(default_factory=list)  # (target, all "+")

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > SPF_LOOKUP_LIMIT:
            raise _SpfError("permerror",
                            f"more than {SPF_LOOKUP_LIMIT} DNS-querying terms (RFC 7208 4.6.4)")

    async def q(self, name: str, rdtype: str, *, void_counts: bool = True) -> DnsAnswer:
        try:
            answer = await self.run.q(name, rdtype)
        except TransientDnsError as exc:
            raise _SpfError("temperror", str(exc)) from exc
        if void_counts and not answer.found:
            self.voids += 1
            if self.voids > SPF_VOID_LIMIT:
                raise _SpfError("permerror", f"more than {SPF_VOID_LIMIT} void look-ups")
        return answer

    def expand(self, spec: str, domain: str) -> str:
        """Macro expansion (RFC 7208 section 7), for the letters an evaluation can know."""
        if "%" not in spec:
            return spec

        def one(m: re.Match[str]) -> str:
            text = m.group(0)
            if text in ("%%", "%_", "%-"):
                return {"%%": "%", "%_": " ", "%-": "%20"}[text]
            letter, digits, reverse, delims = m.group(1).lower(), m.group(2), m.group(3), m.group(4)
            if letter in "ivpcrt" and self.ip is None:
                raise _Unknowable(letter)
            value = {
                "s": f"postmaster@{self.sender_domain}", "l": "postmaster",
                "o": self.sender_domain, "d": domain, "h": self.sender_domain,
                "v": "in-addr" if self.ip and self.ip.version == 4 else "ip6",
                "p": "unknown",
                "i": (str(self.ip) if self.ip and self.ip.version == 4
                      else ".".join(self.ip.exploded.replace(":", "")) if self.ip else ""),
            }.get(letter)
            if value is None:
                raise _SpfError("permerror", f"unsupported macro {text!r}")
            parts = re.split("[" + re.escape(delims or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                if int(digits) == 0:
                    raise _SpfError("permerror", f"bad macro {text!r}")
                parts = parts[-int(digits):]
            return ".".join(parts)

        if re.sub(_MACRO, "", spec).count("%"):
            raise _SpfError("permerror", f"bad macro in {spec!r}")
        return _MACRO.sub(one, spec)

    def target(self, spec: str | None, domain: str) -> str:
        if not spec:
            return domain
        try:
            return _dns_name(self.expand(spec, domain), "SPF domain")
        except ValueError as exc:
            raise _SpfError("permerror", str(exc)) from None

    async def record(self, domain: str) -> str | None:
        answer = await self.q(domain, "TXT", void_counts=False)
        found = [v for v in answer.values if v.lower() == "v=spf1" or v.lower()[:7] == "v=spf1 "]
        if len(found) > 1:
            raise _SpfError("permerror", f"{domain} has {len(found)} SPF records")
        if found:
            self.records[domain] = found[0]
        return found[0] if found else None

    async def check_host(self, domain: str, positive: bool = True) -> str:
        record = await self.record(domain)
        if record is None:
            return "none"
        mechanisms, redirect = _parse_spf(record, domain)
        for qualifier, name, arg, cidr4, cidr6 in mechanisms:
            if await self.matches(name, arg, cidr4, cidr6, domain, positive and qualifier == "+"):
                return _QUALIFIERS[qualifier]
        if redirect is not None:
            self.count()
            try:
                target = self.target(redirect, domain)
            except _Unknowable:
                return "neutral"
            self.includes.append((target, positive))
            result = await self.check_host(target, positive)
            if result == "none":
                raise _SpfError("permerror", f"redirect={target} has no SPF record")
            return result
        return "neutral"

    async def matches(self, name: str, arg: str, cidr4: int, cidr6: int, domain: str,
                      positive: bool) -> bool:
        ip = self.ip
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            return ip is not None and ip in ipaddress.ip_network(arg, strict=False)
        self.count()  # include, a, mx, ptr, exists: each one DNS-querying term
        try:
            target = self.target(arg, domain)
        except _Unknowable:
            return False
        if name == "include":
            self.includes.append((target, positive))
            result = await self.check_host(target, positive)
            if result == "none":
                raise _SpfError("permerror", f"include:{target} has no SPF record")
            return result == "pass"
        if ip is None:  # structural walk: the remaining terms depend on the client IP
            return False
        rdtype = "A" if ip.version == 4 else "AAAA"
        prefix = cidr4 if ip.version == 4 else cidr6
        if name == "exists":
            return (await self.q(target, "A")).found
        if name == "a":
            hosts = [target]
        elif name == "mx":
            mx = await self.q(target, "MX")
            if len(mx.values) > 10:
                raise _SpfError("permerror", f"{target} has more than 10 MX records")
            hosts = [v.split()[1] for v in mx.values if v.split()[1:] not in ([], [""])]
        else:  # ptr (deprecated, RFC 7208 5.5): validated names under the target
            ptr = await self.q(reverse_name(str(ip)), "PTR")
            hosts = [n for n in ptr.values[:10] if n == target or n.endswith("." + target)]
            prefix = 32 if ip.version == 4 else 128
        for host in hosts:
            answer = await self.q(host, rdtype, void_counts=name == "a")
            if any(ip in ipaddress.ip_network(f"{v}/{prefix}", strict=False)
                   for v in answer.values):
                return True
        return False


async def _check_spf(run: _Run, domain: str) -> CheckResult:
    include = run.config.spf_include
    relay = run.config.relay_addresses
    walk = _Spf(run, domain, None)
    evidence: dict[str, Any] = {"domain": domain, "spf_include": include,
                                "relay_addresses": list(relay)}
    try:
        walk_result = await walk.check_host(domain)
    except _SpfError as exc:
        evidence.update(records=walk.records, lookups=walk.lookups, result=exc.result)
        status = CheckStatus.ERROR if exc.result == "temperror" else CheckStatus.FAIL
        return _result("sender_spf", domain, status, f"SPF {exc.result}: {exc}", **evidence)
    evidence.update(record=walk.records.get(domain), records=walk.records,
                    lookups=walk.lookups, lookup_limit=SPF_LOOKUP_LIMIT)
    if walk_result == "none":
        return _result("sender_spf", domain, CheckStatus.FAIL, f"{domain} has no SPF record",
                       **evidence)
    included = bool(include) and (include, True) in walk.includes
    evidence["include_found"] = included
    if included:
        return _result("sender_spf", domain, CheckStatus.PASS,
                       f"SPF of {domain} includes {include} "
                       f"({walk.lookups} of {SPF_LOOKUP_LIMIT} look-ups)", **evidence)
    results: dict[str, str] = {}
    for address in relay:
        spf = _Spf(run, domain, ipaddress.ip_address(address))
        try:
            results[address] = await spf.check_host(domain)
        except _SpfError as exc:
            results[address] = f"{exc.result}: {exc}"
    evidence["relay_results"] = results
    if any(r.startswith("temperror") for r in results.values()):
        return _result("sender_spf", domain, CheckStatus.ERROR,
                       "SPF temperror while evaluating the relay addresses", **evidence)
    if relay and all(r == "pass" for r in results.values()):
        return _result("sender_spf", domain, CheckStatus.PASS,
                       f"SPF of {domain} passes every relay address", **evidence)
    wanted = " or ".join(filter(None, [f"include:{include}" if include else "",
                                       "a pass for every relay address" if relay else ""]))
    detail = f"SPF of {domain} does not authorise the relay (needs {wanted or 'a relay setting'})"
    bad = ", ".join(f"{a}: {r}" for a, r in results.items() if r != "pass")
    return _result("sender_spf", domain, CheckStatus.FAIL, detail + (f"; {bad}" if bad else ""),
                   **evidence)


# --- DMARC and DKIM ---------------------------------------------------------------------


def _tags(record: str) -> dict[str, str]:
    tags = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            tags.setdefault(key.strip().lower(), value.strip())
    return tags


async def _dmarc_at(run: _Run, domain: str) -> tuple[str, DnsAnswer, list[str]]:
    name = f"_dmarc.{domain}"
    answer = await run.q(name, "TXT")
    return name, answer, [v for v in answer.values if re.match(r"v\s*=\s*DMARC1\s*(;|$)", v, re.I)]


async def _check_dmarc(run: _Run, domain: str) -> CheckResult:
    org = organisational_domain(domain)
    evidence: dict[str, Any] = {"domain": domain, "organisational_domain": org}
    name, answer, records = await _dmarc_at(run, domain)
    evidence["queried"] = {name: list(answer.values)}
    found_at = domain
    if not records and org and org != domain:  # RFC 7489 6.6.3: fall back to the org domain
        name, answer, records = await _dmarc_at(run, org)
        evidence["queried"][name] = list(answer.values)
        found_at = org
    if not records:
        return _result("sender_dmarc", domain, CheckStatus.FAIL,
                       f"no DMARC record at _dmarc.{domain}"
                       + (f" or _dmarc.{org}" if org and org != domain else ""), **evidence)
    if len(records) > 1:
        return _result("sender_dmarc", domain, CheckStatus.FAIL,
                       f"{name} has {len(records)} DMARC records; receivers ignore them all",
                       **evidence)
    tags = _tags(records[0])
    policy = tags.get("p", "").lower()
    if found_at != domain and tags.get("sp"):
        policy = tags["sp"].lower()  # a subdomain falls under the org domain's sp=
    evidence.update(found_at=name, record=records[0], policy=policy)
    if policy not in ("none", "quarantine", "reject"):
        if "rua" not in tags:  # RFC 7489 6.6.3 step 6: no valid p and no rua: ignored
            return _result("sender_dmarc", domain, CheckStatus.FAIL,
                           f"{name} has no valid policy (p=)", **evidence)
        policy = "none"
    if policy == "none":
        return _result("sender_dmarc", domain, CheckStatus.WARN,
                       f"DMARC at {name} only monitors (p=none)", **evidence)
    return _result("sender_dmarc", domain, CheckStatus.PASS,
                   f"DMARC at {name} with p={policy}", **evidence)


async def _check_dkim(run: _Run, domain: str, selector: str) -> CheckResult:
    name = f"{selector}._domainkey.{domain}"
    answer = await run.q(name, "TXT")
    evidence: dict[str, Any] = {"name": name, "chain": list(answer.chain),
                                "records": list(answer.values)}
    keys = [v for v in answer.values if "p" in _tags(v)]
    if not keys:
        return _result("sender_dkim", domain, CheckStatus.FAIL,
                       f"no DKIM key at {name} ({answer.status})", **evidence)
    live = [v for v in keys if _tags(v)["p"]]
    if not live:
        return _result("sender_dkim", domain, CheckStatus.FAIL,
                       f"the DKIM key at {name} is revoked (empty p=)", **evidence)
    via = f" via CNAME to {answer.canonical_name}" if len(answer.chain) > 1 else ""
    return _result("sender_dkim", domain, CheckStatus.PASS, f"DKIM key at {name}{via}",
                   **evidence)


def _check_domain_policy(domain: str, config: CheckConfig) -> CheckResult:
    approved = config.approved_sender_domains
    match = next((d for d in approved if domain == d or domain.endswith("." + d)), None)
    if match:
        return _result("sender_domain_policy", domain, CheckStatus.PASS,
                       f"{domain} is an approved sender domain ({match})",
                       domain=domain, approved=list(approved), matched=match)
    return _result("sender_domain_policy", domain, CheckStatus.WARN,
                   f"{domain} is not an approved sender domain: From/Return-Path will be "
                   "rewritten", domain=domain, approved=list(approved))


# --- the engine -------------------------------------------------------------------------


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


async def _guard(check_id: str, subject: str,
                 coro: Awaitable[CheckResult]) -> CheckResult:
    try:
        return await coro
    except TransientDnsError as exc:
        return _result(check_id, subject, CheckStatus.ERROR, f"DNS did not answer: {exc}")
    except Exception as exc:  # a bug must not read as pass or fail
        log.exception("check %s(%s) crashed", check_id, subject)
        return _result(check_id, subject, CheckStatus.ERROR,
                       f"internal error: {type(exc).__name__}: {exc}")


_T = TypeVar("_T")


@dataclass
class _Plan:
    """A request's normalised inputs and the look-ups its checks begin with.

    ``addresses`` are those the address policy accepted: only they are compared with
    the FQDN and looked up in reverse. ``refused`` are well-formed addresses the policy
    refused: never looked up (their ``address_policy`` fail already decides the
    verdict, and a PTR query for an internal address tells outside resolvers about it).
    """

    fqdn: str | None
    domains: list[str]
    selector: str | None
    immediate: list[CheckResult]
    addresses: list[str]
    refused: list[str] = field(default_factory=list)

    def first_lookups(self) -> Iterator[tuple[str, str]]:
        """The look-ups each check makes first, whatever the answers: safe to ask early."""
        if self.fqdn is not None:
            yield self.fqdn, "A"
            yield self.fqdn, "AAAA"
            for address in self.addresses:
                yield reverse_name(address), "PTR"
        for domain in self.domains:
            yield domain, "TXT"
            yield f"_dmarc.{domain}", "TXT"
            if self.selector:
                yield f"{self.selector}._domainkey.{domain}", "TXT"


def _plan(spec: CheckSpec, config: CheckConfig) -> _Plan:
    fqdn = normalise_fqdn(spec.fqdn) if spec.fqdn is not None else None
    domains = _unique(normalise_domain(d) for d in spec.sender_domains)
    selector = _dns_name(spec.dkim_selector, "DKIM selector") if spec.dkim_selector else None
    raw = _unique(a.strip() for a in spec.addresses)
    immediate = [_check_address(a, config) for a in raw]
    # forward/reverse use only what the policy accepts; a refused address is not asked
    # about in DNS at all (a malformed one has no "version" and is neither)
    addresses = _unique(r.subject for r in immediate if r.status is CheckStatus.PASS)
    refused = _unique(r.subject for r in immediate
                      if r.status is not CheckStatus.PASS and "version" in r.evidence)
    return _Plan(fqdn, domains, selector, immediate, addresses, refused)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, _T], waiting: Any) -> Generator[Any, Any, _T]:
    """Go on, inside a task, with a coroutine whose first step ran eagerly.

    The step yielded ``waiting`` (what it awaits); the task waits for it in the
    coroutine's place, then hands the coroutine back its result, or its cancellation.
    """
    while True:
        try:
            yield waiting
        except BaseException as exc:  # cancelled while waiting: the coroutine decides
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        return (yield from coro)  # type: ignore[misc]


async def _run(plan: _Plan, config: CheckConfig, lookups: _Lookups) -> Report:
    """Every check of one plan, concurrently, each started eagerly.

    Why eagerly: a check whose answers are already in (shared within a batch, asked
    ahead by :func:`run_many`) finishes in its first step, without a task of its own;
    only a check that must wait becomes a task (12% of them on the 10k-entry recheck
    benchmark).
    """
    fqdn, domains, selector, addresses = plan.fqdn, plan.domains, plan.selector, plan.addresses
    refused = plan.refused
    run = _Run(config, lookups)
    jobs: list[tuple[str, str, Callable[[], Awaitable[CheckResult]]]] = []
    if fqdn is not None:
        jobs.append(("forward", fqdn, lambda: _check_forward(run, fqdn, addresses, refused)))
        jobs += [("reverse", a, functools.partial(_check_reverse, run, fqdn, a))
                 for a in addresses]
    jobs += [("sender_spf", d, functools.partial(_check_spf, run, d)) for d in domains]
    jobs += [("sender_dmarc", d, functools.partial(_check_dmarc, run, d)) for d in domains]
    if selector:
        jobs += [("sender_dkim", d, functools.partial(_check_dkim, run, d, selector))
                 for d in domains]
    results: list[CheckResult | None] = list(plan.immediate)
    waiting: list[tuple[int, str, str, asyncio.Task[CheckResult]]] = []
    for check_id, subject, make in jobs:
        coro = _guard(check_id, subject, make())
        try:
            step = coro.send(None)
        except StopIteration as done:
            results.append(done.value)
            continue
        waiting.append((len(results), check_id, subject,
                        asyncio.ensure_future(_resume(coro, step))))
        results.append(None)
    if waiting:
        await asyncio.wait([w[3] for w in waiting], timeout=max(
            0.0, run.deadline - asyncio.get_running_loop().time()) + DEADLINE_MARGIN)
    for index, check_id, subject, task in waiting:
        if task.done():
            results[index] = task.result()
        else:
            task.cancel()
            results[index] = _result(check_id, subject, CheckStatus.ERROR,
                                     f"no DNS answer within {config.lifetime:g}s")
    done = [r for r in results if r is not None]
    done += [_check_domain_policy(d, config) for d in domains]
    return Report(worst_status(r.status for r in done), tuple(done))


async def run_checks(spec: CheckSpec, config: CheckConfig,
                     resolver: dns.asyncresolver.Resolver) -> Report:
    """Run every check that applies to ``spec`` concurrently, within ``config.lifetime``.

    Raises ``ValueError`` if the FQDN, a sender domain or the DKIM selector is not a valid
    name (the forms and the CLI validate first); a malformed *address* is reported by
    ``address_policy`` instead, because refusing it is that check's job.
    """
    lookups = _Lookups(resolver)
    try:
        return await _run(_plan(spec, config), config, lookups)
    finally:
        lookups.close()


def batch_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed, else asyncio's: the loop for batches.

    Why: once answers are quick a batch is CPU-bound, and much of that CPU is the event
    loop's own bookkeeping (handles, timers, the UDP transport); uvloop does it in C
    (bench/recheck.py --event-loop asyncio shows the other figure). A single request does
    not gain: creating a uvloop loop costs more than the few look-ups save, so
    :func:`run_sync` uses asyncio's loop unless told otherwise.
    """
    try:
        import uvloop
    except ImportError:  # e.g. Windows, where uvloop does not exist
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Suspend the cyclic garbage collector for one bounded run.

    Why: a batch keeps thousands of futures, answers and result dicts alive until it ends,
    so the collector's generational passes keep re-walking them while finding almost no
    garbage; on the recheck benchmark they took 40% of the client's CPU. A run is bounded
    (a batch, a deadline), so what cycles it makes wait only until it ends, when the
    collector is restored as it was. Nested pauses leave it off until the outermost ends
    (the recheck pauses it over a whole batch: checks *and* the writes that record them,
    so the first collection after a batch does not re-walk every report still alive).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_sync(coro: Coroutine[Any, Any, _T], *,
             loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> _T:
    """Run one engine coroutine to completion on a fresh loop, the collector paused.

    For synchronous callers (Celery tasks, the CLI, the recheck): must not run inside an
    event loop. ``loop_factory`` defaults to asyncio's loop.
    """
    with gc_paused(), asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def run_checks_sync(spec: CheckSpec, config: CheckConfig,
                    nameservers: Sequence[str]) -> Report:
    """Blocking wrapper for Celery tasks and the CLI (must not run inside an event loop)."""
    resolver = make_resolver(nameservers, config.lifetime)
    return run_sync(run_checks(spec, config, resolver))


def _all_done(futures: list[asyncio.Future[Any]], timeout: float) -> asyncio.Future[None]:
    """A future that ends when all of ``futures`` have, or after ``timeout``.

    Cheaper than ``asyncio.wait`` (no sets, no callbacks to remove), and it never
    cancels or consumes the futures, which other checks share.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    count = len(futures)

    def one_done(_future: object) -> None:
        nonlocal count
        count -= 1
        if count == 0 and not waiter.done():
            waiter.set_result(None)

    for future in futures:
        future.add_done_callback(one_done)
    timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(None))
    waiter.add_done_callback(lambda _w: timer.cancel())
    return waiter


async def run_many(specs: Sequence[CheckSpec], config: CheckConfig,
                   resolver: dns.asyncresolver.Resolver, concurrency: int = 100) -> list[Report]:
    """Check many requests (periodic rechecks, the benchmark), sharing look-ups.

    ``concurrency`` bounds the requests in flight; each still gets its own deadline from
    when it starts. The first look-ups of the next ``concurrency`` requests are asked
    ahead, so that most checks find their answers in and finish without waiting (see
    :func:`_run`); a look-up asked ahead ends before the deadline of its request. Look-ups
    are memoised for the whole batch, so memory grows with the batch: chunk very large
    batches (tens of thousands) into several calls.
    """
    lookups = _Lookups(resolver)
    loop = asyncio.get_running_loop()
    reports: list[Report | None] = [None] * len(specs)
    plans: list[_Plan | None] = [None] * len(specs)
    window = max(1, concurrency)
    asked: list[list[asyncio.Future[DnsAnswer]]] = [[] for _ in specs]
    pending = iter(range(len(specs)))

    def ask_ahead(index: int) -> None:
        if index >= len(specs):
            return
        try:
            plan = plans[index] = _plan(specs[index], config)
        except ValueError:
            return  # raised again, in order, when its turn comes
        deadline = loop.time() + config.lifetime
        asked[index] = [lookups.get(name, rdtype, deadline)
                        for name, rdtype in plan.first_lookups()]

    async def worker() -> None:
        # ``concurrency`` workers drain one iterator: no task or semaphore wait per request
        for index in pending:
            ask_ahead(index + window)
            unanswered = [f for f in asked[index] if not f.done()]
            if unanswered:  # each ends within the lifetime; the margin is a safety net
                await _all_done(unanswered, config.lifetime + DEADLINE_MARGIN)
            plan = plans[index] or _plan(specs[index], config)
            plans[index] = None
            asked[index] = []
            reports[index] = await _run(plan, config, lookups)

    try:
        for index in range(min(window, len(specs))):
            ask_ahead(index)
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(specs))))))
    finally:
        lookups.close()
    return reports  # type: ignore[return-value]  # every slot is filled once gather returns


def run_many_sync(specs: Sequence[CheckSpec], config: CheckConfig,
                  resolver: dns.asyncresolver.Resolver, *, concurrency: int = 100,
                  loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
                  ) -> list[Report]:
    """:func:`run_many` for synchronous callers (the recheck, a shard, the benchmark).

    Runs on :func:`batch_event_loop` unless ``loop_factory`` says otherwise.
    """
    return run_sync(run_many(specs, config, resolver, concurrency=concurrency),
                    loop_factory=loop_factory or batch_event_loop)


def _run_shard(args: tuple[list[CheckSpec], CheckConfig, list[str], int]) -> list[Report]:
    specs, config, nameservers, concurrency = args
    # a fresh resolver per shard: its cache could never hit, the run's memo shares answers
    resolver = make_resolver(nameservers, config.lifetime, cache=False)
    return run_many_sync(specs, config, resolver, concurrency=concurrency)


def run_many_sharded(specs: Sequence[CheckSpec], config: CheckConfig,
                     nameservers: Sequence[str], *, processes: int = 2,
                     concurrency: int = 100, pool: Any = None) -> list[Report]:
    """``run_many`` split over ``processes`` (each its own event loop), reports in order.

    Why: the engine is CPU-bound once answers are quick (about 0.38 ms of CPU per request
    here), so one event loop uses one core. Inside a process that may not have children
    (a daemonic Celery prefork child) it runs in-process instead; there, more Celery
    worker processes are the way to use more cores. Pass ``pool`` (a
    ``ProcessPoolExecutor``) to reuse worker processes across batches.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    specs = list(specs)
    processes = max(1, min(processes, len(specs)))
    if processes == 1 or multiprocessing.current_process().daemon:
        return _run_shard((specs, config, list(nameservers), concurrency))
    size = -(-len(specs) // processes)
    chunks = [specs[i:i + size] for i in range(0, len(specs), size)]
    jobs = [(c, config, list(nameservers), concurrency) for c in chunks]
    if pool is not None:
        return [report for part in pool.map(_run_shard, jobs) for report in part]
    with ProcessPoolExecutor(max_workers=len(chunks)) as own_pool:
        return [report for part in own_pool.map(_run_shard, jobs) for report in part]
