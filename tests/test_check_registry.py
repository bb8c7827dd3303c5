"""The check registry: a new check is one family and one line, and the engine runs it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from requests_app.checks import Applies
from requests_app.checks import CheckConfig
from requests_app.checks import CheckFamily
from requests_app.checks import CheckResult
from requests_app.checks import CheckSpec
from requests_app.checks import CheckStatus
from requests_app.checks import family_ids
from requests_app.checks import register
from requests_app.checks import run_checks_sync
from requests_app.checks import run_many
from requests_app.checks import unregister
from requests_app.checks.engine import first_lookups
from requests_app.checks.engine import make_plan
from requests_app.checks.family import Plan
from requests_app.checks.lookups import Run
from requests_app.dns import make_resolver
from tests.support.dnsserver import DnsTestServer

ZONE = """
$ORIGIN example.test.
$TTL 300
@            IN SOA ns1 hostmaster 1 3600 600 86400 300
@            IN NS ns1
good         IN TXT "v=spf1 ip4:193.0.20.0/24 -all"
_dmarc.good  IN TXT "v=DMARC1; p=reject"
_probe.good  IN TXT "probe=ok"
bare         IN TXT "v=spf1 ip4:193.0.20.0/24 -all"
_dmarc.bare  IN TXT "v=DMARC1; p=reject"
"""

CONFIG = CheckConfig(relay_addresses=("193.0.20.1",), approved_sender_domains=("example.test",),
                     lifetime=2.0)


async def _check_probe(run: Run, _plan: Plan, domain: str) -> CheckResult:
    """A tiny DNS check: a TXT record at ``_probe.DOMAIN``."""
    answer = await run.q(f"_probe.{domain}", "TXT")
    status = CheckStatus.PASS if answer.values else CheckStatus.FAIL
    return CheckResult("probe", domain, status, f"_probe.{domain}: {list(answer.values)}",
                       {"records": list(answer.values)})


def _probe_first(_plan: Plan, domain: str) -> tuple[tuple[str, str], ...]:
    return ((f"_probe.{domain}", "TXT"),)


PROBE = CheckFamily("probe", Applies.SENDER_DOMAIN, check=_check_probe,
                    first_lookups=_probe_first)


def _judge_length(_config: CheckConfig, _plan: Plan, domain: str) -> CheckResult:
    long = len(domain) > 16
    return CheckResult("name_length", domain, CheckStatus.WARN if long else CheckStatus.PASS,
                       f"{len(domain)} characters", {})


@pytest.fixture
def server():
    with DnsTestServer(ZONE, record=True) as srv:
        yield srv


@pytest.fixture
def probe():
    register(PROBE)
    try:
        yield PROBE
    finally:
        unregister("probe")


def ids(report: Any) -> list[tuple[str, str]]:
    return [(c.id, c.subject) for c in report.checks]


def test_the_registered_checks_in_report_order():
    # the order is part of the report's contract: the address policy first (it decides
    # which addresses the DNS checks see), the domain policy last
    assert family_ids() == ["address_policy", "forward", "reverse", "sender_spf",
                            "sender_dmarc", "sender_dkim", "sender_domain_policy"]


def test_a_registered_family_runs_and_is_reported_until_unregistered(server):
    # given a tiny extra check registered for sender domains
    spec = CheckSpec(None, (), ("good.example.test", "bare.example.test"))
    register(PROBE)
    try:
        # when
        report = run_checks_sync(spec, CONFIG, [server.nameserver])
    finally:
        unregister("probe")
    # then it ran once per sender domain, after the families registered before it
    assert ids(report)[-2:] == [("probe", "good.example.test"), ("probe", "bare.example.test")]
    by_subject = {c.subject: c for c in report.checks if c.id == "probe"}
    assert by_subject["good.example.test"].status == "pass"
    assert by_subject["bare.example.test"].status == "fail"
    assert report.verdict == "fail"  # it counts in the verdict like any other check
    # and once unregistered, the engine no longer runs it
    again = run_checks_sync(spec, CONFIG, [server.nameserver])
    assert "probe" not in {c.id for c in again.checks}
    assert again.verdict == "pass"
    assert "probe" not in family_ids()


def test_a_batch_asks_a_registered_familys_first_look_ups_ahead(server, probe):
    # given a batch of requests of one sender domain
    specs = [CheckSpec(None, (), ("good.example.test",))] * 5
    resolver = make_resolver([server.nameserver], 2.0, cache=False)
    # when
    reports = asyncio.run(run_many(specs, CONFIG, resolver, concurrency=2))
    # then the probe's first look-up is among those asked ahead, it was asked once for
    # the batch, and every request got its result
    assert ("_probe.good.example.test", "TXT") in first_lookups(make_plan(specs[0], CONFIG))
    assert [r.checks[-1].id for r in reports] == ["probe"] * 5
    assert all(r.checks[-1].status == "pass" for r in reports)
    assert server.questions.count(("_probe.good.example.test.", "TXT")) == 1


def test_a_family_inserted_before_another_runs_in_that_place(server):
    # given a check without look-ups placed before the domain policy
    register(CheckFamily("name_length", Applies.SENDER_DOMAIN, judge=_judge_length),
             before="sender_domain_policy")
    try:
        report = run_checks_sync(CheckSpec(None, (), ("good.example.test",)), CONFIG,
                                 [server.nameserver])
    finally:
        unregister("name_length")
    # then its result sits where it was registered, and it made no DNS question
    assert [c.id for c in report.checks] == ["sender_spf", "sender_dmarc", "name_length",
                                             "sender_domain_policy"]
    assert report.checks[2].status == "warn"


def test_registering_an_id_twice_or_before_an_unknown_family_is_refused(probe):
    with pytest.raises(ValueError, match="already registered"):
        register(PROBE)
    with pytest.raises(ValueError, match="no check family 'nope'"):
        register(CheckFamily("other", Applies.FQDN, check=_check_probe), before="nope")
    with pytest.raises(KeyError):
        unregister("nope")
    assert family_ids().count("probe") == 1 and "other" not in family_ids()


def test_a_family_declares_exactly_one_way_to_check():
    with pytest.raises(ValueError, match="exactly one of check and judge"):
        CheckFamily("both", Applies.FQDN, check=_check_probe, judge=_judge_length)
    with pytest.raises(ValueError, match="exactly one of check and judge"):
        CheckFamily("neither", Applies.FQDN)
    with pytest.raises(ValueError, match="a judge makes no look-ups"):
        CheckFamily("judge", Applies.FQDN, judge=_judge_length, first_lookups=_probe_first)
