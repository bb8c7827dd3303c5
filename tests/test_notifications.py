"""Notifications: who gets which mail, how it looks on the wire, and that it arrives once.

Every message here goes through a real SMTP server on loopback (``tests/support/smtp.py``),
so envelope sender, headers and MIME structure are what a mail server really received.
Unit tests run Celery eagerly; the fault test runs a real worker on the configured broker
(filesystem by default, Redis in CI) and stops the SMTP server while mail is in flight.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextlib import contextmanager
from email.utils import parseaddr
from typing import TYPE_CHECKING

import pytest
from django.core import mail

from onboarding.celery import app as celery_app
from requests_app import services
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestState
from requests_app.notifications import notification_message_id
from requests_app.notifications import notification_send
from requests_app.tasks import send_notification
from requests_app.tasks import sweep_pending_work
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of
from tests.support.smtp import ReceivedMessage
from tests.support.smtp import SmtpTestServer
from tests.support.worker import celery_worker
from tests.support.worker import wait_for

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

pytestmark = pytest.mark.django_db

FROM = "relaydesk@example.org"
RETURN_PATH = "bounces@example.org"
HELPDESK = "helpdesk@example.org"
# the payments team's people, as the fixtures create them
PAYMENTS_OWNERS = ["alice@people.example.org", "ops@example.org", "payments@teams.example.org"]
APPROVERS = ["bob@people.example.org", "carol@people.example.org"]
MESSAGE_ID = re.compile(r"^<relaydesk\.\d+\.[0-9a-f]{20}@example\.org>$")


@pytest.fixture
def smtp(settings: object) -> Iterator[SmtpTestServer]:
    """A real SMTP server on loopback, and the app's mail pointed at it."""
    with SmtpTestServer() as server:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST = server.host
        settings.EMAIL_PORT = server.port
        settings.EMAIL_TIMEOUT = 5
        settings.DEFAULT_FROM_EMAIL = FROM
        settings.RELAYDESK_RETURN_PATH = RETURN_PATH
        settings.RELAYDESK_HELPDESK_EMAIL = HELPDESK
        settings.RELAYDESK_MAIL_RETRY_BACKOFF = 0.1
        yield server


def act(
    request_id: int,
    action: str,
    by: AbstractBaseUser,
    comment: str = "",
    *,
    capture: Callable[..., AbstractContextManager[object]],
) -> None:
    """Fire a service action and run what it scheduled on commit (tasks are eager)."""
    with capture(execute=True):
        services.request_act(request_id=request_id, action=action, by=by, comment=comment)


def readable(msg: ReceivedMessage) -> str:
    """Envelope, headers and both decoded parts: everything a recipient could read."""
    headers = "\n".join(f"{name}: {value}" for name, value in msg.message.items())
    return "\n".join([msg.mail_from, *msg.rcpt_tos, headers, msg.part("text/plain"),
                      msg.part("text/html")])


def only_message(smtp: SmtpTestServer) -> ReceivedMessage:
    messages = smtp.messages
    assert len(messages) == 1, [m.message["Subject"] for m in messages]
    return messages[0]


# --- who gets what ------------------------------------------------------------------


def test_arrival_in_the_queue_mails_every_active_approver_and_nobody_else(
    smtp, team, requester, approver, second_approver, django_capture_on_commit_callbacks
):
    # given a draft, two approvers, an inactive approver and an approver without e-mail
    ApproverFactory(username="gone", is_active=False)
    ApproverFactory(username="nomail", email="")
    req = RelayRequestFactory(team=team, created_by=requester)
    # when the requester submits and the DNS checks pass (it reaches the queue)
    act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    # then exactly one message went to exactly the active approvers with an address
    msg = only_message(smtp)
    assert sorted(msg.rcpt_tos) == APPROVERS
    assert msg.message["To"] == ", ".join(APPROVERS)
    assert msg.message["Subject"] == (
        f"[Relaydesk] #{req.pk} Server allowlisting for app.example.org awaits approval"
    )
    text = msg.part("text/plain")
    assert (f"Request #{req.pk} of team Payments (Server allowlisting: app.example.org) "
            "is in the approval queue.") in text
    assert f"http://127.0.0.1:8000/requests/{req.pk}/" in text
    assert Notification.objects.get(request=req).kind == "awaiting_approval"


def test_submit_without_any_approver_records_and_sends_nothing(
    smtp, team, requester, django_capture_on_commit_callbacks
):
    # given a draft and no approver at all
    req = RelayRequestFactory(team=team, created_by=requester)
    # when it is submitted
    act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    # then no outbox row and no message
    assert Notification.objects.filter(request=req).count() == 0
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("state", "action", "comment", "kind", "subject_tail", "body_bits"),
    [
        pytest.param(
            RequestState.PENDING_APPROVAL, "request_changes", "Add the IPv6 PTR.",
            "changes_requested", ": changes requested",
            ["bob asked for changes to your request", "Add the IPv6 PTR."],
            id="changes_requested_case",
        ),
        pytest.param(
            RequestState.PENDING_APPROVAL, "approve", "",
            "approved", " approved",
            ["was approved.", "#snippets"],
            id="approved_case",
        ),
        pytest.param(
            RequestState.PENDING_APPROVAL, "reject", "Use the marketing platform instead.",
            "rejected", " rejected",
            ["was rejected by bob. Reason:", "Use the marketing platform instead."],
            id="rejected_case",
        ),
        pytest.param(
            RequestState.ACTIVE, "revoke", "Server decommissioned.",
            "revoked", ": relay access revoked",
            ["was revoked by bob. Reason:", "Server decommissioned."],
            id="revoked_case",
        ),
    ],
)
def test_decisions_mail_the_requester_and_team_contact(
    smtp, team, requester, approver, django_capture_on_commit_callbacks,
    state, action, comment, kind, subject_tail, body_bits,
):
    # given a request of the payments team in a state the approver can act on
    req = RelayRequestFactory(team=team, created_by=requester, state=state,
                              check_verdict="pass")
    # when the approver decides
    act(req.pk, action, approver, comment, capture=django_capture_on_commit_callbacks)
    # then the owners (contact, team contact, requester) get one message of that kind
    msg = only_message(smtp)
    assert sorted(msg.rcpt_tos) == PAYMENTS_OWNERS
    assert msg.message["Subject"] == f"[Relaydesk] #{req.pk} app.example.org{subject_tail}"
    text, html = msg.part("text/plain"), msg.part("text/html")
    for bit in body_bits:
        assert bit in text
    assert f'href="http://127.0.0.1:8000/requests/{req.pk}/"' in html
    [row] = Notification.objects.filter(request=req)
    assert (row.kind, row.status, row.attempts, row.recipients) == (
        kind, "sent", 1, PAYMENTS_OWNERS
    )
    assert approver.email not in msg.rcpt_tos


def test_approved_mail_links_the_snippets(
    smtp, team, requester, approver, django_capture_on_commit_callbacks
):
    # given a request that passed its checks
    req = RelayRequestFactory(team=team, created_by=requester,
                              state=RequestState.PENDING_APPROVAL, check_verdict="pass")
    # when it is approved
    act(req.pk, "approve", approver, capture=django_capture_on_commit_callbacks)
    # then the text and the HTML part both carry the snippets link
    msg = only_message(smtp)
    link = f"http://127.0.0.1:8000/requests/{req.pk}/#snippets"
    assert f"Ready-to-paste settings for your server or application:\n{link}\n" in (
        msg.part("text/plain")
    )
    assert f'<a href="{link}"' in msg.part("text/html")


def test_failed_checks_mail_the_owners_with_the_failing_checks(
    smtp, team, requester, django_capture_on_commit_callbacks
):
    # given a request whose checks are running
    req = RelayRequestFactory(team=team, created_by=requester, state=RequestState.CHECKING)
    checks = [
        {"id": "forward", "subject": "app.example.org", "status": "pass", "detail": "ok",
         "evidence": {}},
        {"id": "reverse", "subject": "81.2.69.10", "status": "fail",
         "detail": "no PTR record", "evidence": {}},
    ]
    # when the results come in with a failure (what the check task records)
    with django_capture_on_commit_callbacks(execute=True):
        services.request_record_checks(request_id=req.pk, checks=checks, final=True)
    # then the owners learn which check failed, and nothing about the passing one
    msg = only_message(smtp)
    assert sorted(msg.rcpt_tos) == PAYMENTS_OWNERS
    assert msg.message["Subject"] == (
        f"[Relaydesk] #{req.pk} app.example.org: DNS checks failed, changes needed"
    )
    text = msg.part("text/plain")
    # each check by its label, never its id or raw status
    assert "- Reverse DNS names the host (PTR), 81.2.69.10: Failed - no PTR record" in text
    assert "Host name points" not in text and "reverse (" not in text
    assert RelayRequest.objects.get(pk=req.pk).state == RequestState.NEEDS_CHANGES


def test_handover_tells_the_new_owners_and_the_old_team_contact(
    smtp, team, requester, django_capture_on_commit_callbacks
):
    # given an active entry of the payments team and a second team
    billing = TeamFactory(slug="billing", name="Billing",
                          contact_email="billing-lead@teams.example.org")
    req = RelayRequestFactory(team=team, created_by=requester, state=RequestState.ACTIVE)
    # when a payments member hands it over to billing
    with django_capture_on_commit_callbacks(execute=True):
        services.request_handover(request_id=req.pk, by=requester, to_team=billing,
                                  comment="Billing runs this host now.")
    # then one message reaches the entry's people, the new team and the old team contact
    msg = only_message(smtp)
    assert sorted(msg.rcpt_tos) == [
        "alice@people.example.org", "billing-lead@teams.example.org", "ops@example.org",
        "payments@teams.example.org",
    ]
    assert msg.message["Subject"] == (
        f"[Relaydesk] #{req.pk} app.example.org was handed over to team billing"
    )
    assert "Billing runs this host now." in msg.part("text/plain")


# --- the organisation's rules for mail ---------------------------------------------


def test_headers_follow_the_organisations_rules(
    smtp, settings, team, requester, approver, django_capture_on_commit_callbacks
):
    # given an approved-domain list and a request to reject
    req = RelayRequestFactory(team=team, created_by=requester,
                              state=RequestState.PENDING_APPROVAL)
    # when it is rejected with a comment that contains markup
    act(req.pk, "reject", approver, "Use <b>relay2</b> & retry",
        capture=django_capture_on_commit_callbacks)
    # then envelope and headers are the service's, on the approved domain
    msg = only_message(smtp)
    row = Notification.objects.get(request=req)
    assert msg.mail_from == RETURN_PATH  # becomes Return-Path at final delivery
    assert msg.message["From"] == FROM
    assert msg.message["Reply-To"] == HELPDESK
    assert msg.message["Auto-Submitted"] == "auto-generated"
    assert msg.message["Return-Path"] is None  # set by the receiving MTA, never by us
    assert msg.message["Message-ID"] == row.message_id
    assert MESSAGE_ID.match(row.message_id)
    approved = set(settings.RELAY_APPROVED_SENDER_DOMAINS)
    for address in (msg.mail_from, parseaddr(msg.message["From"])[1]):
        assert address.rpartition("@")[2] in approved
    # and the body is plain text plus HTML, the comment escaped only in HTML
    assert msg.message.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in msg.message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert "Use <b>relay2</b> & retry" in msg.part("text/plain")
    assert "Use &lt;b&gt;relay2&lt;/b&gt; &amp; retry" in msg.part("text/html")
    assert "<b>relay2</b>" not in msg.part("text/html")


def test_mail_for_one_team_carries_nothing_of_another(
    smtp, team, requester, approver, django_capture_on_commit_callbacks
):
    # given two teams, each with a request awaiting approval
    billing = TeamFactory(slug="billing", name="Billing",
                          contact_email="billing-lead@teams.example.org")
    bea = member_of(billing, username="bea")
    req_a = RelayRequestFactory(team=team, created_by=requester,
                                state=RequestState.PENDING_APPROVAL)
    req_b = RelayRequestFactory(team=billing, created_by=bea, fqdn="invoices.example.org",
                                contact_email="invoicing@billing.example.org",
                                state=RequestState.PENDING_APPROVAL)
    # when both are rejected
    act(req_a.pk, "reject", approver, "Payments: wrong sender domain.",
        capture=django_capture_on_commit_callbacks)
    act(req_b.pk, "reject", approver, "Billing: volume too high.",
        capture=django_capture_on_commit_callbacks)
    # then each team's message reaches only that team and names only that team's data
    by_rcpt = {tuple(sorted(m.rcpt_tos)): m for m in smtp.messages}
    billing_owners = ("bea@people.example.org", "billing-lead@teams.example.org",
                      "invoicing@billing.example.org")
    assert set(by_rcpt) == {tuple(PAYMENTS_OWNERS), billing_owners}
    raw_a = readable(by_rcpt[tuple(PAYMENTS_OWNERS)])
    raw_b = readable(by_rcpt[billing_owners])
    for secret in (*billing_owners, "invoices.example.org", "Billing", f"#{req_b.pk} "):
        assert secret not in raw_a
    for secret in (*PAYMENTS_OWNERS, "app.example.org", "Payments", f"#{req_a.pk} "):
        assert secret not in raw_b


# --- exactly once -------------------------------------------------------------------


def _pending(req: RelayRequest, kind: str = "rejected") -> Notification:
    """An outbox row as a committed ``reject`` leaves it, without running delivery."""
    return Notification.objects.create(
        request=req, kind=kind, event_key=f"request:{req.pk}:{kind}:event:test",
        recipients=["ops@example.org"], context={"comment": "No.", "actor": "bob"},
    )


def test_sending_twice_sends_once(smtp, server_request):
    # given a pending notification
    row = _pending(server_request)
    # when delivery runs twice (a redelivered task)
    first = notification_send(notification_id=row.pk)
    second = notification_send(notification_id=row.pk)
    # then one message, and the second run did nothing
    assert (first, second) == (True, False)
    msg = only_message(smtp)
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, "")
    assert msg.message["Message-ID"] == row.message_id


def test_redelivered_task_is_a_no_op(smtp, server_request):
    # given a notification the task already delivered
    row = _pending(server_request)
    assert send_notification.apply(args=[row.pk]).get() == "sent"
    # when the broker delivers the same task again, and a task for a deleted row arrives
    again = send_notification.apply(args=[row.pk]).get()
    missing = send_notification.apply(args=[row.pk + 1000]).get()
    # then nothing more was sent
    assert (again, missing) == ("skipped", "skipped")
    assert len(smtp.messages) == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("sent", 1)


def test_smtp_down_retries_keeps_the_row_pending_then_the_sweep_delivers_once(
    smtp, settings, server_request, caplog
):
    # given a pending notification, its Message-ID, and an SMTP server that is down
    row = _pending(server_request)
    message_id = notification_message_id(row)
    settings.RELAYDESK_SWEEP_AFTER_SECONDS = 0
    smtp.stop()
    # when the task runs (eagerly, so each retry runs at once instead of after countdown;
    # not propagating, so Celery re-applies on Retry as a worker would re-deliver)
    propagates = celery_app.conf.task_eager_propagates
    celery_app.conf.task_eager_propagates = False
    try:
        with caplog.at_level(logging.INFO, logger="requests_app.tasks"):
            result = send_notification.apply(args=[row.pk])
    finally:
        celery_app.conf.task_eager_propagates = propagates
    # then it retried with doubling backoff, counted each attempt, kept the row pending
    assert result.state == "FAILURE"
    assert isinstance(result.result, ConnectionRefusedError)
    ours = [r.getMessage() for r in caplog.records if r.name == "requests_app.tasks"]
    assert [m.rpartition("retry in ")[2] for m in ours[:-1]] == [
        "0.1s", "0.2s", "0.4s", "0.8s", "1.6s", "3.2s", "6.4s", "12.8s"
    ]
    assert ours[-1].endswith("left pending for the sweep")
    row.refresh_from_db()
    assert (row.status, row.attempts, row.sent_at) == ("pending", 9, None)
    assert row.last_error.startswith("ConnectionRefusedError(111")
    assert smtp.messages == []
    # when the server is back and the periodic sweep runs, twice
    smtp.start()
    counts = sweep_pending_work()
    row.refresh_from_db()
    counts_again = sweep_pending_work()
    # then the message arrived once, with the Message-ID it would always have had
    assert (counts["notifications"], sum(counts.values())) == (1, 1)
    assert sum(counts_again.values()) == 0
    msg = only_message(smtp)
    assert msg.message["Message-ID"] == message_id == row.message_id
    assert (row.status, row.attempts) == ("sent", 10)
    assert row.last_error.startswith("ConnectionRefusedError")  # why it waited


def test_permanent_refusal_is_recorded_and_not_retried(smtp, settings, server_request):
    # given a notification whose only recipient the server refuses for good (550)
    row = _pending(server_request)
    smtp.refuse_recipients = {"ops@example.org"}
    settings.RELAYDESK_SWEEP_AFTER_SECONDS = 0
    # when the task runs, then the sweep
    result = send_notification.apply(args=[row.pk]).get()
    counts = sweep_pending_work()
    # then it is marked failed with the server's answer, once, and never resent
    row.refresh_from_db()
    assert result == "skipped"
    assert (row.status, row.attempts, row.sent_at) == ("failed", 1, None)
    assert "550" in row.last_error and "mailbox unavailable" in row.last_error
    assert counts["notifications"] == 0
    assert smtp.messages == []


# --- broker down at the moment of the transition ------------------------------------


@contextmanager
def broker_unreachable() -> Iterator[None]:
    """Point the Celery app's publishing at a port where nothing listens, non-eager.

    ``broker_write_url`` rather than ``broker_url``: Celery lets the environment's
    ``CELERY_BROKER_URL`` (set in CI) win over ``conf.broker_url``, not over the write URL.
    """
    conf = celery_app.conf
    keys = ("broker_write_url", "task_always_eager", "broker_connection_timeout",
            "broker_transport_options")
    saved = {key: conf.get(key) for key in keys}

    def reset_pools() -> None:
        celery_app._pool = None  # the pools cache a connection to the old URL
        celery_app.amqp._producer_pool = None

    conf.update(broker_write_url="redis://127.0.0.1:1/0", task_always_eager=False,
                broker_connection_timeout=1, broker_transport_options={})
    reset_pools()
    try:
        yield
    finally:
        conf.update(saved)
        reset_pools()


def test_broker_down_still_commits_and_the_sweep_delivers_once(
    smtp, settings, team, requester, approver, django_capture_on_commit_callbacks, caplog
):
    # given a request awaiting approval and a broker that cannot be reached
    req = RelayRequestFactory(team=team, created_by=requester,
                              state=RequestState.PENDING_APPROVAL)
    settings.RELAYDESK_SWEEP_AFTER_SECONDS = 0
    with broker_unreachable(), caplog.at_level(logging.WARNING, logger="requests_app"):
        # when the approver rejects it
        act(req.pk, "reject", approver, "Not needed.",
            capture=django_capture_on_commit_callbacks)
    # then the decision and the outbox row are saved, the failed publish only logged
    req.refresh_from_db()
    assert req.state == RequestState.REJECTED
    [row] = Notification.objects.filter(request=req)
    assert (row.kind, row.status, row.attempts) == ("rejected", "pending", 0)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("requests_app")] == [
        f"broker unavailable: send_notification({row.pk},) left for the sweep"
    ]
    assert smtp.messages == []
    # when the broker is back and the sweep runs, twice
    first = sweep_pending_work()
    second = sweep_pending_work()
    # then the mail went out exactly once
    assert (first["notifications"], second["notifications"]) == (1, 0)
    msg = only_message(smtp)
    assert sorted(msg.rcpt_tos) == PAYMENTS_OWNERS
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("sent", 1)


# --- a real worker, and an SMTP outage in the middle of the run ---------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_smtp_outage_mid_run_every_mail_arrives_exactly_once(
    settings, team, requester, approver
):
    # given four requests awaiting approval, an approver, SMTP and a real worker using it
    reqs = [RelayRequestFactory(team=team, created_by=requester, fqdn=f"app{i}.example.org",
                                state=RequestState.PENDING_APPROVAL, check_verdict="pass")
            for i in range(4)]
    settings.RELAYDESK_SWEEP_AFTER_SECONDS = 0
    mail.outbox = []
    with SmtpTestServer() as smtp, celery_worker(extra_env={
        # test settings make Celery eager, so inside the worker a retry would run inline
        # at once instead of being published with its countdown: use the real semantics
        "DJANGO_SETTINGS_MODULE": "onboarding.settings.local",
        "DJANGO_DEBUG": "False",
        "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": smtp.host,
        "EMAIL_PORT": str(smtp.port),
        "EMAIL_TIMEOUT": "5",
        "RELAYDESK_MAIL_RETRY_BACKOFF": "0.5",
    }) as worker:
        log = worker.log  # type: ignore[attr-defined]

        def rows_where(**kw: object) -> int:
            return Notification.objects.filter(request__in=reqs, **kw).count()

        # when the first decision is mailed while SMTP is up
        services.request_act(request_id=reqs[0].pk, action="reject", by=approver,
                             comment="No.")
        assert wait_for(lambda: len(smtp.messages) == 1, timeout=20), "".join(log[-40:])
        # and SMTP goes down while three more decisions are made
        smtp.stop()
        services.request_act(request_id=reqs[1].pk, action="reject", by=approver,
                             comment="No.")
        services.request_act(request_id=reqs[2].pk, action="request_changes", by=approver,
                             comment="Fix PTR.")
        services.request_act(request_id=reqs[3].pk, action="approve", by=approver)
        assert wait_for(lambda: rows_where(status="pending", attempts__gte=2) == 3,
                        timeout=20), "".join(log[-40:])
        # and the sweep leaves rows whose own retry is still coming alone
        assert sweep_pending_work()["notifications"] == 0
        # and a redelivery puts duplicates in flight anyway (as a broker may)
        from requests_app.tasks import send_notification

        for pk in Notification.objects.filter(request__in=reqs, status="pending") \
                .values_list("pk", flat=True):
            send_notification.delay(pk)
        # and SMTP comes back on the same port
        smtp.start()
        # then every notification is sent, and every task (retries and duplicates) ends
        assert wait_for(lambda: rows_where(status="sent") == 4, timeout=30), (
            "".join(log[-60:])
        )
        assert wait_for(
            lambda: sum("relaydesk.send_notification[" in ln and " succeeded " in ln
                        for ln in log) == 7,
            timeout=20,
        ), "".join(log[-60:])
        received = smtp.messages
    # and each arrived exactly once, as the row records it
    rows = list(Notification.objects.filter(request__in=reqs).order_by("request_id"))
    assert Counter(m.message["Message-ID"] for m in received) == Counter(
        {row.message_id: 1 for row in rows}
    )
    assert [r.kind for r in rows] == ["rejected", "rejected", "changes_requested", "approved"]
    for row in rows[1:]:
        assert row.attempts >= 3  # at least two refused attempts, then the one that worked
        assert row.last_error.startswith("ConnectionRefusedError")
    assert all(sorted(m.rcpt_tos) == PAYMENTS_OWNERS for m in received)
    assert mail.outbox == []  # the worker sent it all; the test process sent nothing


def test_sweep_leaves_a_row_to_its_own_retry_chain(team, requester):
    # given a pending mail whose retry is scheduled in the future, and one whose chain died
    from datetime import timedelta

    from django.utils import timezone

    from requests_app.models import Notification
    from requests_app.tasks import sweep_pending_work

    req = RelayRequestFactory(team=team, created_by=requester)
    old = timezone.now() - timedelta(hours=1)
    waiting = Notification.objects.create(request=req, kind="approved", event_key="k1",
                                          recipients=["a@example.org"],
                                          next_attempt_at=timezone.now() + timedelta(minutes=5))
    orphan = Notification.objects.create(request=req, kind="approved", event_key="k2",
                                         recipients=["a@example.org"], next_attempt_at=old)
    Notification.objects.filter(pk__in=[waiting.pk, orphan.pk]).update(updated_at=old)
    # when the sweep runs (eagerly: the send happens here, into locmem)
    from django.core import mail

    counts = sweep_pending_work()
    # then only the orphaned row was sent again
    assert counts["notifications"] == 1
    assert Notification.objects.get(pk=orphan.pk).status == "sent"
    assert Notification.objects.get(pk=waiting.pk).status == "pending"
    assert len(mail.outbox) == 1
