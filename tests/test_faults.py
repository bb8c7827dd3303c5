"""Fault tests: take the broker, DNS or the worker away in the middle of real work.

Each test runs the production shape on loopback (tests/support/system.py): the web
(``runserver``), a Celery worker with embedded beat running the sweep every second, a
private Redis as the broker, the real DNS test server and a real SMTP server, all against
the database pytest-django created (SQLite, or PostgreSQL in CI's second pass). Users act
through the JSON API. After each fault the tests assert the same four things:

* **no loss**: every request that was accepted is saved and reaches its next state;
* **nothing twice**: each notification arrives exactly once (by Message-ID), each check
  attempt is recorded once;
* **revocations served**: the relay config served to the relays no longer has the entry;
* **nothing stuck**: no request is left in ``checking`` or ``provisioning``.

The figures in README's "Failure behaviour" table come from these tests.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState
from requests_app.relay import relay_config_rebuild
from tests.conftest import require
from tests.factories import RelayRequestFactory
from tests.support.dnsserver import DnsTestServer
from tests.support.smtp import SmtpTestServer
from tests.support.system import RelaydeskSystem
from tests.support.system import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

ZONE = (Path(__file__).parent / "zones" / "default.zone").read_text()
HOSTS = 6


def _faults_zone() -> str:
    """The default zone plus hosts h1..h6.example.org with forward-confirmed PTRs."""
    forward = "\n".join(f"h{i} IN A 81.2.69.{100 + i}" for i in range(1, HOSTS + 1))
    reverse = "\n".join(f"{100 + i} IN PTR h{i}.example.org." for i in range(1, HOSTS + 1))
    soa = "@ IN SOA ns.example.org. hostmaster.example.org. 1 3600 600 86400 300"
    return (f"{ZONE}\n$ORIGIN example.org.\n{forward}\n"
            f"$ORIGIN 69.2.81.in-addr.arpa.\n{soa}\n{reverse}\n")


def _server(team, requester, i: int, **kw: object) -> RelayRequest:
    return RelayRequestFactory(team=team, created_by=requester, fqdn=f"h{i}.example.org",
                               ipv4=[f"81.2.69.{100 + i}"], ipv6=[], **kw)


def _state(pk: int) -> str:
    return RelayRequest.objects.get(pk=pk).state


def _mail_once(smtp: SmtpTestServer, requests: list[int]) -> dict[str, int]:
    """Every outbox row of these requests is sent, and arrived exactly once."""
    rows = Notification.objects.filter(request_id__in=requests)
    received = Counter(m.message["Message-ID"] for m in smtp.messages)
    return {row.message_id or f"unsent {row.kind} #{row.request_id}": received[row.message_id]
            for row in rows}


def _assert_delivered(system: RelaydeskSystem, ids: list[int], *, repeats_allowed: int) -> None:
    """Every outbox row of these requests is sent and its message arrived; at most
    ``repeats_allowed`` arrivals repeat a Message-ID, and no copy carries another id."""
    assert wait_until(lambda: not Notification.objects.filter(
        request_id__in=ids).exclude(status="sent").exists(), 60), system.logs()
    assert wait_until(lambda: min(_mail_once(system.smtp, ids).values()) >= 1, 10), (
        _mail_once(system.smtp, ids))
    arrivals = _mail_once(system.smtp, ids)
    assert sum(n - 1 for n in arrivals.values()) <= repeats_allowed, arrivals
    assert len(system.smtp.messages) == sum(arrivals.values())


@pytest.fixture
def faults_dns() -> DnsTestServer:
    with DnsTestServer(_faults_zone()) as server:
        yield server


@pytest.fixture
def system(faults_dns, settings):
    require(shutil.which("redis-server") is not None,
            "redis-server not installed (apt-get install redis-server)")
    with SmtpTestServer() as smtp, RelaydeskSystem(
        dns_nameserver=faults_dns.nameserver, smtp_host=smtp.host, smtp_port=smtp.port,
        # DNS errors retry after 1, 2, 4 ... seconds instead of 30, 60, 120 ...
        extra_env={"RELAY_CHECK_MAX_RETRIES": "8", "RELAY_CHECK_RETRY_BACKOFF": "1"},
    ) as system:
        system.smtp = smtp  # type: ignore[attr-defined]
        yield system


def test_broker_outage_loses_nothing_and_a_revocation_is_served_after_it(
    system, team, requester, approver
):
    # given an active entry in the served config, a request awaiting approval and a draft
    revoked = RelayRequestFactory(team=team, created_by=requester, fqdn="old.example.org",
                                  ipv4=["81.2.69.99"], ipv6=[], state=RequestState.ACTIVE)
    relay_config_rebuild(reason="fault test start")
    waiting, draft = _server(team, requester, 1), _server(team, requester, 2)
    user, boss = system.token(requester), system.token(approver)
    assert system.call("POST", f"/api/requests/{waiting.pk}/submit/", token=user)[0] == 200
    assert wait_until(lambda: _state(waiting.pk) == RequestState.PENDING_APPROVAL, 60), (
        system.logs())
    assert "81.2.69.99/32 OK" in system.served()

    # when the broker goes away (and with it every queued message)
    system.redis.stop()
    # and the requester submits, the approver approves one request and revokes another
    submit = system.call("POST", f"/api/requests/{draft.pk}/submit/", token=user)
    approve = system.call("POST", f"/api/requests/{waiting.pk}/approve/", token=boss)
    revoke = system.call("POST", f"/api/requests/{revoked.pk}/revoke/", token=boss,
                         body={"comment": "Server decommissioned."})

    # then every action was saved and answered, none was lost with the broker
    assert [submit[0], approve[0], revoke[0]] == [200, 200, 200], (submit, approve, revoke)
    assert (_state(draft.pk), _state(waiting.pk), _state(revoked.pk)) == (
        RequestState.CHECKING, RequestState.PROVISIONING, RequestState.REVOKED)
    # and the relays still get the last version, without a "revoked" mail claiming otherwise
    assert "81.2.69.99/32 OK" in system.served()
    assert not Notification.objects.filter(request=revoked, status="sent").exists()
    # and the worker (with its beat) outlives the outage
    assert not wait_until(lambda: not system.worker.alive, 5), system.worker.tail()

    # when the broker comes back, empty
    system.redis.start()
    # then within a few sweeps the draft is checked, the approval and the revocation served
    assert wait_until(lambda: (_state(draft.pk), _state(waiting.pk)) == (
        RequestState.PENDING_APPROVAL, RequestState.ACTIVE), 60), system.logs()
    served = system.served()
    assert "81.2.69.99/32" not in served
    assert "81.2.69.101/32 OK" in served
    # and every mail (checks passed, approved, active, revoked) arrives exactly once
    ids = [revoked.pk, waiting.pk, draft.pk]
    _assert_delivered(system, ids, repeats_allowed=0)
    assert Notification.objects.filter(request=revoked, kind="revoked").count() == 1
    # and each request's checks were recorded once per attempt, by one chain
    recorded = Counter(RequestEvent.objects.filter(
        request_id__in=[waiting.pk, draft.pk], type="checks_recorded").values_list(
        "request_id", flat=True))
    assert recorded == {waiting.pk: 1, draft.pk: 1}
    # and nothing is stuck
    assert not RelayRequest.objects.filter(
        state__in=[RequestState.CHECKING, RequestState.PROVISIONING]).exists()


def test_worker_killed_mid_work_every_request_finishes_exactly_once(
    system, faults_dns, team, requester, approver
):
    # given answers that take a while, and four drafts
    faults_dns.latency = 0.3
    drafts = [_server(team, requester, i) for i in range(1, 5)]
    user = system.token(requester)
    # when they are submitted and the worker is killed (SIGKILL) while checking them
    for req in drafts:
        assert system.call("POST", f"/api/requests/{req.pk}/submit/", token=user)[0] == 200
    assert wait_until(lambda: any("relaydesk.check_waiting_requests" in ln and "received" in ln
                                  for ln in system.worker.log), 30), system.worker.tail()
    system.worker.kill()
    unfinished = RelayRequest.objects.filter(pk__in=[r.pk for r in drafts],
                                             state=RequestState.CHECKING).count()
    # and a new worker starts (the killed one never acknowledged its message)
    faults_dns.latency = 0.0
    system.worker.start()
    # then every request is checked, each by exactly one recorded run
    assert wait_until(lambda: not RelayRequest.objects.filter(
        pk__in=[r.pk for r in drafts], state=RequestState.CHECKING).exists(), 60), (
        system.logs())
    assert unfinished >= 1  # the kill really interrupted work
    states = {_state(r.pk) for r in drafts}
    assert states == {RequestState.PENDING_APPROVAL}
    recorded = Counter(RequestEvent.objects.filter(
        request_id__in=[r.pk for r in drafts], type="checks_recorded").values_list(
        "request_id", flat=True))
    assert recorded == {r.pk: 1 for r in drafts}

    # when the approver approves all four and the worker is killed right after
    boss = system.token(approver)
    for req in drafts:
        assert system.call("POST", f"/api/requests/{req.pk}/approve/", token=boss)[0] == 200
    system.worker.kill()
    system.worker.start()
    # then all four become active in the served config, and each mail arrives once
    ids = [r.pk for r in drafts]
    assert wait_until(lambda: {_state(pk) for pk in ids} == {RequestState.ACTIVE}, 60), (
        system.logs())
    served = system.served()
    assert all(f"81.2.69.{100 + i}/32 OK" in served for i in range(1, 5))
    # and every mail arrived; a SIGKILL after the SMTP server accepted a message but before
    # its row was committed makes that one message go again with the same Message-ID (the
    # outbox is at-least-once with a stable id, so receivers drop the copy)
    _assert_delivered(system, ids, repeats_allowed=1)


def test_dns_and_smtp_outage_the_request_waits_visibly_then_goes_on_and_mails_once(
    system, faults_dns, team, requester, approver
):
    # given DNS and the mail server are both down
    faults_dns.stop()
    system.smtp.stop()
    draft = _server(team, requester, 3)
    user = system.token(requester)
    # when the requester submits
    status, _ = system.call("POST", f"/api/requests/{draft.pk}/submit/", token=user)
    assert status == 200
    # then the request waits in checking, and says why: DNS errors, attempts, next attempt
    assert wait_until(lambda: RelayRequest.objects.get(pk=draft.pk).check_attempts >= 2, 30), (
        system.logs())
    status, body = system.call("GET", f"/api/requests/{draft.pk}/", token=user)
    assert status == 200
    assert (body["state"], body["check_verdict"]) == ("checking", "error")
    assert body["check_attempts"] >= 2 and body["check_next_attempt_at"]
    assert {c["status"] for c in body["checks"]} >= {"error"}

    # when DNS comes back (SMTP still down)
    faults_dns.start()
    # then the next scheduled attempt passes and the request goes to the approvers
    assert wait_until(lambda: _state(draft.pk) == RequestState.PENDING_APPROVAL, 60), (
        system.logs())
    # and the attempts were recorded one after another by one chain, none twice
    attempts = list(RequestEvent.objects.filter(request=draft, type="checks_recorded")
                    .order_by("pk").values_list("parameters__attempt", flat=True))
    assert attempts == list(range(1, len(attempts) + 1)), attempts
    # and the approvers' "awaiting approval" mail waits, with the reason, while SMTP is down
    assert wait_until(lambda: Notification.objects.filter(
        request=draft, status="pending", attempts__gte=1).exists(), 30), system.logs()
    assert system.smtp.messages == []

    # when the mail server comes back
    system.smtp.start()
    # then every notification of the request arrives exactly once
    _assert_delivered(system, [draft.pk], repeats_allowed=0)
    assert not RelayRequest.objects.filter(state=RequestState.CHECKING).exists()
