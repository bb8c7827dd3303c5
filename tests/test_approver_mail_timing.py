"""Approvers are mailed when a request reaches their queue, once per arrival of new content.

Not at submit (the checks have not run; a request whose checks fail never reaches the
queue), and not again when the same content comes back (an unchanged resubmit, an
approver's own re-run of the checks). The checks run for real against the test DNS
server (eager Celery, ``on_commit`` callbacks executed); the messages are Django's
rendered mails (locmem backend).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import pytest
from django.core import mail

from requests_app import services
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestState
from requests_app.tasks import run_request_checks
from tests.factories import RelayRequestFactory

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

pytestmark = pytest.mark.django_db

Capture = Callable[..., AbstractContextManager[object]]


def act(request_id: int, action: str, by: AbstractBaseUser, comment: str = "", *,
        capture: Capture, execute: bool = True) -> RelayRequest:
    """Fire an action; with ``execute`` run what it scheduled on commit (checks, mail)."""
    with capture(execute=execute):
        services.request_act(request_id=request_id, action=action, by=by, comment=comment)
    return RelayRequest.objects.get(pk=request_id)


def mails_to(user: AbstractBaseUser) -> list[str]:
    """Subjects of the messages sent to ``user`` so far."""
    return [m.subject for m in mail.outbox if user.email in m.to]


def approver_rows(req: RelayRequest) -> list[str]:
    return list(Notification.objects.filter(request=req, kind__in=(
        "awaiting_approval", "checks_error", "submitted")).values_list("kind", flat=True))


def test_submit_mails_no_approver_until_the_checks_put_it_in_the_queue(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given a draft
    req = RelayRequestFactory(team=team, created_by=requester)
    # when it is submitted and its checks have not run yet
    req = act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks,
              execute=False)
    # then the approvers have no mail and none is waiting in the outbox
    assert req.state == RequestState.CHECKING
    assert approver_rows(req) == [] and mails_to(approver) == []
    # when the checks pass
    with django_capture_on_commit_callbacks(execute=True):
        run_request_checks.delay(req.pk)
    # then the approvers get one "awaiting approval" mail
    assert RelayRequest.objects.get(pk=req.pk).state == RequestState.PENDING_APPROVAL
    assert mails_to(approver) == [
        f"[Relaydesk] #{req.pk} Server allowlisting for app.example.org awaits approval"]
    assert approver_rows(req) == ["awaiting_approval"]


def test_failing_checks_mail_the_owners_and_never_the_approvers(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given a draft whose name has no address in DNS
    req = RelayRequestFactory(team=team, created_by=requester, fqdn="missing.example.org")
    # when it is submitted and its checks fail
    req = act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    # then it went back to the owners, who were told; the approvers heard nothing
    assert req.state == RequestState.NEEDS_CHANGES
    assert mails_to(approver) == []
    assert approver_rows(req) == []
    assert any("checks failed" in s.lower() for s in mails_to(requester)), mails_to(requester)


def test_an_unchanged_resubmit_does_not_mail_the_approvers_again(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given a request that reached the queue (one approver mail) and was sent back
    req = RelayRequestFactory(team=team, created_by=requester)
    act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    assert len(mails_to(approver)) == 1
    act(req.pk, "request_changes", approver, "Is the PTR right?",
        capture=django_capture_on_commit_callbacks)
    # when the requester resubmits it unchanged, twice over (checks pass each time)
    act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    act(req.pk, "request_changes", approver, "Still?", capture=django_capture_on_commit_callbacks)
    req = act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    # then it is back in the queue, and the approvers still have that one mail
    assert req.state == RequestState.PENDING_APPROVAL
    assert len(mails_to(approver)) == 1
    assert approver_rows(req) == ["awaiting_approval"]


def test_changed_content_reaching_the_queue_mails_the_approvers_again(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given a request that reached the queue and was sent back for changes
    req = RelayRequestFactory(team=team, created_by=requester)
    act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    act(req.pk, "request_changes", approver, "Drop the IPv6 address.",
        capture=django_capture_on_commit_callbacks)
    # when the requester changes a checked field and resubmits
    services.request_update(request_id=req.pk, by=requester, data={"ipv6": []})
    req = act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    # then the new content reaching the queue is news: a second mail
    assert req.state == RequestState.PENDING_APPROVAL
    assert len(mails_to(approver)) == 2
    assert approver_rows(req) == ["awaiting_approval", "awaiting_approval"]


def test_an_approvers_recheck_of_a_queued_request_mails_nobody(
    team, requester, approver, django_capture_on_commit_callbacks
):
    # given a request in the queue (one mail)
    req = RelayRequestFactory(team=team, created_by=requester)
    act(req.pk, "submit", requester, capture=django_capture_on_commit_callbacks)
    # when an approver re-runs its checks and they pass again
    req = act(req.pk, "recheck", approver, capture=django_capture_on_commit_callbacks)
    # then no second mail
    assert req.state == RequestState.PENDING_APPROVAL
    assert len(mails_to(approver)) == 1


def test_an_override_sending_a_failed_request_to_the_queue_mails_the_approvers(
    team, requester, approver, second_approver, django_capture_on_commit_callbacks
):
    # given a request whose checks failed (back with the owners, approvers not told)
    req = RelayRequestFactory(team=team, created_by=requester,
                              state=RequestState.NEEDS_CHANGES, check_verdict="fail")
    # when an approver overrides the failed checks with a reason
    req = act(req.pk, "override_checks", approver, "PTR is published, cache is stale.",
              capture=django_capture_on_commit_callbacks)
    # then the approvers learn it is in the queue, with who overrode it and why
    assert req.state == RequestState.PENDING_APPROVAL
    [message] = [m for m in mail.outbox if second_approver.email in m.to]
    assert message.subject.endswith("awaits approval")
    assert f"{approver.get_username()} overrode its failed checks." in message.body
    assert "PTR is published, cache is stale." in message.body


def test_an_override_of_a_request_already_in_the_queue_mails_nobody(
    team, requester, approver, second_approver, django_capture_on_commit_callbacks
):
    # given a request in the queue whose checks could not run (error verdict)
    req = RelayRequestFactory(team=team, created_by=requester,
                              state=RequestState.PENDING_APPROVAL, check_verdict="error")
    # when an approver overrides it
    req = act(req.pk, "override_checks", approver, "DNS outage; records checked by hand.",
              capture=django_capture_on_commit_callbacks)
    # then nobody is told it "arrived": it was already there
    assert req.state == RequestState.PENDING_APPROVAL
    assert mail.outbox == []
    assert approver_rows(req) == []
