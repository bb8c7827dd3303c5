"""The allowed forms of every value that travels from intake to the relay's maps.

One definition, no Django imports: the web forms, the API serializers and the admin
(through ``validators.py`` and ``model.clean()``), the DNS check engine (``checks/``)
and the Postfix renderer (``postfix.py``) all call these functions, so a value the
intake accepts is one the renderer writes, and a value the renderer refuses is one the
intake never stores. ``docs/relay-config.md`` ("Allowed forms") lists the rules and why.

Two kinds of function:

* ``normalise_*`` take what a person typed (spaces around it, upper case, a final dot,
  IDN) and return the one normal form that is stored, checked and rendered, or raise
  ``ValueError`` with a message fit for a form error.
* The renderer accepts a value only when it is already in that normal form (case folded
  where Postfix folds case anyway), so anything that slipped past intake (a migration, a
  raw SQL edit, a rule change) is refused, never "repaired" differently.

Why the alphabets are this narrow: the Postfix maps are line-oriented text tables split
on whitespace, with ``#`` starting a comment, and Postfix's address rewriting acts on
``%``, ``!`` and quotes in local parts. A value is refused rather than escaped, because
Postfix has no escaping in these tables.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import re
from collections.abc import Iterable
from typing import Any
from typing import NamedTuple

import idna

from requests_app.wording import Message

__all__ = [
    "RuleError",
    "ACCOUNT_RE",
    "SENDER_LOCAL_RE",
    "TEAM_RE",
    "AddressPolicy",
    "AddressRuling",
    "NotFullyQualified",
    "address_policy",
    "ascii_labels",
    "is_plain_fqdn",
    "judge_address",
    "listed",
    "listed_value",
    "normalise_address",
    "normalise_fqdn",
    "normalise_sender",
    "parse_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# --- host names and sender domains ------------------------------------------------------

HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A name that is already in normal form: lower-case host labels, at least two, no final
# dot, a top label that is not all digits (the rules of normalise_fqdn, in one pattern;
# the length of 253 is the caller's). A label is written as 1-63 of [a-z0-9-] with no
# hyphen at either end, the same set as HOST_LABEL_RE but matched possessively (no
# backtracking into a label): the renderer runs this once per server entry.
_PLAIN_LABEL = r"(?!-)[a-z0-9-]{1,63}+(?<!-)"
PLAIN_FQDN_RE = re.compile(rf"(?:{_PLAIN_LABEL}\.)+(?![0-9]+\Z){_PLAIN_LABEL}")
_IDN_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _(text: str) -> str:
    """Mark a message template for makemessages (gettext_noop): no Django here."""
    return text


class RuleError(ValueError):
    """A rule's refusal. ``str()`` is the English sentence (logs, the renderer's skipped
    entries, callers that only show text); ``template`` and ``params`` let a layer with
    translations say it in the reader's language (``validators.rule_message``)."""

    def __init__(self, template: str, **params: Any) -> None:
        super().__init__(template % params)
        self.template = template
        self.params = params


def ascii_labels(text: object, what: str, label_re: re.Pattern[str]) -> list[str]:
    """The labels of a name as ASCII (IDNA 2008, UTS #46 mapping), each checked.

    Raises ``ValueError`` naming ``what`` and the offending label.
    """
    if not isinstance(text, str):
        raise RuleError(_("%(what)s must be text, not %(type)s"), what=what,
                        type=type(text).__name__)
    name = text.strip().translate(_IDN_DOTS)
    name = name[:-1] if name.endswith(".") else name
    if not name:
        raise RuleError(_("%(what)s is empty"), what=what)
    if any(ch.isspace() for ch in name):
        # The first thing wrong with "not a host!!": a name never holds a space, whatever
        # its labels would be (said before any label rule, which would blame a "label").
        raise RuleError(_("%(what)s %(text)r contains a space: a name is one word, its "
                          "labels joined by dots"), what=what, text=text)
    labels = []
    for label in name.split("."):
        if not label:
            raise RuleError(_("%(what)s %(text)r has an empty label"), what=what, text=text)
        if "*" in label:
            raise RuleError(_("%(what)s %(text)r: wildcards are not allowed"), what=what,
                            text=text)
        try:
            if label.isascii():
                ascii_label = label.lower()
                if ascii_label.startswith("xn--"):
                    idna.decode(ascii_label)  # rejects broken punycode, disallowed code points
            else:
                # IDNA 2008 with the UTS #46 mapping (case, width), non-transitional: "ß"
                # stays "ß" (straße -> xn--strae-oqa), as registries and browsers have it.
                ascii_label = idna.encode(label, uts46=True, transitional=False).decode()
                if "." in ascii_label:  # a character that maps to a dot: not one label
                    raise UnicodeError(ascii_label)
        except UnicodeError:  # idna.IDNAError is one
            raise RuleError(_("%(what)s %(text)r: %(label)r is not a valid internationalised "
                              "label"), what=what, text=text, label=label) from None
        if len(ascii_label) > 63:
            raise RuleError(_("%(what)s %(text)r: label %(label)r is longer than 63"),
                            what=what, text=text, label=ascii_label)
        if not label_re.fullmatch(ascii_label):
            bad = _offending(ascii_label, label_re)
            if bad:
                raise RuleError(_("%(what)s %(text)r: label %(label)r may only hold letters, "
                                  "digits and inner hyphens (%(char)r is not allowed)"),
                                what=what, text=text, label=ascii_label, char=bad)
            raise RuleError(_("%(what)s %(text)r: label %(label)r may only hold letters, "
                              "digits and inner hyphens"), what=what, text=text,
                            label=ascii_label)
        labels.append(ascii_label)
    if len(".".join(labels)) > 253:
        raise RuleError(_("%(what)s %(text)r is longer than 253 characters"), what=what,
                        text=text)
    return labels


def _offending(label: str, label_re: re.Pattern[str]) -> str:
    """The first character no label may hold ("!"); "" when the label breaks the rule
    otherwise (a hyphen at either end)."""
    for ch in label:
        if not label_re.fullmatch(ch * 2 if ch != "-" else "a-a"):
            return ch
    return ""


class NotFullyQualified(ValueError):
    """A name of one label: the form validators give this error its own code."""


def is_plain_fqdn(value: object) -> bool:
    """Whether ``value`` is already a host name in normal form (one regex, no copies):
    the shortcut of :func:`normalise_fqdn` and of the renderer's check of stored names."""
    return (isinstance(value, str) and len(value) <= 253
            and PLAIN_FQDN_RE.fullmatch(value) is not None and "xn--" not in value)


def normalise_fqdn(value: str) -> str:
    """A fully qualified host name in the form DNS compares: punycode, lower case, no dot.

    Raises ``ValueError`` (and nothing else) with a message fit for a form error: at least
    two labels, no wildcard, no empty label, letters/digits/inner hyphens, labels of at
    most 63 and names of at most 253 characters, and a top label that is not numeric (so
    an IPv4 address is not taken for a name). Sender domains follow the same rule.
    """
    if is_plain_fqdn(value):
        return value  # already normalised, as every stored name is
    return normalise_fqdn_in_full(value)


def normalise_fqdn_in_full(value: str) -> str:
    """:func:`normalise_fqdn` without the shortcut for names already in normal form."""
    labels = ascii_labels(value, _("host name"), HOST_LABEL_RE)
    if len(labels) < 2:
        raise NotFullyQualified(f"host name {value!r} is not fully qualified (add its domain)")
    if labels[-1].isdigit():
        raise RuleError(_("host name %(text)r ends in a numeric label; is it an address?"),
                        text=value)
    return ".".join(labels)


# --- senders (keys of sender_login_maps) ------------------------------------------------

# Local parts are limited to what real service senders use: a-z 0-9 . _ + = -, at most
# 64, no leading, trailing or double dot. The RFC 5322 specials either start a comment
# in the maps (#), split a line (whitespace), trigger Postfix's address rewriting (%, !,
# quotes: "user%host" is routed to host) or are shell/lookup metacharacters ($, |, ').
SENDER_LOCAL_RE = re.compile(r"(?!\.)(?!.*\.\.)[a-z0-9._+=-]{1,64}(?<!\.)\Z")


def normalise_sender(value: str) -> str:
    """``user@domain`` or ``@domain`` (a whole domain) in normal form.

    Exactly one ``@``; the local part lower-cased and in :data:`SENDER_LOCAL_RE`; the
    domain by :func:`normalise_fqdn` (IDN to punycode). Raises ``ValueError`` saying which
    part broke which rule (the caller names the value).
    """
    if not isinstance(value, str):
        raise RuleError(_("sender must be text, not %(type)s"), type=type(value).__name__)
    text = value.strip()
    if len(text.split()) > 1:  # inside the value, on either side of the "@"
        raise RuleError(_("a sender may not contain whitespace"))
    if text.count("@") != 1:
        raise RuleError(_("a sender needs exactly one '@' (user@domain, or @domain for a "
                          "whole domain)"))
    local, _at, domain = text.partition("@")
    if local:
        if not local.isascii() or SENDER_LOCAL_RE.match(local.lower()) is None:
            raise RuleError(_(
                "the local part may only hold a-z, 0-9 and . _ + = - (at most 64, no "
                "leading, trailing or double dot)"))
        local = local.lower()
    try:
        domain = normalise_fqdn(domain)
    except ValueError as exc:
        raise RuleError(_("the domain is not valid: %(reason)s"), reason=exc) from None
    return f"{local}@{domain}"


# --- accounts and teams -----------------------------------------------------------------

# SASL login names as the directory has them: 3-64 characters, lower-case letters, digits,
# ".", "_", "-", starting with a letter. Written as the value of sender_login_maps, where
# a comma would separate logins and whitespace would end the line.
ACCOUNT_RE = re.compile(r"[a-z][a-z0-9._-]{1,62}[a-z0-9]\Z")
# Django's slug rule (SlugField, max_length 50): written into the maps' comment lines.
TEAM_RE = re.compile(r"[A-Za-z0-9_-]{1,50}\Z")


# --- host addresses ---------------------------------------------------------------------


def parse_address(value: str) -> IPAddress:
    """One host address as typed (surrounding spaces allowed); ``ValueError`` otherwise.

    Prefixes and zone indexes are refused with their own message: the relay allows single
    global hosts, and a scoped address means nothing outside one link.
    """
    if not isinstance(value, str):
        raise RuleError(_("address must be text, not %(type)s"), type=type(value).__name__)
    text = value.strip()
    if "/" in text:
        raise RuleError(_("%(text)r is a prefix; give single host addresses"), text=value)
    if "%" in text:
        raise RuleError(_("%(text)r has a zone index; give a global address"), text=value)
    try:  # one parser, not ip_address()'s IPv4 attempt and exception for every IPv6
        return ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text)
    except ValueError:
        raise RuleError(_("%(text)r is not an IPv4 or IPv6 address"), text=value) from None


def normalise_address(value: str) -> str:
    """One host address in canonical text (``2001:0DB8::0001`` -> ``2001:db8::1``).

    Raises ``ValueError`` with a form-ready message for prefixes, scoped addresses and
    anything that is not an IPv4 or IPv6 address. Syntax only: see :class:`AddressPolicy`.
    """
    return str(parse_address(value))


def _nets(*pairs: tuple[str, str]) -> dict[int, tuple[tuple[Any, str], ...]]:
    """Networks by IP version, in the order given (an address never matches the other)."""
    nets = [(ipaddress.ip_network(net), why) for net, why in pairs]
    return {v: tuple(n for n in nets if n[0].version == v) for v in (4, 6)}


# Refused whatever the settings say (order matters: wrappers before the reserved ::/8).
REFUSED_NETWORKS = _nets(
    ("::ffff:0:0/96", _("an IPv4-mapped IPv6 address")),
    ("::/96", _("an IPv4-compatible IPv6 address")),
    ("64:ff9b::/96", _("a NAT64 (IPv4-embedding) address")),
    ("64:ff9b:1::/48", _("a local-use NAT64 address")),
    ("2002::/16", _("a 6to4 address")),
    ("2001::/32", _("a Teredo address")),
    ("192.0.2.0/24", _("a documentation address (TEST-NET-1)")),
    ("198.51.100.0/24", _("a documentation address (TEST-NET-2)")),
    ("203.0.113.0/24", _("a documentation address (TEST-NET-3)")),
    ("2001:db8::/32", _("a documentation address")),
    ("3fff::/20", _("a documentation address")),
    ("100.64.0.0/10", _("a shared (carrier-grade NAT) address")),
    ("0.0.0.0/8", _("in 'this network' (0/8)")),
    ("192.0.0.0/24", _("an IETF protocol assignment")),
    ("198.18.0.0/15", _("a benchmarking address")),
    ("fec0::/10", _("a deprecated site-local address")),
    ("100::/64", _("a discard-only address")),
)
PRIVATE_NETWORKS = _nets(
    ("10.0.0.0/8", _("private (RFC 1918)")),
    ("172.16.0.0/12", _("private (RFC 1918)")),
    ("192.168.0.0/16", _("private (RFC 1918)")),
    ("fc00::/7", _("a unique local address (ULA)")),
)

Ranges = dict[int, tuple[list[int], list[int]]]


def _merged(nets: dict[int, list[Any]]) -> Ranges:
    """Networks by version as merged ``[first, last]`` integer ranges, for bisection."""
    ranges = {}
    for version, found in nets.items():
        merged: list[list[int]] = []
        for first, last in sorted((int(n.network_address), int(n.broadcast_address))
                                  for n in found):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        ranges[version] = ([m[0] for m in merged], [m[1] for m in merged])
    return ranges


def _listed_networks() -> dict[int, list[Any]]:
    """Every network any address rule reads, by IP version.

    The rules of :func:`judge_address` ask ``ipaddress`` (loopback, reserved,
    ``is_global`` ...) and scan the tables above: some 30 network tests per address, a
    tenth of a recheck's CPU. An address outside all of these networks passes every rule,
    so one binary search over their merged ranges (:data:`LISTED_RANGES`) settles the
    common case. The stdlib's networks are read from its own tables, so a Python that
    lists more special networks is still covered.
    """
    nets: dict[int, list[Any]] = {4: [], 6: []}
    for table in (REFUSED_NETWORKS, PRIVATE_NETWORKS):
        for version, rows in table.items():
            nets[version] += [net for net, _why in rows]
    for constants in (ipaddress._IPv4Constants, ipaddress._IPv6Constants):  # type: ignore[attr-defined]
        for value in vars(constants).values():
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    item = ipaddress.ip_network(item)
                if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                    nets[item.version].append(item)
    nets[6] += [ipaddress.ip_network("::/128"), ipaddress.ip_network("::1/128")]
    return nets


_LISTED_NETWORKS = _listed_networks()
LISTED_RANGES = _merged(_LISTED_NETWORKS)


def _in(ranges: tuple[list[int], list[int]], value: int) -> bool:
    firsts, lasts = ranges
    index = bisect.bisect_right(firsts, value) - 1
    return index >= 0 and value <= lasts[index]


def listed_value(version: int, value: int) -> bool:
    """:func:`listed` for an address given as its version and integer value."""
    return _in(LISTED_RANGES[version], value)


def listed(ip: IPAddress) -> bool:
    """Whether ``ip`` is in any network an address rule reads (see :func:`_listed_networks`)."""
    return _in(LISTED_RANGES[ip.version], int(ip))


class AddressRuling(NamedTuple):
    """What the address policy says about one address, in words fit for a person.

    ``detail`` is the English sentence (the renderer's left-out lines, logs, the stored
    check detail); ``message`` is the same sentence as a template and values, so a page,
    a mail or a form error can say it in the reader's language (docs/i18n.md).
    """

    allowed: bool
    detail: str
    network: str | None = None  # the lab, refused or private network that decided
    message: Message | None = None


def _ruling(allowed: bool, message: Message, network: str | None = None) -> AddressRuling:
    return AddressRuling(allowed, str(message), network, message)


def _global(subject: str) -> AddressRuling:
    return _ruling(True, Message(_("%(address)s is a global host address"), address=subject))


def judge_address(ip: IPAddress, allow_private: bool, subject: str | None = None
                  ) -> AddressRuling:
    """Every address rule, in order (lab networks are :class:`AddressPolicy`'s business).

    Refused whatever the settings: unspecified, loopback, multicast, link-local, the
    wrappers that embed IPv4 (mapped, compatible, NAT64, 6to4, Teredo), documentation,
    shared, benchmarking, reserved and other special-purpose addresses. RFC 1918 and ULA
    only with ``allow_private``. Everything else is a global host address.
    """
    subject = str(ip) if subject is None else subject
    why = None
    network = None
    if ip.is_unspecified:
        why = _("the unspecified address")
    elif ip.is_loopback:
        why = _("a loopback address")
    elif ip.is_multicast:
        why = _("a multicast address")
    elif ip.is_link_local:
        why = _("a link-local address")
    matched = (next(((net, w) for net, w in REFUSED_NETWORKS[ip.version] if ip in net), None)
               if why is None else None)
    if matched:
        why, network = matched[1], str(matched[0])
    if why is None and ip.is_reserved:
        why = _("a reserved address")
    if why:
        return _ruling(False, Message(
            _("%(address)s is %(why)s; only a global host address can be allowed"),
            address=subject, why=Message(why)), network)
    private = next(((net, w) for net, w in PRIVATE_NETWORKS[ip.version] if ip in net), None)
    if private:
        if allow_private:
            return _ruling(True, Message(
                _("%(address)s is %(why)s, allowed by RELAY_ALLOW_PRIVATE"),
                address=subject, why=Message(private[1])), str(private[0]))
        return _ruling(False, Message(
            _("%(address)s is %(why)s; private addresses are not allowed"),
            address=subject, why=Message(private[1])), str(private[0]))
    if not ip.is_global:
        return _ruling(False, Message(
            _("%(address)s is a special-purpose address, not globally routable"),
            address=subject))
    return _global(subject)


class AddressPolicy:
    """The address policy with the relay's settings: lab networks and ``allow_private``.

    Anything inside a lab network (``RELAY_LAB_NETWORKS``) is accepted; otherwise
    :func:`judge_address` decides. :meth:`refusal` is the renderer's fast path: an
    address outside every listed and lab range is settled by one binary search.
    Immutable and picklable (the check engine ships it to worker processes).
    """

    __slots__ = ("allow_private", "coarse", "lab", "screen")

    def __init__(self, lab_networks: Iterable[str] = (), allow_private: bool = False) -> None:
        if isinstance(lab_networks, str):  # one setting value, not its characters
            lab_networks = [lab_networks]
        lab = []
        for text in lab_networks:
            if not isinstance(text, str):
                raise ValueError(f"lab network {text!r} is not text")
            if not text.strip():
                continue
            try:
                lab.append(ipaddress.ip_network(text.strip()))
            except ValueError as exc:
                raise ValueError(f"lab network {text!r}: {exc}") from None
        self.lab: tuple[IPNetwork, ...] = tuple(lab)
        self.allow_private = bool(allow_private)
        # Listed and lab ranges together, merged: outside them an address is a plain
        # global one, which one binary search settles (the renderer inlines it).
        self.screen: Ranges = _merged(
            {v: _LISTED_NETWORKS[v] + [n for n in lab if n.version == v] for v in (4, 6)}
        ) if lab else LISTED_RANGES
        # A coarser screen for the renderer: by the first 8 (IPv4) or 16 (IPv6) bits, 1
        # where any screened range touches that block. Most global addresses sit in a
        # block no range touches, and one index into these bytes settles them.
        self.coarse: dict[int, bytes] = {
            version: _blocks(self.screen[version], bits, total)
            for version, bits, total in ((4, 8, 32), (6, 16, 128))
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (AddressPolicy, (tuple(str(n) for n in self.lab), self.allow_private))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, AddressPolicy) and self.lab == other.lab
                and self.allow_private == other.allow_private)

    def __hash__(self) -> int:
        return hash((self.lab, self.allow_private))

    def __repr__(self) -> str:
        lab = tuple(str(n) for n in self.lab)
        return f"AddressPolicy(lab_networks={lab!r}, allow_private={self.allow_private!r})"

    def lab_network(self, ip: IPAddress) -> IPNetwork | None:
        """The first lab network holding ``ip``, if any."""
        for net in self.lab:
            if ip.version == net.version and ip in net:
                return net
        return None

    def rule(self, ip: IPAddress, subject: str | None = None) -> AddressRuling:
        """The policy's ruling on ``ip``: lab networks first, then :func:`judge_address`."""
        subject = str(ip) if subject is None else subject
        net = self.lab_network(ip) if self.lab else None
        if net is not None:
            return _ruling(True, Message(
                _("inside lab network %(network)s (RELAY_LAB_NETWORKS)"), network=str(net)),
                str(net))
        if not listed(ip):
            return _global(subject)
        return judge_address(ip, self.allow_private, subject)

    def refusal(self, version: int, value: int) -> str | None:
        """Why the address (version, integer value) is refused, or None if it is allowed."""
        if not _in(self.screen[version], value):
            return None
        ip = ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
        ruling = self.rule(ip)
        return None if ruling.allowed else ruling.detail


def _blocks(ranges: tuple[list[int], list[int]], bits: int, total: int) -> bytes:
    """A table of ``2**bits`` flags: 1 for each leading-``bits`` block a range touches."""
    table = bytearray(1 << bits)
    shift = total - bits
    for first, last in zip(*ranges, strict=True):
        table[first >> shift:(last >> shift) + 1] = b"\1" * ((last >> shift) - (first >> shift) + 1)
    return bytes(table)


@functools.lru_cache(maxsize=16)
def address_policy(lab_networks: tuple[str, ...] = (), allow_private: bool = False
                   ) -> AddressPolicy:
    """The :class:`AddressPolicy` for these settings, built once per distinct value."""
    return AddressPolicy(tuple(lab_networks), allow_private)
