"""The relay back-end interface: what the app gives a back-end and what it gets back.

``relay.py`` (versions, history, the sweep's staleness question) talks only to this
interface; ``postfix.py`` is its one implementation. A back-end turns the entries of
the active requests into artefacts (named files plus a manifest, see
``artifacts_io.py``), says which request put each line of its maps there (the history
of every version, line by line), and answers whether a set of files still serves an
entry that has left. A second MTA, or another map type of the same MTA, is then one
module that implements :class:`RelayBackend` and one line in :data:`BACKENDS`.

Which back-end runs is the ``RELAY_BACKEND`` setting (default ``postfix``); the map type
is ``RELAY_MAP_TYPE`` (default ``cidr``), which each back-end checks itself, so a type
it does not implement is refused with a clear error instead of being half-served.

No Django imports: the renderer is tested and benchmarked without a database.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from . import rules

__all__ = (
    "BACKENDS",
    "AccountEntry",
    "Artifacts",
    "RelayBackend",
    "RelaySettings",
    "ServerEntry",
    "load_backend",
)


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
