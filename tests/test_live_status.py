"""The checking page updates by itself when the results are in.

The endpoint (``GET /requests/<id>/status/``) answers the state, verdict and attempt to
whoever may see the request; the page polls it with ``static/relaydesk.js`` while the
request is ``checking``, and without JavaScript a ``<noscript>`` refresh does the same.
Proven in headless Chromium: the page is open while the request is checking, the check
task records the results (real DNS checks against the test DNS server), and the page
shows them without anyone reloading it, with JavaScript and without.
"""

from __future__ import annotations

import re
from datetime import UTC
from datetime import timedelta
from typing import TYPE_CHECKING
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from requests_app.models import RelayRequest
from requests_app.models import RequestState
from requests_app.tasks import run_request_checks
from tests.factories import PASSWORD
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of
from tests.support.browser import BrowserSession
from tests.support.browser import browser_session  # noqa: F401 - pytest fixture
from tests.support.browser import log_in
from tests.support.browser import off_the_event_loop
from tests.support.browser import playwright_driver  # noqa: F401 - pytest fixture
from tests.support.browser import screenshot

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from playwright.sync_api import Page


def browser(user: AbstractBaseUser) -> Client:
    client = Client()
    client.force_login(user)
    return client


def checking(team: Any, requester: AbstractBaseUser, **fields: Any) -> RelayRequest:
    """A request whose checks have not reported yet (the task is not run)."""
    return RelayRequestFactory(team=team, created_by=requester, state=RequestState.CHECKING,
                               **fields)


# --- the endpoint and the page's hooks ------------------------------------------------


@pytest.mark.django_db
def test_status_answers_state_verdict_and_attempt_to_who_may_see_the_request(
    team, requester, auditor
):
    req = checking(team, requester)
    for reader in (requester, auditor):
        response = browser(reader).get(f"/requests/{req.pk}/status/")
        assert response.status_code == 200
        assert response.json() == {
            "id": req.pk, "state": "checking", "state_label": "Checking", "checking": True,
            "check_verdict": "", "check_attempts": 0, "checks_ran_at": None,
            "poll_seconds": 3,
            "message": "DNS checks are running. This page shows the results when they are in.",
        }
        # never cached: a cached "checking" would keep the page waiting forever
        assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_status_of_a_request_done_checking_tells_the_page_to_stop(team, requester):
    req = RelayRequestFactory(team=team, created_by=requester,
                              state=RequestState.PENDING_APPROVAL, check_verdict="pass")
    body = browser(requester).get(f"/requests/{req.pk}/status/").json()
    assert (body["state"], body["checking"], body["check_verdict"], body["poll_seconds"]) == (
        "pending_approval", False, "pass", None)


@pytest.mark.django_db
def test_status_is_not_found_for_other_teams_and_needs_a_login(team, requester):
    req = checking(team, requester)
    stranger = member_of(TeamFactory(slug="billing"), username="eve")
    assert browser(stranger).get(f"/requests/{req.pk}/status/").status_code == 404
    anonymous = Client().get(f"/requests/{req.pk}/status/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]


@pytest.mark.django_db
def test_only_a_checking_page_polls_and_refreshes(team, requester):
    req = checking(team, requester)
    page = browser(requester).get(f"/requests/{req.pk}/").content.decode()
    assert f'data-live-status="/requests/{req.pk}/status/"' in page
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in page
    done = RelayRequestFactory(team=team, created_by=requester,
                               state=RequestState.PENDING_APPROVAL, check_verdict="pass")
    page = browser(requester).get(f"/requests/{done.pk}/").content.decode()
    assert "data-live-status" not in page and 'http-equiv="refresh"' not in page


# --- in a real browser -----------------------------------------------------------------


def record_checks(request_id: int) -> None:
    """What the worker does: run the DNS checks and record them (off Playwright's loop)."""
    off_the_event_loop(run_request_checks.run, request_id)


def wait_for_results(page: Page, request_id: int) -> None:
    """The page shows the new state and the check rows (Playwright waits, up to 10 s)."""
    page.locator("h1 .state-pending_approval").wait_for()
    assert page.locator("section.checks tbody tr").count() >= 5
    assert page.locator("[data-live-status]").count() == 0


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no_javascript"])
def test_the_open_checking_page_shows_the_results_without_a_manual_reload(
    live_server: Any, browser_session: BrowserSession,  # noqa: F811
    team: Any, requester: AbstractBaseUser, javascript: bool,
) -> None:
    # given the requester looking at their request while its checks run
    req = checking(team, requester)
    page = browser_session(java_script_enabled=javascript)
    log_in(page, live_server.url, requester.get_username(), PASSWORD)
    page.goto(f"{live_server.url}/requests/{req.pk}/")
    assert page.locator("h1 .state-checking").count() == 1
    assert page.locator("section.checks tbody tr").count() == 0
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    # when the worker records the results
    record_checks(req.pk)
    assert RelayRequest.objects.get(pk=req.pk).state == RequestState.PENDING_APPROVAL
    # then the open page shows them by itself (nobody calls reload or goto)
    wait_for_results(page, req.pk)
    assert navigations and all(re.search(rf"/requests/{req.pk}/$", u) for u in navigations)
    screenshot(page, f"live-status-{'js' if javascript else 'nojs'}")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_text_being_typed_is_not_thrown_away_when_the_results_come_in(
    live_server: Any, browser_session: BrowserSession,  # noqa: F811
    team: Any, requester: AbstractBaseUser,
) -> None:
    # given the requester typing a comment while the checks run
    req = checking(team, requester)
    page = browser_session()
    log_in(page, live_server.url, requester.get_username(), PASSWORD)
    page.goto(f"{live_server.url}/requests/{req.pk}/")
    box = page.locator("#comment-body")
    box.fill("Half a question")
    # when the results are recorded
    record_checks(req.pk)
    # then the page says they are in and offers the reload; the text is still there
    ready = page.locator(".live-status-ready")
    ready.wait_for()
    assert "The check results are in." in ready.inner_text()
    assert box.input_value() == "Half a question"
    assert page.locator("h1 .state-checking").count() == 1
    # and the button shows them
    ready.get_by_role("button", name="Show them").click()
    wait_for_results(page, req.pk)


@pytest.mark.django_db
def test_a_request_no_worker_has_taken_says_it_waits_and_that_nothing_is_lost(
        team, requester):
    # given a request submitted five minutes ago that no worker has claimed (a worker or
    # its broker down): no lease, no retry due
    req = checking(team, requester)
    since = timezone.now() - timedelta(minutes=5)
    RelayRequest.objects.filter(pk=req.pk).update(updated_at=since)
    client = browser(requester)
    # then the page and the live status say it waits for a worker since then
    stamp = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    page = client.get(f"/requests/{req.pk}/").content.decode()
    assert f"Waiting for a check worker since {stamp} UTC" in page
    assert "Nothing is lost" in page
    assert "DNS checks are running" not in page
    status = client.get(f"/requests/{req.pk}/status/").json()
    assert status["message"].startswith(f"Waiting for a check worker since {stamp} UTC")
    # and in Bokmål too
    norwegian = client.get(f"/requests/{req.pk}/", HTTP_ACCEPT_LANGUAGE="nb").content.decode()
    assert f"Venter på en kontrollarbeider siden {stamp} UTC" in norwegian
    # when a worker claims it (a lease) the page says the checks are running
    RelayRequest.objects.filter(pk=req.pk).update(
        check_next_attempt_at=timezone.now() + timedelta(seconds=15))
    assert "DNS checks are running." in client.get(f"/requests/{req.pk}/").content.decode()
    # and a retry due later names its attempt
    RelayRequest.objects.filter(pk=req.pk).update(check_attempts=2)
    assert "attempt 3" in client.get(f"/requests/{req.pk}/status/").json()["message"]
    # a retry that fell due a moment ago (its task is running; retries take no lease)
    # is not called forgotten, however long ago the last run was
    RelayRequest.objects.filter(pk=req.pk).update(
        check_next_attempt_at=timezone.now() - timedelta(seconds=2),
        checks_ran_at=timezone.now() - timedelta(minutes=5))
    assert "attempt 3" in client.get(f"/requests/{req.pk}/status/").json()["message"]
    # but one overdue for minutes waits for a worker, since it fell due
    due = timezone.now() - timedelta(minutes=3)
    RelayRequest.objects.filter(pk=req.pk).update(check_next_attempt_at=due)
    assert client.get(f"/requests/{req.pk}/status/").json()["message"].startswith(
        "Waiting for a check worker since "
        f"{due.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC")
