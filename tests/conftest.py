"""Shared fixtures: users by role, a real DNS server on loopback, tool requirements."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests.factories import ApproverFactory
from tests.factories import AuditorFactory
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of
from tests.support.dnsserver import DnsTestServer

ZONES = Path(__file__).parent / "zones"

# Property tests judge correctness, not speed: a loaded CI machine must not fail them.
hypothesis_settings.register_profile(
    "relaydesk", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("relaydesk")
REQUIRE_TOOLS = os.environ.get("RELAYDESK_REQUIRE_TOOLS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    """Compile the translations (.po to .mo) before any page is rendered: the .mo files
    are build output, and ``pytest`` run directly (not through ``dev.py test``) must
    serve Bokmål and German too."""
    import dev  # deferred: the repository root's build script, stdlib only

    dev.compile_messages()


def require(condition: bool, reason: str) -> None:
    """Skip a test whose tool is missing when run by hand; fail it in CI."""
    if condition:
        return
    if REQUIRE_TOOLS:
        pytest.fail(f"required tool missing (RELAYDESK_REQUIRE_TOOLS=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsTestServer]:
    """One authoritative server for the session, serving ``tests/zones/default.zone``."""
    with DnsTestServer((ZONES / "default.zone").read_text()) as server:
        yield server


@pytest.fixture(autouse=True)
def _dns_settings(settings: object, dns_server: DnsTestServer) -> None:
    """Every DNS look-up of the app goes to the test server, never off the machine."""
    settings.DNS_NAMESERVERS = [dns_server.nameserver]
    settings.DNS_LIFETIME_SECONDS = 2.0
    settings.RELAY_SPF_INCLUDE = "_spf.example.org"
    settings.RELAY_APPROVED_SENDER_DOMAINS = ["example.org"]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Each test starts with an empty cache: rate-limit counters are keyed by user id,
    and ids repeat from test to test once their rows are rolled back."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def team():
    return TeamFactory(slug="payments", name="Payments")


@pytest.fixture
def requester(team):
    return member_of(team, username="alice")


@pytest.fixture
def approver():
    return ApproverFactory(username="bob")


@pytest.fixture
def second_approver():
    return ApproverFactory(username="carol")


@pytest.fixture
def auditor():
    return AuditorFactory(username="dora")


@pytest.fixture
def server_request(team, requester):
    return RelayRequestFactory(team=team, created_by=requester)
