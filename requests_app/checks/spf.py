"""``sender_spf``: RFC 7208 ``check_host()`` as receivers run it for the relay's addresses.

SPF is evaluated as ``check_host()`` does for the relay's own addresses, in order and
with every limit (10 DNS-querying terms, 2 void look-ups, 10 MX names, macro rules),
because a record that breaks before it reaches the relay's include is broken for
receivers even when it looks right (docs/dns-checks.md, "SPF evaluation").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from requests_app.dns import DnsAnswer
from requests_app.dns import TransientDnsError
from requests_app.dns import reverse_name

from .family import Applies
from .family import CheckFamily
from .family import Plan
from .fixes import spf_candidates
from .lookups import Run
from .names import dns_name
from .results import CheckResult
from .results import CheckStatus
from .results import Message
from .results import _
from .results import message_dict
from .results import result as _result  # here "result" is an SPF outcome

__all__ = ["SENDER_SPF", "SPF_LOOKUP_LIMIT", "SPF_VOID_LIMIT"]

SPF_LOOKUP_LIMIT = 10  # RFC 7208 section 4.6.4
SPF_VOID_LIMIT = 2  # RFC 7208 section 4.6.4, "void lookups"


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
        return dns_name(spec, "SPF domain")
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

    run: Run
    sender_domain: str
    ip: _Address | None
    lookups: int = 0
    voids: int = 0
    records: dict[str, str] = field(default_factory=dict)
    via_include: bool = False  # a pass that the relay's include decided
    networks: list[Any] = field(default_factory=list)  # the walk's "+" ip4/ip6 networks
    # records to evaluate instead of the published ones (a proposed fix, by name)
    override: dict[str, str] | None = None

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
            return dns_name(name, "SPF domain")
        except ValueError as exc:
            raise _SpfError("permerror", str(exc)) from None

    async def record(self, domain: str) -> str | None:
        if self.override and domain in self.override:
            self.records[domain] = self.override[domain]
            return self.override[domain]
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


async def _relay_sample(run: Run, include: str) -> list[tuple[str, _Address]]:
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


async def _check_spf(run: Run, _plan: Plan, domain: str) -> CheckResult:
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
                           Message(_("SPF %(result)s in the relay's include:%(include)s: "
                                     "%(error)s"), result=exc.result, include=include,
                                   error=str(exc)),
                           **evidence, result=exc.result)
        source = f"include:{include}"
        if not sample:
            return _result("sender_spf", domain, CheckStatus.FAIL,
                           Message(_("include:%(include)s lists no ip4/ip6 network to "
                                     "evaluate SPF with: set RELAY_ADDRESSES"),
                                   include=include), **evidence)
    else:
        return _result("sender_spf", domain, CheckStatus.FAIL,
                       Message(_("neither RELAY_SPF_INCLUDE nor RELAY_ADDRESSES is set: no "
                                 "relay address to evaluate SPF for")), **evidence)
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
        if relay:
            text = _("SPF of %(domain)s passes every relay address (%(listed)s) "
                     "(%(lookups)s of %(limit)s look-ups)")
        else:
            text = _("SPF of %(domain)s includes %(include)s: pass for %(listed)s "
                     "(%(lookups)s of %(limit)s look-ups)")
        return _result("sender_spf", domain, CheckStatus.PASS,
                       Message(text, domain=domain, include=include, listed=listed,
                               lookups=lookups, limit=SPF_LOOKUP_LIMIT), **evidence)
    failed = _spf_failure(domain, include, bool(relay), listed, results, errors, evidence)
    if failed.status is CheckStatus.FAIL:
        evidence["proposal"] = await _propose(run, domain, sample, bool(relay))
    return failed


# Addresses no sender record lists (RFC 5737, RFC 3849 documentation ranges): a
# proposed record evaluated for them runs every term, which is what its look-up count
# must stay within for the senders it does not list.
_UNLISTED = (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1"))


async def _propose(run: Run, domain: str, sample: list[tuple[str, _Address]],
                   by_address: bool) -> dict[str, Any]:
    """The one SPF record that authorises the relay, evaluated as receivers will.

    Each candidate of :func:`fixes.spf_candidates` (the relay's terms merged into the
    published record) is evaluated, without being published, for the relay's addresses
    (it must pass, through the relay's include when only that is set) and for addresses
    it does not list (every term then runs: the look-ups must stay within 10 and no term
    may break). The first that passes is the proposal; else the reason none can be.
    """
    config = run.config
    try:
        answer = await run.q(domain, "TXT")
    except TransientDnsError as exc:
        return _problem(Message(_("%(domain)s TXT did not answer: %(error)s"), domain=domain,
                                error=str(exc)))
    published = [v for v in answer.values if v[:7].lower() in ("v=spf1", "v=spf1 ")]
    candidates = spf_candidates(published, config.spf_include, config.relay_addresses)
    if not candidates:
        return _problem(Message(_("the published records cannot be merged into one (each "
                                  "has a redirect= and none an all term): merge them by "
                                  "hand")))
    problem: Message | None = None
    for candidate in candidates:
        override = {domain: candidate.record}
        try:
            passed = True
            for _text, ip in sample:
                spf = _Spf(run, domain, ip, override=override)
                if (await spf.check_host(domain) != "pass"
                        or not by_address and not spf.via_include):
                    passed = False
                    break
            if not passed:
                problem = Message(_("even with %(record)r an earlier term decides for the "
                                    "relay's addresses"), record=candidate.record)
                continue
            lookups = 0
            for ip in _UNLISTED:
                spf = _Spf(run, domain, ip, override=override)
                await spf.check_host(domain)
                lookups = max(lookups, spf.lookups)
        except _SpfError as exc:
            if exc.result == "temperror":
                return _problem(Message(_("could not evaluate the merged record: %(error)s"),
                                        error=str(exc)))
            advice = (Message(_("fix the published record first"))
                      if "RFC 7208 4.6.4" not in str(exc)
                      else Message(_("a record within %(limit)s look-ups needs fewer "
                                     "include/a/mx/ptr/exists terms (list your own servers as "
                                     "ip4:/ip6: networks, drop includes of services you no "
                                     "longer use), then add the relay's"),
                                   limit=SPF_LOOKUP_LIMIT))
            return _problem(Message(_("the merged record %(record)r would break for receivers "
                                      "(%(error)s): %(advice)s"), record=candidate.record,
                                    error=str(exc), advice=advice))
        return {"record": candidate.record, "placement": candidate.placement,
                "notes": [str(n) for n in candidate.notes],
                "note_messages": [message_dict(n) for n in candidate.notes],
                "replaces": published, "lookups": lookups}
    return _problem(problem) if problem else {"problem": ""}


def _problem(problem: Message) -> dict[str, Any]:
    """A proposal that could not be made: the English reason and its message (translated
    where it is shown, like a result's ``detail``)."""
    return {"problem": str(problem), "problem_message": problem.as_dict()}


def _spf_failure(domain: str, include: str | None, by_address: bool, listed: str,
                 results: dict[str, str], errors: dict[str, _SpfError],
                 evidence: dict[str, Any]) -> CheckResult:
    """The result of an SPF evaluation that did not pass for every relay address.

    A definite answer (permerror, no record, a result other than pass) outranks a
    temperror: however the unanswered look-up would have ended, the relay is not
    authorised.
    """
    def result(status: CheckStatus, detail: Message, outcome: str) -> CheckResult:
        evidence["result"], evidence["message"] = outcome, detail.as_dict()
        # the evidence itself, not a copy: the caller adds the proposal to it afterwards
        return CheckResult("sender_spf", domain, status, str(detail), evidence)

    for address, exc in errors.items():
        if exc.result == "permerror":
            return result(CheckStatus.FAIL, Message(_("SPF permerror for %(address)s: "
                                                      "%(error)s"), address=address,
                                                    error=str(exc)), "permerror")
    if "none" in results.values():
        return result(CheckStatus.FAIL, Message(_("%(domain)s has no SPF record (RFC 7208 "
                                                  "4.5)"), domain=domain), "none")
    bad = {a: r for a, r in results.items() if r != "pass" and a not in errors}
    if not bad and errors:
        address, exc = next(iter(errors.items()))
        return result(CheckStatus.ERROR, Message(_("SPF temperror for %(address)s: "
                                                   "%(error)s"), address=address,
                                                 error=str(exc)), "temperror")
    if not bad:
        return result(CheckStatus.FAIL,
                      Message(_("SPF of %(domain)s passes %(listed)s by its own terms, not "
                                "include:%(include)s; the relay's other addresses are listed "
                                "only there (needs include:%(include)s)"), domain=domain,
                              listed=listed, include=include), "pass")
    outcomes = ", ".join(f"{a}: {r}" for a, r in bad.items())  # SPF results: technical terms
    if include and not by_address:
        text = Message(_("SPF of %(domain)s does not authorise the relay (needs "
                         "include:%(include)s); %(outcomes)s"), domain=domain,
                       include=include, outcomes=outcomes)
    else:
        text = Message(_("SPF of %(domain)s does not authorise the relay (needs a pass for "
                         "every relay address); %(outcomes)s"), domain=domain,
                       outcomes=outcomes)
    return result(CheckStatus.FAIL, text, next(iter(bad.values())))


def _spf_first(_plan: Plan, domain: str) -> Iterable[tuple[str, str]]:
    return ((domain, "TXT"),)


SENDER_SPF = CheckFamily("sender_spf", Applies.SENDER_DOMAIN, check=_check_spf,
                         first_lookups=_spf_first)
