"""The DNS and address checks of a relay request (no Django imports).

Ids, statuses and the report shape are a contract (docs/dns-checks.md). Why the engine
looks the way it does:

* Every check of a request runs concurrently, and the whole run shares one deadline
  (``CheckConfig.lifetime``): look-ups made late in a run (an SPF include five levels
  down) get only the time that is left, and a safety net marks anything still running
  at the deadline as ``error``. An unanswered query is never a pass or a fail.
* Look-ups are memoised per run (per batch in :func:`run_many`), so the forward and
  reverse checks see the same A/AAAA answer, and names shared by many requests (the
  relay's SPF include, an organisational ``_dmarc`` record) are asked once.
* SPF is evaluated as RFC 7208 ``check_host()`` does for the relay's own addresses, in
  order and with every limit (10 DNS-querying terms, 2 void look-ups, 10 MX names,
  macro rules), because a record that breaks before it reaches the relay's include is
  broken for receivers even when it looks right.
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
import urllib.parse
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
        # what the batch derives from shared answers alone (the relay's SPF addresses)
        self.derived: dict[tuple[str, str], Any] = {}

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
    """A macro needs the client IP, which the walk of the relay's own include lacks."""


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_MODIFIER = re.compile(r"([a-z][a-z0-9_.-]*)=(.*)", re.I)
_MECHANISM = re.compile(r"([+\-~?]?)([a-z][a-z0-9_.-]*)(.*)", re.I)
_CIDR_SUFFIX = re.compile(r"(?:/(0|[1-9][0-9]*))?(?://(0|[1-9][0-9]*))?$")
# RFC 7208 7.1: macro-expand; a "%" that starts none of these is a syntax error
_MACRO = re.compile(r"%(?:%|_|-|\{([slodiphcrtv])([0-9]*)(r?)([.\-+,/_=]*)\})", re.I)
# RFC 7208 7.1: domain-end = ( "." toplabel [ "." ] ) / macro-expand
_DOMAIN_END = re.compile(r"(?:\.(?:[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9-]*[a-z0-9])\.?"
                         r"|%\{[^}]*\}|%[%_-])\Z", re.I)
_PREFIX = re.compile(r"0|[1-9][0-9]*")  # ip4-cidr-length, ip6-cidr-length: no leading 0
_EXP_ONLY = "crt"  # RFC 7208 7.2: macro letters allowed only in explanation text

# (qualifier, mechanism, argument, IPv4 prefix, IPv6 prefix, ip4/ip6 network or None)
_Term = tuple[str, str, str, int, int, Any]


def _check_macros(spec: str, term: str, *, domain_spec: bool) -> None:
    """Raise a permerror for a macro-string or domain-spec that breaks RFC 7208 7.1/7.2.

    Why at parse time: a syntax error anywhere in a record makes the whole record a
    permerror (RFC 7208 4.6), however early a term matches; ``%{c}``, ``%{r}`` and
    ``%{t}`` are syntax errors outside explanation text (RFC 7208 7.2).
    """
    if "%" in spec:
        if _MACRO.sub("", spec).count("%"):
            raise _SpfError("permerror", f"{term!r}: a '%' that starts no macro (RFC 7208 7.1)")
        for macro in _MACRO.finditer(spec):
            letter, digits = macro.group(1), macro.group(2)
            if domain_spec and letter and letter.lower() in _EXP_ONLY:
                raise _SpfError("permerror", f"{term!r}: the macro %{{{letter}}} is allowed "
                                "only in explanation text (RFC 7208 7.2)")
            if digits and int(digits) == 0:
                raise _SpfError("permerror", f"{term!r}: a macro keeps zero labels "
                                "(RFC 7208 7.3)")
    if domain_spec and not _DOMAIN_END.search(spec):
        raise _SpfError("permerror", f"{term!r}: the domain must end in a top-level label "
                        "that is not all digits, or in a macro (RFC 7208 7.1)")


@functools.lru_cache(maxsize=4096)
def _parse_record(record: str) -> tuple[tuple[_Term, ...], str | None]:
    """Split a record into terms; any syntax error is a permerror (RFC 7208 4.6).

    Memoised by the text alone: the relay's include record, and records written from one
    template, are the same for many sender domains of a batch. The result is immutable
    (ip4/ip6 networks are parsed here once), so sharing it is safe; errors are not
    cached (:func:`_parse_spf` names the domain).
    """
    mechanisms: list[_Term] = []
    modifiers: dict[str, str] = {}
    for term in record.split()[1:]:
        mod = _MODIFIER.fullmatch(term)
        if mod:
            name, value = mod.group(1).lower(), mod.group(2)
            known = name in ("redirect", "exp")
            if known and name in modifiers:
                raise _SpfError("permerror", f"{name}= appears twice (RFC 7208 6)")
            if known and not value:
                raise _SpfError("permerror", f"{name}= has no domain (RFC 7208 6)")
            # unknown modifiers are ignored, but must still be valid macro-strings
            _check_macros(value, term, domain_spec=known)
            modifiers[name] = value
            continue
        mech = _MECHANISM.fullmatch(term)
        if not mech or mech.group(2).lower() not in _MECHANISMS:
            raise _SpfError("permerror", f"unknown term {term!r} (RFC 7208 4.6.1)")
        qualifier, name, rest = mech.group(1) or "+", mech.group(2).lower(), mech.group(3)
        cidr4, cidr6 = 32, 128
        if name in ("a", "mx"):
            suffix = _CIDR_SUFFIX.search(rest)
            assert suffix is not None  # the pattern can match the empty end
            rest = rest[: suffix.start()]
            cidr4 = int(suffix.group(1)) if suffix.group(1) else 32
            cidr6 = int(suffix.group(2)) if suffix.group(2) else 128
            if cidr4 > 32 or cidr6 > 128:
                raise _SpfError("permerror", f"bad prefix length in {term!r} (RFC 7208 5.6)")
        if rest and not rest.startswith(":") or rest == ":":
            raise _SpfError("permerror", f"bad term {term!r} (RFC 7208 5)")
        arg = rest[1:]
        if name == "all" and arg or name in ("include", "exists", "ip4", "ip6") and not arg:
            raise _SpfError("permerror", f"bad term {term!r} (RFC 7208 5)")
        net = None
        if name in ("ip4", "ip6"):
            _address, slash, prefix = arg.partition("/")
            try:
                net = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise _SpfError("permerror", f"bad network in {term!r} (RFC 7208 5.6)") from None
            if net.version != int(name[2]) or slash and not _PREFIX.fullmatch(prefix):
                raise _SpfError("permerror", f"bad network in {term!r} (RFC 7208 5.6)")
        elif arg:
            _check_macros(arg, term, domain_spec=True)
        mechanisms.append((qualifier, name, arg, cidr4, cidr6, net))
    return tuple(mechanisms), modifiers.get("redirect") if "all" not in {
        m[1] for m in mechanisms} else None


def _parse_spf(record: str, domain: str) -> tuple[tuple[_Term, ...], str | None]:
    """:func:`_parse_record`, its errors naming ``domain``."""
    try:
        return _parse_record(record)
    except _SpfError as exc:
        raise _SpfError(exc.result, f"{domain}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _spf_name(spec: str) -> str:
    """A literal domain-spec as a look-up name (memoised: the same includes recur)."""
    try:
        return _dns_name(spec, "SPF domain")
    except ValueError as exc:
        raise _SpfError("permerror", str(exc)) from None


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _in_prefix(ip: _Address, text: str, prefix: int) -> bool:
    """Whether the address ``text`` (an A/AAAA answer) is in ``ip``'s /``prefix``."""
    other = ipaddress.ip_address(text)
    return (other.version == ip.version
            and (int(ip) ^ int(other)) >> (ip.max_prefixlen - prefix) == 0)


@dataclass
class _Spf:
    """One RFC 7208 ``check_host()`` evaluation for the client address ``ip``.

    ``ip=None`` only walks the relay's own include, collecting the networks it
    authorises (to find an address to evaluate with); sender records are always
    evaluated for an address, in order and with the limits, as a receiver does.
    """

    run: _Run
    sender_domain: str
    ip: _Address | None
    lookups: int = 0
    voids: int = 0
    records: dict[str, str] = field(default_factory=dict)
    via_include: bool = False  # a pass that the relay's include decided
    networks: list[Any] = field(default_factory=list)  # the walk's "+" ip4/ip6 networks

    def count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > SPF_LOOKUP_LIMIT:
            raise _SpfError("permerror", f"{term}: more than {SPF_LOOKUP_LIMIT} DNS-querying "
                            "terms (RFC 7208 4.6.4)")

    async def q(self, name: str, rdtype: str, *, void_counts: bool = True) -> DnsAnswer:
        try:
            future = self.run.start(name, rdtype)
            # an answer already in (shared in the batch) is read without a shield
            answer = future.result() if future.done() else await asyncio.shield(future)
        except TransientDnsError as exc:  # RFC 7208 4.4, 5.2: DNS errors are temperror
            raise _SpfError("temperror", str(exc)) from exc
        if void_counts and not answer.found:
            self.voids += 1
            if self.voids > SPF_VOID_LIMIT:
                raise _SpfError("permerror", f"{name} {rdtype} ({answer.status}): more than "
                                f"{SPF_VOID_LIMIT} void look-ups (RFC 7208 4.6.4)")
        return answer

    def expand(self, spec: str, domain: str) -> str:
        """Macro expansion (RFC 7208 7.3); the syntax was checked when parsing.

        The relay's envelope sender is not known, so ``<sender>`` is
        ``postmaster@<sender domain>`` (the RFC's rule for a sender without local part)
        and the HELO name is the sender domain; ``%{p}`` is "unknown" (RFC 7208 7.3
        allows it; the macro "SHOULD NOT be used").
        """

        def one(m: re.Match[str]) -> str:
            text = m.group(0)
            if text in ("%%", "%_", "%-"):
                return {"%%": "%", "%_": " ", "%-": "%20"}[text]
            letter, digits, reverse, delims = m.group(1), m.group(2), m.group(3), m.group(4)
            ip = self.ip
            if ip is None and letter.lower() in "ipv":
                raise _Unknowable(letter)
            value = {
                "s": f"postmaster@{self.sender_domain}", "l": "postmaster",
                "o": self.sender_domain, "d": domain, "h": self.sender_domain,
                "p": "unknown",
                "v": "in-addr" if ip and ip.version == 4 else "ip6",
                "i": (str(ip) if ip and ip.version == 4
                      else ".".join(ip.exploded.replace(":", "")) if ip else ""),
            }[letter.lower()]
            parts = re.split("[" + re.escape(delims or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                parts = parts[-int(digits):]
            joined = ".".join(parts)
            return urllib.parse.quote(joined, safe="~") if letter.isupper() else joined

        return _MACRO.sub(one, spec)

    def target(self, spec: str, domain: str) -> str:
        if not spec:
            return domain
        if "%" not in spec:
            return _spf_name(spec)
        name = self.expand(spec, domain).rstrip(".")
        while len(name) > 253 and "." in name:  # RFC 7208 7.3: drop labels from the left
            name = name.split(".", 1)[1]
        try:
            return _dns_name(name, "SPF domain")
        except ValueError as exc:
            raise _SpfError("permerror", str(exc)) from None

    async def record(self, domain: str) -> str | None:
        answer = await self.q(domain, "TXT", void_counts=False)
        # RFC 7208 4.5: "v=spf1" alone or followed by a space, in any case (ABNF strings)
        found = [v for v in answer.values if v[:7].lower() in ("v=spf1", "v=spf1 ")]
        if len(found) > 1:
            raise _SpfError("permerror", f"{domain} has {len(found)} SPF records (RFC 7208 4.5)")
        if found:
            self.records[domain] = found[0]
        return found[0] if found else None

    async def check_host(self, domain: str, positive: bool = True) -> str:
        """The result for ``domain``; permerror and temperror are raised as :class:`_SpfError`.

        ``positive``: every term on the way here has the "+" qualifier, so a match of the
        relay's include makes the top-level result "pass" (what ``via_include`` records).
        """
        record = await self.record(domain)
        if record is None:
            return "none"
        mechanisms, redirect = _parse_spf(record, domain)
        ip = self.ip
        for term in mechanisms:  # RFC 7208 4.6.2: in order, the first match decides
            qualifier, name, net = term[0], term[1], term[5]
            if name == "all":
                return _QUALIFIERS[qualifier]
            if net is not None:  # ip4, ip6: no look-up, so no coroutine either
                if ip is not None:
                    if ip in net:  # False for the other IP version
                        return _QUALIFIERS[qualifier]
                elif positive and qualifier == "+":
                    self.networks.append(net)
            elif await self.matches(term, domain, positive and qualifier == "+"):
                return _QUALIFIERS[qualifier]
        if redirect is not None:  # RFC 7208 6.1: only when no mechanism matched
            self.count(f"redirect={redirect}")
            try:
                target = self.target(redirect, domain)
            except _Unknowable:
                return "neutral"
            result = await self.check_host(target, positive)
            if result == "none":
                raise _SpfError("permerror", f"redirect={target} has no SPF record "
                                "(RFC 7208 6.1)")
            return result
        return "neutral"

    async def matches(self, term: _Term, domain: str, positive: bool) -> bool:
        """Whether a DNS-querying term (include, a, mx, ptr, exists) matches."""
        _qualifier, name, arg, cidr4, cidr6, _net = term
        ip = self.ip
        self.count(f"{name}:{arg}" if arg else name)  # include, a, mx, ptr, exists
        try:
            target = self.target(arg, domain)
        except _Unknowable:
            return False
        if name == "include":
            result = await self.check_host(target, positive)
            if result == "none":
                raise _SpfError("permerror", f"include:{target} has no SPF record "
                                "(RFC 7208 5.2)")
            if result != "pass":
                return False
            if positive and target == self.run.config.spf_include:
                self.via_include = True
            return True
        if ip is None:  # the include walk: these terms only match a known address
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
                raise _SpfError("permerror", f"{target} has {len(mx.values)} MX records, more "
                                "than 10 (RFC 7208 4.6.4)")
            hosts = [v.split()[1] for v in mx.values if v.split()[1:] not in ([], [""])]
        else:  # ptr (deprecated, RFC 7208 5.5): at most 10 names; DNS errors do not match
            try:
                ptr = await self.q(reverse_name(str(ip)), "PTR")
            except _SpfError as exc:
                if exc.result == "temperror":
                    return False
                raise
            hosts = [n for n in ptr.values[:10] if n == target or n.endswith("." + target)]
            prefix = ip.max_prefixlen
        for host in hosts:  # every address look-up in flight before the first is awaited
            with contextlib.suppress(TransientDnsError):
                self.run.start(host, rdtype)
        for host in hosts:
            try:
                answer = await self.q(host, rdtype, void_counts=name == "a")
            except _SpfError as exc:
                if name == "ptr" and exc.result == "temperror":
                    continue  # RFC 7208 5.5: a name whose look-up fails is skipped
                raise
            if any(_in_prefix(ip, v, prefix) for v in answer.values):
                return True
        return False


@functools.lru_cache(maxsize=256)
def _relay_address(text: str) -> _Address:
    """A configured relay address, parsed once (the same few for every check)."""
    return ipaddress.ip_address(text)


async def _relay_sample(run: _Run, include: str) -> list[tuple[str, _Address]]:
    """Addresses to evaluate sender records with when only the relay's include is set.

    The first network of each IP version that the include authorises ("+" ip4/ip6
    terms, through its own includes and redirect), in order; its first address stands
    for the relay. Raises :class:`_SpfError` when the include cannot be read. Worked
    out once per batch: it depends on shared answers alone.
    """
    derived = run.lookups.derived
    sample: list[tuple[str, _Address]] | None = derived.get(("relay_sample", include))
    if sample is not None:
        return sample
    walk = _Spf(run, include, None)
    if await walk.check_host(include) == "none":
        raise _SpfError("permerror", f"{include} has no SPF record")
    first: dict[int, Any] = {}
    for net in walk.networks:
        first.setdefault(net.version, net)
    sample = [(str(first[v].network_address), first[v].network_address)
              for v in (4, 6) if v in first]
    derived["relay_sample", include] = sample
    return sample


async def _check_spf(run: _Run, domain: str) -> CheckResult:
    """``sender_spf``: what a receiver's ``check_host()`` says when the relay sends.

    Evaluated for each of the relay's addresses (``RELAY_ADDRESSES``; else the first
    address of each IP version the relay's include authorises), with the sender domain's
    record read in order and with every limit, so a record that breaks before it reaches
    the relay (a void look-up too many, an 11th MX) fails as it does for receivers.
    Without ``RELAY_ADDRESSES`` a pass must also come from ``include:RELAY_SPF_INCLUDE``:
    the relay's other addresses are listed there, not in the sender's own terms.
    """
    config = run.config
    include, relay = config.spf_include, config.relay_addresses
    evidence: dict[str, Any] = {"domain": domain, "spf_include": include,
                                "relay_addresses": list(relay)}
    try:  # in flight while the include is read
        run.start(domain, "TXT")
    except TransientDnsError:
        pass  # no time left: the evaluation reports it
    if relay:
        sample, source = [(a, _relay_address(a)) for a in relay], "RELAY_ADDRESSES"
    elif include:
        try:
            sample = await _relay_sample(run, include)
        except _SpfError as exc:
            status = CheckStatus.ERROR if exc.result == "temperror" else CheckStatus.FAIL
            return _result("sender_spf", domain, status,
                           f"SPF {exc.result} in the relay's include:{include}: {exc}",
                           **evidence, result=exc.result)
        source = f"include:{include}"
        if not sample:
            return _result("sender_spf", domain, CheckStatus.FAIL,
                           f"include:{include} lists no ip4/ip6 network to evaluate SPF "
                           "with: set RELAY_ADDRESSES", **evidence)
    else:
        return _result("sender_spf", domain, CheckStatus.FAIL,
                       "neither RELAY_SPF_INCLUDE nor RELAY_ADDRESSES is set: no relay "
                       "address to evaluate SPF for", **evidence)
    results: dict[str, str] = {}
    errors: dict[str, _SpfError] = {}
    records: dict[str, str] | None = None
    lookups = voids = 0
    all_pass = via_include = True
    for address, ip in sample:
        spf = _Spf(run, domain, ip)
        try:
            result = await spf.check_host(domain)
        except _SpfError as exc:
            errors[address] = exc
            result = f"{exc.result}: {exc}"
        results[address] = result
        if records is None:
            records = spf.records
        else:
            for name, text in spf.records.items():
                records.setdefault(name, text)
        lookups = spf.lookups if spf.lookups > lookups else lookups
        voids = spf.voids if spf.voids > voids else voids
        if result != "pass":
            all_pass = via_include = False
        elif not spf.via_include:
            via_include = False
    records = records or {}
    evidence.update(evaluated_for=[text for text, _ip in sample], addresses_from=source,
                    record=records.get(domain), records=records, lookups=lookups,
                    lookup_limit=SPF_LOOKUP_LIMIT, void_lookups=voids,
                    void_limit=SPF_VOID_LIMIT, relay_results=results)
    if include:
        evidence["include_found"] = via_include
    listed = ", ".join(results)
    if all_pass and (relay or via_include):  # the common case first
        evidence["result"] = "pass"
        how = (f"passes every relay address ({listed})" if relay
               else f"includes {include}: pass for {listed}")
        return CheckResult("sender_spf", domain, CheckStatus.PASS,
                           f"SPF of {domain} {how} ({lookups} of {SPF_LOOKUP_LIMIT} look-ups)",
                           evidence)
    return _spf_failure(domain, include, bool(relay), listed, results, errors, evidence)


def _spf_failure(domain: str, include: str | None, by_address: bool, listed: str,
                 results: dict[str, str], errors: dict[str, _SpfError],
                 evidence: dict[str, Any]) -> CheckResult:
    """The result of an SPF evaluation that did not pass for every relay address.

    A definite answer (permerror, no record, a result other than pass) outranks a
    temperror: however the unanswered look-up would have ended, the relay is not
    authorised.
    """
    def result(status: CheckStatus, detail: str, outcome: str) -> CheckResult:
        evidence["result"] = outcome
        return CheckResult("sender_spf", domain, status, detail, evidence)

    for address, exc in errors.items():
        if exc.result == "permerror":
            return result(CheckStatus.FAIL, f"SPF permerror for {address}: {exc}", "permerror")
    if "none" in results.values():
        return result(CheckStatus.FAIL, f"{domain} has no SPF record (RFC 7208 4.5)", "none")
    bad = {a: r for a, r in results.items() if r != "pass" and a not in errors}
    if not bad and errors:
        address, exc = next(iter(errors.items()))
        return result(CheckStatus.ERROR, f"SPF temperror for {address}: {exc}", "temperror")
    if not bad:
        return result(CheckStatus.FAIL,
                      f"SPF of {domain} passes {listed} by its own terms, not "
                      f"include:{include}; the relay's other addresses are listed only "
                      f"there (needs include:{include})", "pass")
    wanted = (f"include:{include}" if include and not by_address
              else "a pass for every relay address")
    return result(CheckStatus.FAIL,
                  f"SPF of {domain} does not authorise the relay (needs {wanted}); "
                  + ", ".join(f"{a}: {r}" for a, r in bad.items()), next(iter(bad.values())))


# --- DMARC and DKIM ---------------------------------------------------------------------

_DMARC_POLICIES = ("none", "quarantine", "reject")
# RFC 7489 6.3/6.4: the first tag is v; its name is case-insensitive (an ABNF string), its
# value "MUST match precisely" DMARC1.
_DMARC1 = re.compile(r"v[ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)", re.I)
_DMARC1_EXACT = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
# RFC 7489 6.4: dmarc-uri = URI [ "!" size ]; "," and "!" inside a URI are %-encoded
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


async def _dmarc_at(run: _Run, domain: str) -> tuple[str, DnsAnswer, list[str]]:
    name = f"_dmarc.{domain}"
    answer = await run.q(name, "TXT")
    # RFC 7489 6.6.3 step 3: other TXT records (verification tokens ...) are discarded
    return name, answer, [v for v in answer.values if _DMARC1_EXACT.match(v)]


async def _check_dmarc(run: _Run, domain: str) -> CheckResult:
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
        why = (f"; {discarded[0]!r} is not one: the version must be exactly DMARC1 "
               "(RFC 7489 6.3)" if discarded else "")
        return _result("sender_dmarc", domain, CheckStatus.FAIL,
                       f"no DMARC record at _dmarc.{domain}"
                       + (f" or _dmarc.{org}" if org and org != domain else "") + why,
                       **evidence)
    if len(records) > 1:
        return _result("sender_dmarc", domain, CheckStatus.FAIL,
                       f"{name} has {len(records)} DMARC records; receivers ignore them all "
                       "(RFC 7489 6.6.3 step 5)", **evidence)
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
        what = " and ".join(f"{t}={v!r}" if v is not None else f"a missing {t}="
                            for t, v in invalid.items())
        if not uris:
            return _result("sender_dmarc", domain, CheckStatus.FAIL,
                           f"{name}: {what} is not a valid policy and rua= holds no valid "
                           "URI, so receivers apply no DMARC (RFC 7489 6.6.3 step 6)",
                           **evidence)
        evidence["policy"] = "none"
        return _result("sender_dmarc", domain, CheckStatus.WARN,
                       f"{name}: {what} is not a valid policy; receivers act as if p=none "
                       "(only monitor) because rua= holds a valid URI (RFC 7489 6.6.3 "
                       "step 6)", **evidence)
    tag = "sp" if found_at != domain and sp is not None else "p"  # a subdomain: the org's sp=
    policy = str(sp if tag == "sp" else p).lower()  # both valid, checked above
    evidence["policy"], evidence["pct"] = policy, 100
    pct_text = tags.get("pct")
    if pct_text is None:  # the common case: the policy applies to all failing mail
        if policy == "none":
            return CheckResult("sender_dmarc", domain, CheckStatus.WARN,
                               f"DMARC at {name} only monitors ({tag}=none)", evidence)
        return CheckResult("sender_dmarc", domain, CheckStatus.PASS,
                           f"DMARC at {name} with {tag}={policy}", evidence)
    return _dmarc_with_pct(domain, name, tag, policy, pct_text, evidence)


def _dmarc_with_pct(domain: str, name: str, tag: str, policy: str, pct_text: str,
                    evidence: dict[str, Any]) -> CheckResult:
    """A valid policy with a ``pct`` tag: say how much of the failing mail it covers.

    RFC 7489 6.6.4: mail outside the percentage gets the next policy down (reject ->
    quarantine -> none), so ``p=quarantine; pct=0`` quarantines nothing. An invalid
    ``pct`` is named and warned about: receivers differ in what they make of it.
    """
    notes: list[str] = []
    status = CheckStatus.PASS
    pct = 100
    if re.fullmatch(r"[0-9]{1,3}", pct_text) and int(pct_text) <= 100:
        pct = int(pct_text)
    else:
        evidence["invalid_tags"] = {"pct": pct_text}
        notes.append(f"pct={pct_text!r} is not an integer from 0 to 100 (RFC 7489 6.3)")
        status = CheckStatus.WARN
    evidence["pct"] = pct
    if pct < 100 and policy in _LOWER_POLICY:
        notes.append(f"{tag}={policy} applies to {pct}% of failing mail (pct={pct}); the "
                     f"rest gets {_LOWER_POLICY[policy]} (RFC 7489 6.6.4)")
    suffix = "".join(f"; {n}" for n in notes)
    if policy == "none":
        return CheckResult("sender_dmarc", domain, CheckStatus.WARN,
                           f"DMARC at {name} only monitors ({tag}=none){suffix}", evidence)
    if pct == 0 and policy == "quarantine":
        return CheckResult("sender_dmarc", domain, CheckStatus.WARN,
                           f"DMARC at {name} quarantines no mail{suffix}", evidence)
    return CheckResult("sender_dmarc", domain, status,
                       f"DMARC at {name} with {tag}={policy}{suffix}", evidence)


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
