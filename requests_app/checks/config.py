"""The engine's inputs: the relay's settings (:class:`CheckConfig`) and one request."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

from requests_app import rules

from .names import dns_name
from .names import normalise_address
from .names import normalise_domain

__all__ = ["CheckConfig", "CheckSpec"]


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
        put("spf_include", dns_name(include, "RELAY_SPF_INCLUDE") if include else None)
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
    """What to check for one request; ``fqdn=None`` is a functional account.

    ``report_to`` is not checked: it is the request's contact, where a proposed DMARC
    record sends its reports (``fixes.py``).
    """

    fqdn: str | None
    addresses: tuple[str, ...] = ()
    sender_domains: tuple[str, ...] = ()
    dkim_selector: str | None = None
    report_to: str | None = None

