"""Failure paths of the relay config: a bad row never blocks the relay, and a revocation
reaches the served config whatever the broker does.

A "bad row" is data the renderer refuses, written around validation with a queryset
``update()`` (as a row from before a rule change would be). A lost broker message is a
task publish that raises kombu's ``OperationalError``, which ``dispatch_on_commit``
logs and tolerates. Celery runs eagerly; the last test uses a real worker.
"""

from __future__ import annotations

import logging

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone
from django.utils.html import escape
from kombu.exceptions import OperationalError
from rest_framework.test import APIClient

from requests_app import quotas
from requests_app import services
from requests_app import tasks
from requests_app.directory import directory_mark_done_manually
from requests_app.dispatch import dispatch_on_commit
from requests_app.models import Notification
from requests_app.models import RelayConfigVersion
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.relay import relay_config_rebuild
from requests_app.relay import relay_config_stale
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import member_of

pytestmark = pytest.mark.django_db

TOKEN = "relay-pull-token"  # noqa: S105 - test-only
BAD_ADDRESS_REASON = "invalid address '0.0.0.0'"


@pytest.fixture(autouse=True)
def _relay_settings(settings):
    settings.RELAY_CONFIG_TOKEN = TOKEN
    settings.RELAY_PROVISION_MAX_ATTEMPTS = 3
    settings.RELAYDESK_SWEEP_AFTER_SECONDS = 0  # every sweep takes all pending work


def served(name: str = "client_access.cidr") -> tuple[str, int]:
    """What config management pulls: the body and the version header."""
    response = Client().get(f"/relay-config/{name}", HTTP_AUTHORIZATION=f"Token {TOKEN}")
    assert response.status_code == 200
    return response.content.decode(), int(response["X-Relay-Config-Version"])


def approved(team, requester, approver, capture, **fields) -> RelayRequest:
    """A checked request approved through the service (the eager task provisions it)."""
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass", **fields)
    with capture(execute=True):
        services.request_act(request_id=req.pk, action="approve", by=approver)
    req.refresh_from_db()
    return req


def waiting_with_bad_address(team, requester, approver, **fields) -> RelayRequest:
    """An approved request whose address the renderer refuses (0.0.0.0)."""
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PROVISIONING,
                              fqdn="bad.example.org", ipv4=["81.2.69.20"], ipv6=[],
                              decided_by=approver, **fields)
    RelayRequest.objects.filter(pk=req.pk).update(ipv4=["0.0.0.0"])
    return req


def sweep(capture) -> dict[str, int]:
    with capture(execute=True):
        return tasks.sweep_pending_work()


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def lose_broker_messages(monkeypatch, *task_names: str) -> None:
    """Every publish of these tasks fails as if the broker were unreachable."""
    def unreachable(*args: object, **kwargs: object) -> None:
        raise OperationalError("[Errno 111] Connection refused")

    for name in task_names:
        monkeypatch.setattr(getattr(tasks, name), "delay", unreachable)


# --- a bad row never blocks the relay ----------------------------------------------------


def test_a_bad_row_waiting_does_not_block_other_approvals_or_a_revocation(
    team, requester, approver, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # given an active entry, and an approved request whose address cannot be rendered
    old = approved(team, requester, approver, capture, fqdn="old.example.org",
                   ipv4=["81.2.69.30"], ipv6=[])
    bad = waiting_with_bad_address(team, requester, approver)
    # when another request is approved and the active entry is revoked
    new = approved(team, requester, approver, capture, fqdn="new.example.org",
                   ipv4=["81.2.69.40"], ipv6=[])
    with capture(execute=True):
        services.request_act(request_id=old.pk, action="revoke", by=approver,
                             comment="decommissioned")
    # then the approval went live and the revocation is served, without the bad row
    text, number = served()
    assert RelayRequest.objects.get(pk=new.pk).state == S.ACTIVE
    assert "81.2.69.40/32 OK" in text
    assert "81.2.69.30" not in text
    assert "0.0.0.0" not in text and f"# request {bad.pk} " not in text
    assert number == RelayConfigVersion.objects.order_by("-number").first().number
    # and each version built meanwhile lists the bad row as left out, with the reason
    version = RelayConfigVersion.objects.get(number=number)
    assert [s["request"] for s in version.skipped] == [bad.pk]
    assert BAD_ADDRESS_REASON in version.skipped[0]["reason"]
    # and the bad request still waits, with its attempts counted and the reason stored
    bad.refresh_from_db()
    assert bad.state == S.PROVISIONING
    assert bad.provision_attempts == 2  # the approval's build and the revocation's
    assert BAD_ADDRESS_REASON in bad.provision_error
    client = Client()
    client.force_login(approver)
    page = client.get(f"/requests/{bad.pk}/").content.decode()
    assert "Not yet in the relay configuration" in page and "attempt 2 of 3" in page


def test_after_the_attempts_the_bad_request_fails_visibly_and_is_no_longer_retried(
    team, requester, approver, second_approver, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # given an approved request the renderer refuses
    bad = waiting_with_bad_address(team, requester, approver)
    mail.outbox.clear()
    # when the sweep finds it waiting, three times
    counts = [sweep(capture)["provisioning"] for _ in range(3)]
    # then each sweep tried one build, and the third moved it to provisioning_failed
    assert counts == [1, 1, 1]
    bad.refresh_from_db()
    assert (bad.state, bad.provision_attempts) == (S.PROVISIONING_FAILED, 3)
    trail = list(bad.events.filter(type__in=["config_built", "transition"]).values_list(
        "type", "parameters__attempt", "to_state"))
    assert trail == [("config_built", 1, S.PROVISIONING), ("config_built", 2, S.PROVISIONING),
                     ("transition", None, S.PROVISIONING_FAILED)]
    failed = bad.events.get(parameters__action="provisioning_failed")
    assert failed.actor is None and BAD_ADDRESS_REASON in failed.comment
    # and owners and approvers are told once, with the reason
    [message] = mail.outbox
    assert message.subject.endswith("provisioning failed, an approver must retry or reject it")
    assert {"ops@example.org", "payments@teams.example.org", requester.email,
            approver.email, second_approver.email} <= set(message.to)
    assert BAD_ADDRESS_REASON in message.body
    # and the sweep leaves it alone from now on: nothing is stuck, nothing loops
    assert sweep(capture)["provisioning"] == 0
    bad.refresh_from_db()
    assert (bad.state, bad.provision_attempts) == (S.PROVISIONING_FAILED, 3)
    assert len(mail.outbox) == 1


def test_approvers_see_the_reason_on_the_request_page_the_api_and_the_version_list(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given a request whose provisioning failed
    bad = waiting_with_bad_address(team, requester, approver)
    for _ in range(3):
        relay_config_rebuild(reason="test")
    bad.refresh_from_db()
    assert bad.state == S.PROVISIONING_FAILED
    client = Client()
    client.force_login(approver)
    # when an approver opens the request page
    page = client.get(f"/requests/{bad.pk}/").content.decode()
    # then it says provisioning failed, why, and offers retry and reject
    assert "Provisioning failed" in page
    assert escape(BAD_ADDRESS_REASON) in page
    assert f'action="/requests/{bad.pk}/retry_provisioning/"' in page
    assert f'action="/requests/{bad.pk}/reject/"' in page
    # and the API shows the same
    body = api(approver).get(f"/api/requests/{bad.pk}/").json()
    assert body["state"] == "provisioning_failed"
    assert body["provision_attempts"] == 3
    assert BAD_ADDRESS_REASON in body["provision_error"]
    # and the relay config history names the entry the newest version leaves out
    versions = client.get("/relay-config/").content.decode()
    assert "Left out of the newest version" in versions
    assert f'href="/requests/{bad.pk}/"' in versions
    assert escape(BAD_ADDRESS_REASON) in versions


def test_the_queue_lists_failed_provisioning_for_approvers(team, requester, approver):
    # given a request whose provisioning failed
    bad = waiting_with_bad_address(team, requester, approver)
    for _ in range(3):
        relay_config_rebuild(reason="test")
    client = Client()
    client.force_login(approver)
    # when the approver opens the default queue
    page = client.get("/requests/queue/").content.decode()
    # then it is there
    assert f'href="/requests/{bad.pk}/"' in page


def test_an_approver_retries_and_the_fixed_entry_goes_live(
    team, requester, approver, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # given a request whose provisioning failed
    bad = waiting_with_bad_address(team, requester, approver)
    for _ in range(3):
        relay_config_rebuild(reason="test")
    # when it is retried while the value is still refused
    client = Client()
    client.force_login(approver)
    with capture(execute=True):
        client.post(f"/requests/{bad.pk}/retry_provisioning/")
    # then the retry's build counts a new first attempt
    bad.refresh_from_db()
    assert (bad.state, bad.provision_attempts) == (S.PROVISIONING, 1)
    assert bad.events.filter(parameters__action="retry_provisioning", actor=approver).exists()
    # when the cause is fixed (here: the data) and the next build runs
    RelayRequest.objects.filter(pk=bad.pk).update(ipv4=["81.2.69.20"])
    with capture(execute=True):
        sweep(capture)
    # then the entry is active and served, with the flag cleared
    bad.refresh_from_db()
    assert (bad.state, bad.provision_error) == (S.ACTIVE, "")
    assert f"# request {bad.pk} bad.example.org" in served()[0]


def test_an_approver_rejects_a_failed_provisioning_through_the_api(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given a request whose provisioning failed
    bad = waiting_with_bad_address(team, requester, approver)
    for _ in range(3):
        relay_config_rebuild(reason="test")
    mail.outbox.clear()
    # when an independent approver rejects it with a reason
    with django_capture_on_commit_callbacks(execute=True):
        response = api(approver).post(f"/api/requests/{bad.pk}/reject/",
                                      {"comment": "File it again with a real address."},
                                      format="json")
    # then it is rejected and the owners are told why
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "rejected"
    [message] = mail.outbox
    assert "File it again with a real address." in message.body
    assert sweep(django_capture_on_commit_callbacks)["provisioning"] == 0


def test_an_account_rejected_after_failed_provisioning_leaves_the_relay_group(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given an approved account (its relay-group add was queued) whose sender is refused
    from requests_app.models import DirectoryChange

    acct = RelayRequestFactory(team=team, created_by=requester, account=True,
                               account_name="svc-bad", state=S.PENDING_APPROVAL,
                               check_verdict="pass", sender_addresses=["bad@example.org"])
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=acct.pk, action="approve", by=approver)
    # (approved and built while valid; now the row holds a sender the renderer refuses)
    RelayRequest.objects.filter(pk=acct.pk).update(state=S.PROVISIONING,
                                                   sender_addresses=["a b@example.org"])
    for _ in range(3):
        relay_config_rebuild(reason="test")
    assert RelayRequest.objects.get(pk=acct.pk).state == S.PROVISIONING_FAILED
    # when it is rejected
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=acct.pk, action="reject", by=approver,
                             comment="sender is not an address")
    # then the account's group membership is undone, as after a revoke
    actions = list(DirectoryChange.objects.filter(request=acct).order_by("pk")
                   .values_list("action", flat=True))
    assert actions == ["add", "remove"]


@pytest.mark.parametrize("action", ["retry_provisioning", "reject"])
@pytest.mark.parametrize("who", ["requester", "team_approver", "filing_approver"])
def test_retry_and_reject_are_refused_to_the_requests_own_people(
    team, requester, approver, action, who, django_capture_on_commit_callbacks
):
    # given a failed provisioning; an approver in the team; an approver who filed it
    team_approver = ApproverFactory(username="tina")
    member_of(team, username="tina")
    filing_approver = ApproverFactory(username="fred")
    member_of(team, username="fred")
    bad = waiting_with_bad_address(team, requester, approver)
    if who == "filing_approver":
        RelayRequest.objects.filter(pk=bad.pk).update(created_by=filing_approver)
    for _ in range(3):
        relay_config_rebuild(reason="test")
    actor = {"requester": requester, "team_approver": team_approver,
             "filing_approver": filing_approver}[who]
    events_before = RequestEvent.objects.filter(request=bad).count()
    # when they try to retry or reject it
    with django_capture_on_commit_callbacks(execute=True):
        response = api(actor).post(f"/api/requests/{bad.pk}/{action}/",
                                   {"comment": "mine"}, format="json")
    # then it is forbidden and nothing happened
    assert response.status_code == 403, response.content
    bad.refresh_from_db()
    assert (bad.state, bad.provision_attempts) == (S.PROVISIONING_FAILED, 3)
    assert RequestEvent.objects.filter(request=bad).count() == events_before


def test_retry_is_refused_in_any_other_state(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given an active entry
    entry = approved(team, requester, approver, django_capture_on_commit_callbacks)
    # when an approver tries to retry its provisioning
    response = api(approver).post(f"/api/requests/{entry.pk}/retry_provisioning/",
                                  format="json")
    # then 409 with the rule, and it stays active
    assert response.status_code == 409
    assert "Only a request whose provisioning failed can be retried" in str(response.json())
    assert RelayRequest.objects.get(pk=entry.pk).state == S.ACTIVE


def test_an_active_entry_that_became_unrenderable_is_left_out_and_flagged_once(
    team, requester, approver, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # given an active account whose sender no longer passes the rules (older data)
    acct = RelayRequestFactory(team=team, created_by=requester, account=True,
                               account_name="svc-old", state=S.ACTIVE,
                               sender_addresses=["ok@example.org"])
    RelayRequest.objects.filter(pk=acct.pk).update(sender_addresses=["a b@example.org"])
    # when two later approvals are built
    first = approved(team, requester, approver, capture, fqdn="one.example.org",
                     ipv4=["81.2.69.51"], ipv6=[])
    second = approved(team, requester, approver, capture, fqdn="two.example.org",
                      ipv4=["81.2.69.52"], ipv6=[])
    # then both are live, the account is out of the maps and flagged, with one event
    assert {RelayRequest.objects.get(pk=r.pk).state for r in (first, second)} == {S.ACTIVE}
    logins, _number = served("sender_login_maps")
    assert "svc-old" not in logins
    acct.refresh_from_db()
    assert acct.state == S.ACTIVE
    assert "account entry" in acct.provision_error and "'a b@example.org'" in acct.provision_error
    flagged = acct.events.filter(type="config_built")
    assert flagged.count() == 1 and "active, but left out" in flagged.get().comment
    client = Client()
    client.force_login(approver)
    assert "Left out of the relay configuration" in client.get(
        f"/requests/{acct.pk}/").content.decode()
    # when the data renders again
    RelayRequest.objects.filter(pk=acct.pk).update(sender_addresses=["ok@example.org"])
    relay_config_rebuild(reason="fixed")
    # then it is back in the maps and the flag is gone
    assert "ok@example.org  svc-old" in served("sender_login_maps")[0]
    assert RelayRequest.objects.get(pk=acct.pk).provision_error == ""


def test_an_unrenderable_renewal_does_not_replace_the_entry_it_renews(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given an active entry and its renewal, approved, with an address that is refused
    entry = approved(team, requester, approver, django_capture_on_commit_callbacks,
                     fqdn="keep.example.org", ipv4=["81.2.69.60"], ipv6=[])
    renewal = waiting_with_bad_address(team, requester, approver, replaces=entry)
    # when the config is built
    relay_config_rebuild(reason="renewal")
    # then the original stays active and served; the renewal waits with its reason
    assert RelayRequest.objects.get(pk=entry.pk).state == S.ACTIVE
    assert "81.2.69.60/32 OK" in served()[0]
    renewal.refresh_from_db()
    assert (renewal.state, renewal.provision_attempts) == (S.PROVISIONING, 1)


def test_the_rebuild_command_names_what_it_left_out(team, requester, approver):
    from io import StringIO

    from django.core.management import call_command

    # given an approved request the renderer refuses
    bad = waiting_with_bad_address(team, requester, approver)
    out, err = StringIO(), StringIO()
    # when an operator rebuilds by hand
    call_command("rebuild_relay_config", stdout=out, stderr=err)
    # then the version is built and the left-out entry is named with its reason
    assert out.getvalue().strip() == "built v1"
    assert f"left out: request {bad.pk}: server entry (request {bad.pk}" in err.getvalue()
    assert BAD_ADDRESS_REASON in err.getvalue()


# --- revocation whatever the broker does ------------------------------------------------


@pytest.mark.parametrize("removal", ["revoke", "expire", "suspend"])
def test_a_removal_whose_rebuild_was_lost_is_served_after_one_sweep(
    team, requester, approver, removal, monkeypatch, caplog,
    django_capture_on_commit_callbacks,
):
    capture = django_capture_on_commit_callbacks
    # given two active entries in the served config
    gone = approved(team, requester, approver, capture, fqdn="gone.example.org",
                    ipv4=["81.2.69.70"], ipv6=[])
    stays = approved(team, requester, approver, capture, fqdn="stays.example.org",
                     ipv4=["81.2.69.71"], ipv6=[])
    before, number_before = served()
    assert "81.2.69.70/32 OK" in before
    mail.outbox.clear()
    # when one leaves the config while the broker is unreachable
    lose_broker_messages(monkeypatch, "rebuild_relay_config")
    caplog.set_level(logging.WARNING, logger="requests_app.dispatch")
    with capture(execute=True):
        if removal == "revoke":
            services.request_act(request_id=gone.pk, action="revoke", by=approver,
                                 comment="Server decommissioned.")
        elif removal == "expire":
            services.request_expire(request_id=gone.pk)
        else:  # what the nightly recheck does past the drift grace period
            RelayRequest.objects.filter(pk=gone.pk).update(suspended_at=timezone.now())
            dispatch_on_commit("rebuild_relay_config")
    # then the action succeeded, the lost publish was logged, and nothing else happened
    assert "broker unavailable: rebuild_relay_config" in caplog.text
    assert served() == (before, number_before)
    assert not Notification.objects.filter(request=gone, kind__in=["revoked",
                                                                   "expired"]).exists()
    assert mail.outbox == []
    assert relay_config_stale() is True
    # when the broker is back and the sweep runs
    monkeypatch.undo()
    counts = sweep(capture)
    # then one rebuild was dispatched, and the served version no longer has the entry
    assert counts["rebuild"] == 1
    text, number = served()
    assert number == number_before + 1
    assert "81.2.69.70" not in text and "81.2.69.71/32 OK" in text
    assert stays.pk and relay_config_stale() is False
    # and the owners got the removal mail exactly once, after the version existed
    version = RelayConfigVersion.objects.get(number=number)
    if removal == "suspend":
        assert mail.outbox == []
    else:
        kind = {"revoke": "revoked", "expire": "expired"}[removal]
        row = Notification.objects.get(request=gone, kind=kind)
        assert row.created_at >= version.created_at
        assert [m.subject for m in mail.outbox] == [
            f"[Relaydesk] #{gone.pk} gone.example.org: relay access {kind}"]
        assert f"no longer in the relay configuration (version {number})" in mail.outbox[0].body
    # when the sweep runs again, nothing is rebuilt and nobody is mailed twice
    assert sweep(capture)["rebuild"] == 0
    assert RelayConfigVersion.objects.order_by("-number").first().number == number
    assert len(mail.outbox) == (0 if removal == "suspend" else 1)


def test_a_production_grant_whose_rebuild_was_lost_is_served_after_one_sweep(
    team, requester, approver, monkeypatch, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # given an active sandboxed entry in the served config, whose owners asked for more
    entry = approved(team, requester, approver, capture, fqdn="grow.example.org",
                     ipv4=["81.2.69.72"], ipv6=[])
    policy, number_before = served("relay_policy")
    assert f"client 81.2.69.72 {entry.pk} 200/86400,1/1 " in policy
    assert relay_config_stale() is False
    with capture(execute=True):
        quotas.request_production_access(request_id=entry.pk, by=requester, volume=5000,
                                         use_case="Invoices",
                                         bounce_handling="A bounce box is read daily.")
    # when an approver grants production while the broker is unreachable
    lose_broker_messages(monkeypatch, "rebuild_relay_config")
    with capture(execute=True):
        services.request_act(request_id=entry.pk, action="grant_production", by=approver)
    # then the relay still applies the sandbox quota, and the sweep can tell
    assert served("relay_policy") == (policy, number_before)
    assert relay_config_stale() is True
    # when the broker is back and the sweep runs
    monkeypatch.undo()
    assert sweep(capture)["rebuild"] == 1
    # then the served policy file applies the granted volume
    policy, number = served("relay_policy")
    assert number == number_before + 1
    assert f"client 81.2.69.72 {entry.pk} 5000/86400,14/1 @example.org production" in policy
    # and the next sweep finds nothing to do
    assert relay_config_stale() is False
    assert sweep(capture)["rebuild"] == 0


def test_a_revoked_account_whose_rebuild_was_lost_is_found_in_the_login_map(
    team, requester, approver, monkeypatch, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # given an active functional account in the served config
    acct = RelayRequestFactory(team=team, created_by=requester, account=True,
                               account_name="svc-shop", state=S.PENDING_APPROVAL,
                               check_verdict="pass", sender_addresses=["Shop@example.org"])
    with capture(execute=True):
        services.request_act(request_id=acct.pk, action="approve", by=approver)
        # (no directory connected: its relay-group add is confirmed from the to-do list)
        directory_mark_done_manually(change_id=acct.directory_changes.get().pk, by=approver)
    assert "shop@example.org  svc-shop" in served("sender_login_maps")[0]
    # when it is revoked and the rebuild message is lost
    lose_broker_messages(monkeypatch, "rebuild_relay_config")
    with capture(execute=True):
        services.request_act(request_id=acct.pk, action="revoke", by=approver,
                             comment="no longer needed")
    # then the sweep sees the served login map is out of date, and fixes it
    assert relay_config_stale() is True
    monkeypatch.undo()
    assert sweep(capture)["rebuild"] == 1
    assert "svc-shop" not in served("sender_login_maps")[0]
    assert relay_config_stale() is False


def test_the_sweep_does_not_rebuild_when_the_served_config_is_current(
    team, requester, approver, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    # given an account renewed with the same senders (the old one superseded, its login
    # lines now put there by the renewal) and a server revoked, all built normally
    old = RelayRequestFactory(team=team, created_by=requester, account=True,
                              account_name="svc-same", state=S.PENDING_APPROVAL,
                              check_verdict="pass", sender_addresses=["same@example.org"])
    with capture(execute=True):
        services.request_act(request_id=old.pk, action="approve", by=approver)
        directory_mark_done_manually(change_id=old.directory_changes.get().pk, by=approver)
    renewal = RelayRequestFactory(team=team, created_by=requester, account=True,
                                  account_name="svc-same", state=S.PENDING_APPROVAL,
                                  check_verdict="pass", replaces=old,
                                  sender_addresses=["same@example.org"])
    with capture(execute=True):
        services.request_act(request_id=renewal.pk, action="approve", by=approver)
    server = approved(team, requester, approver, capture)
    with capture(execute=True):
        services.request_act(request_id=server.pk, action="revoke", by=approver,
                             comment="gone")
    assert RelayRequest.objects.get(pk=old.pk).state == S.REVOKED
    versions = RelayConfigVersion.objects.count()
    # when the sweep runs, twice
    counts = [sweep(capture)["rebuild"] for _ in range(2)]
    # then it finds nothing left over and builds nothing
    assert counts == [0, 0]
    assert RelayConfigVersion.objects.count() == versions
    assert Notification.objects.filter(request=server, kind="revoked").count() == 1
    assert not Notification.objects.filter(request=old, kind="revoked").exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
def test_a_lost_revocation_is_served_after_the_sweep_on_a_real_worker(
    team, requester, approver, monkeypatch
):
    from django.conf import settings

    from tests.support.worker import celery_worker
    from tests.support.worker import wait_for

    # given an active entry in a built version (no worker yet)
    entry = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                fqdn="gone.example.org", ipv4=["81.2.69.80"], ipv6=[])
    relay_config_rebuild(reason="start")
    # when it is revoked while the broker refuses the rebuild message
    lose_broker_messages(monkeypatch, "rebuild_relay_config")
    services.request_act(request_id=entry.pk, action="revoke", by=approver,
                         comment="Server decommissioned.")
    monkeypatch.undo()
    assert "81.2.69.80/32 OK" in served()[0]
    assert not Notification.objects.filter(request=entry).exists()
    # and beat's sweep reaches a real worker once the broker is back
    with celery_worker() as worker:
        tasks.sweep_pending_work.delay()
        done = wait_for(lambda: Notification.objects.filter(
            request=entry, kind="revoked", status="sent").exists())
        log = "".join(worker.log)
    # then the worker rebuilt, the served config lacks the entry, and the mail went once
    assert done, f"sweep did not finish on {settings.CELERY_BROKER_URL}:\n{log[-3000:]}"
    assert "81.2.69.80" not in served()[0]
    assert Notification.objects.filter(request=entry, kind="revoked").count() == 1
    assert "relaydesk.rebuild_relay_config" in log
