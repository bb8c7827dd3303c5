"""The relay back-end interface: what the app gives a back-end and what it gets back.

``relay.py`` (versions, history, the sweep's staleness question) talks only to this
interface; ``postfix.py`` is its one implementation. A back-end turns the entries of
the active requests into artefacts (named files plus a manifest, see
``artifacts_io.py``), says which request put each line of its maps there (the history
of every version, line by line), and answers whether a set of files still serves an
entry that has left. A second MTA, or another map type of the same MTA, is then one
module that implements :class:`RelayBackend` and one line in :data:`BACKENDS`.

It also says which enforcement settings are usable (:func:`enforcement_problems`): the
renderer and the start-up system check ask the same function, so a value one refuses
the other refuses too.

Which back-end runs is the ``RELAY_BACKEND`` setting (default ``postfix``); the map type
is ``RELAY_MAP_TYPE`` (default ``cidr``), which each back-end checks itself, so a type
it does not implement is refused with a clear error instead of being half-served.

No Django imports: the renderer is tested and benchmarked without a database.
"""

from __future__ import annotations

import functools
import importlib
import re
import socket
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from . import rules
from .sender_policy import MODES

__all__ = (
    "BACKENDS",
    "MAX_DAILY_VOLUME",
    "MAX_PER_SECOND",
    "SETTING_NAMES",
    "AccountEntry",
    "Artifacts",
    "RelayBackend",
    "RelaySettings",
    "ServerEntry",
    "enforcement_problems",
    "load_backend",
    "parse_host_port",
)

#: The largest daily volume anyone can ask for (the intake's ceiling in the forms and the
#: API): a quota above it is a typo or a corrupted row, never a decision.
MAX_DAILY_VOLUME = 100_000_000
#: The largest per-second rate a setting may give; a relay does not accept more than this
#: from one client anyway, so a larger figure means the setting is wrong.
MAX_PER_SECOND = 10_000


@dataclass(frozen=True, slots=True)
class ServerEntry:
    """An active server-allowlisting request, as an address-access map needs it."""

    request_id: int
    fqdn: str
    team: str
    addresses: tuple[str, ...]
    # What the relay lets it send as (``user@domain`` or ``@domain``; the sender policy
    # also requires an approved domain) and its sending quota: sandboxed until an
    # approver grants production, which gets ``daily_volume`` messages per 24 h.
    senders: tuple[str, ...] = ()
    production: bool = False
    daily_volume: int = 0


@dataclass(frozen=True, slots=True)
class AccountEntry:
    """An active functional-account request; senders are ``user@domain`` or ``@domain``."""

    request_id: int
    account: str
    team: str
    senders: tuple[str, ...]
    production: bool = False  # sandboxed until an approver grants production
    daily_volume: int = 0  # the production quota, messages per 24 h


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What the relay-side configuration needs to know about the relay it is installed on.

    ``map_directory`` is where config management installs the maps on the relay
    (an absolute path or one under ``$config_directory``); ``sasl_type``/``sasl_path``
    point the MTA at the SASL server that checks the directory credentials.
    ``lab_networks`` and ``allow_private`` are ``RELAY_LAB_NETWORKS`` and
    ``RELAY_ALLOW_PRIVATE``: the address map is rendered with the same address policy
    the forms and the checks apply, so an address they refuse is refused there too.
    """

    relay_host: str
    submission_port: int = 587
    smtps_port: int = 465
    map_directory: str = "$config_directory/relaydesk"
    sasl_type: str = "dovecot"
    sasl_path: str = "private/auth"
    lab_networks: tuple[str, ...] = ()
    allow_private: bool = False
    # Sender policy (``RELAY_SENDER_MODE``): what the relay does with a server's sender
    # that is not declared by its entry or not on an approved domain: ``rewrite`` (SRS
    # under ``rewrite_domain``; empty means ``srs.<relay_host>``) or ``reject`` (553).
    sender_mode: str = "rewrite"
    rewrite_domain: str = ""
    approved_sender_domains: tuple[str, ...] = ()
    # TLS policy (``RELAY_REQUIRE_TLS``): allowlisted clients must STARTTLS too.
    require_tls: bool = False
    # Quotas: sandbox messages per 24 h and per second; production per second (the
    # production daily quota is each entry's approved volume).
    sandbox_daily: int = 200
    sandbox_per_second: int = 1
    production_per_second: int = 14
    # Relay-local services the generated main.cf/master.cf point at.
    policy_service: str = "127.0.0.1:10040"
    srs_forward: str = "127.0.0.1:10001"
    srs_reverse: str = "127.0.0.1:10002"
    reinject_port: int = 10026
    # The public SMTP service: port and address master.cf listens on ("" = all).
    smtp_port: int = 25
    listen_address: str = ""

    @property
    def address_policy(self) -> rules.AddressPolicy:
        """The address policy of these settings; ``ValueError`` for a malformed lab network."""
        return rules.address_policy(tuple(self.lab_networks), bool(self.allow_private))


#: Each enforcement field of :class:`RelaySettings` and the Django setting it comes from,
#: so a message can name what the operator has to fix.
SETTING_NAMES: dict[str, str] = {
    "sender_mode": "RELAY_SENDER_MODE",
    "rewrite_domain": "RELAY_REWRITE_DOMAIN",
    "approved_sender_domains": "RELAY_APPROVED_SENDER_DOMAINS",
    "require_tls": "RELAY_REQUIRE_TLS",
    "sandbox_daily": "RELAY_SANDBOX_DAILY_LIMIT",
    "sandbox_per_second": "RELAY_SANDBOX_PER_SECOND",
    "production_per_second": "RELAY_PRODUCTION_PER_SECOND",
    "policy_service": "RELAY_POLICY_SERVICE",
    "srs_forward": "RELAY_SRS_FORWARD",
    "srs_reverse": "RELAY_SRS_REVERSE",
    "reinject_port": "RELAY_REINJECT_PORT",
    "smtp_port": "smtp_port",
    "listen_address": "listen_address",
}

_PORT_RE = re.compile(r"[1-9][0-9]{0,4}\Z")


def _port_ok(value: object) -> bool:
    return type(value) is int and 0 < value < 65536


def parse_host_port(value: object) -> tuple[str, int]:
    """Split ``host:port`` as Postfix writes a service address; ``ValueError`` otherwise.

    The host is an IPv4 address, an IPv6 address in brackets (``[::1]:10040``, Postfix's
    own syntax) or a host name; the port a decimal 1-65535. The strings end up in
    ``main.cf`` and ``master.cf`` verbatim, where a space, a comma or a second colon
    would change what Postfix connects to, so nothing else passes.
    """
    if not isinstance(value, str) or not value.isascii():
        raise ValueError("not host:port")
    host, sep, port = value.rpartition(":")
    if not sep or not _PORT_RE.match(port) or int(port) > 65535:
        raise ValueError("not host:port with a port 1-65535")
    try:
        if host.startswith("[") and host.endswith("]"):
            socket.inet_pton(socket.AF_INET6, host[1:-1])
        elif host and host.replace(".", "").isdigit():
            socket.inet_pton(socket.AF_INET, host)
        elif not _host_name_ok(host):
            raise OSError
    except OSError:
        raise ValueError(f"host {host!r} is not an IPv4 address, [IPv6 address] or "
                         "host name") from None
    return host, int(port)


def _host_name_ok(value: str) -> bool:
    """A host name in normal form; one label (``localhost``) is allowed for a service."""
    labels = value.split(".")
    return (0 < len(value) <= 253
            and all(rules.HOST_LABEL_RE.fullmatch(label) for label in labels))


def _fqdn_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value.isascii():
        return "not a host name"
    try:
        normal = rules.normalise_fqdn(value)
    except ValueError as exc:
        return str(exc)
    return None if normal == value else f"not in normal form (would be {normal!r})"


def enforcement_problems(settings: RelaySettings) -> list[tuple[str, str]]:
    """``(field, why)`` for every enforcement setting of ``settings`` that is unusable.

    One list for the renderer (which raises on the first, naming the setting) and the
    start-up system check (which reports them all), so both refuse the same values.
    """
    problems: list[tuple[str, str]] = []
    if settings.sender_mode not in MODES:
        problems.append(("sender_mode", f"must be one of {', '.join(MODES)}"))
    if settings.rewrite_domain != "":
        why = _fqdn_problem(settings.rewrite_domain)
        if why is not None:
            problems.append(("rewrite_domain", why))
    domains = settings.approved_sender_domains
    if not isinstance(domains, tuple | list):
        problems.append(("approved_sender_domains", "not a list of domains"))
    else:
        for domain in domains:
            why = _fqdn_problem(domain)
            if why is not None:
                problems.append(("approved_sender_domains", f"{domain!r}: {why}"))
    if type(settings.require_tls) is not bool:
        problems.append(("require_tls", "must be true or false"))
    limits = (("sandbox_daily", MAX_DAILY_VOLUME), ("sandbox_per_second", MAX_PER_SECOND),
              ("production_per_second", MAX_PER_SECOND))
    for name, ceiling in limits:
        value = getattr(settings, name)
        if type(value) is not int or not 0 < value <= ceiling:
            problems.append((name, f"must be a whole number from 1 to {ceiling}"))
    for name in ("policy_service", "srs_forward", "srs_reverse"):
        try:
            parse_host_port(getattr(settings, name))
        except ValueError as exc:
            problems.append((name, str(exc)))
    for name in ("reinject_port", "smtp_port"):
        if not _port_ok(getattr(settings, name)):
            problems.append((name, "must be a port 1-65535"))
    ports = [settings.smtp_port, settings.submission_port, settings.smtps_port,
             settings.reinject_port]
    if all(_port_ok(p) for p in ports) and len(set(ports)) != len(ports):
        problems.append(("reinject_port" if ports.count(settings.reinject_port) > 1
                         else "smtp_port",
                         "the SMTP, submission, smtps and re-injection ports must differ"))
    address = settings.listen_address
    if address != "":
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in str(address) else socket.AF_INET,
                             address)
        except (OSError, TypeError):
            problems.append(("listen_address", "must be empty (all) or one IP address"))
    return problems


class Artifacts(dict[str, bytes]):
    """The files by name, plus ``skipped``: the entries left out, with the reason.

    A ``dict`` so that every caller that only wants the files (the atomic write, the
    export) keeps working unchanged; ``skipped`` is ``[{"request": id, "reason": text}]``
    in input order, the reason being the ``ValueError`` text that names the entry.
    """

    __slots__ = ("skipped",)

    def __init__(self, files: Mapping[str, bytes], skipped: list[dict[str, object]]) -> None:
        super().__init__(files)
        self.skipped = skipped


class RelayBackend(Protocol):
    """One relay implementation (an MTA with one map type).

    ``artifact_names`` are every file a build produces, the manifest included (the pull
    endpoint serves exactly these); ``attributed_names`` are the files whose lines
    belong to requests (recorded line by line in each version's history).
    """

    name: str
    map_type: str
    artifact_names: tuple[str, ...]
    attributed_names: tuple[str, ...]

    def build(
        self,
        servers: Iterable[ServerEntry],
        accounts: Iterable[AccountEntry],
        settings: RelaySettings,
        *,
        version: int,
        generated_at: datetime,
    ) -> Artifacts:
        """Render every artefact; an entry it cannot render is left out and listed."""
        ...

    def attribute(
        self, name: str, text: str, login_owner: Mapping[str, int]
    ) -> dict[str, int | None]:
        """Map each effective line of artefact ``name`` to the request that put it there.

        ``login_owner`` maps a login to the request that holds it, for lines that name a
        login rather than a request; ``None`` where no request can be named.
        """
        ...

    def stale(
        self,
        files: Mapping[str, str],
        left: Iterable[ServerEntry | AccountEntry],
        live: Iterable[AccountEntry],
    ) -> bool:
        """Whether ``files`` (the ``attributed_names``) still serve an entry of ``left``.

        ``live`` are the in-config account entries with the same logins as the left
        ones: what they put into the files is served legitimately.
        """
        ...


class QuotaBackend(Protocol):
    """A back-end whose files carry each entry's sending quota (Postfix's policy file).

    Optional: the sweep asks it after a production grant whether the newest version
    applies the granted quota, so a lost rebuild message is made good; a back-end
    without quotas has nothing to answer.
    """

    def serves_quota(
        self, files: Mapping[str, str], entries: Iterable[ServerEntry | AccountEntry]
    ) -> bool:
        """Whether ``files`` apply each entry's current tier and daily volume."""
        ...


#: Back-end name -> the module that implements it; the module's ``backend(map_type)``
#: returns the :class:`RelayBackend`. Imported by name so this interface imports no
#: implementation (the implementations import it).
BACKENDS: dict[str, str] = {
    "postfix": "requests_app.postfix",
}


@functools.cache
def load_backend(name: str, map_type: str) -> RelayBackend:
    """The back-end called ``name`` for ``map_type``; ``ValueError`` naming the setting.

    Cached: a back-end is stateless, and the relay build asks for it on every call.
    """
    if name not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"RELAY_BACKEND {name!r} is not a known relay back-end "
                         f"(known: {known})")
    module = importlib.import_module(BACKENDS[name])
    backend: RelayBackend = module.backend(map_type)
    return backend
