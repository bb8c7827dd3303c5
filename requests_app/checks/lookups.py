"""Look-ups shared within a run, and one request's run (its deadline) as checks see it.

Look-ups are memoised per run (per batch in ``engine.run_many``), so the forward and
reverse checks see the same A/AAAA answer, and names shared by many requests (the
relay's SPF include, an organisational ``_dmarc`` record) are asked once.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING
from typing import Any

from requests_app.dns import DnsAnswer
from requests_app.dns import DnsClient
from requests_app.dns import TransientDnsError

from .config import CheckConfig

if TYPE_CHECKING:
    import dns.asyncresolver

__all__ = ["Lookups", "Run"]


class Lookups:
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


class Run:
    """One request's checks: the shared look-ups and this request's deadline."""

    def __init__(self, config: CheckConfig, lookups: Lookups):
        self.config = config
        self.lookups = lookups
        self.deadline = asyncio.get_running_loop().time() + config.lifetime

    def start(self, name: str, rdtype: str) -> asyncio.Future[DnsAnswer]:
        """The look-up of (name, type), asked now if no check asked it yet.

        Start every look-up a step needs before awaiting the first, so they are in
        flight together; raises :class:`TransientDnsError` past the deadline.
        """
        return self.lookups.get(name, rdtype, self.deadline)

    async def q(self, name: str, rdtype: str) -> DnsAnswer:
        """The answer to (name, type), within this request's deadline."""
        # shield: a check cancelled at the deadline must not cancel a look-up others share.
        return await asyncio.shield(self.start(name, rdtype))

