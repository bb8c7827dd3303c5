"""End to end in headless Chromium: the pages work as people use them.

A real browser against ``live_server`` (a threaded Django server on loopback), real
DNS checks against the test DNS server (``tests/zones/default.zone``): with
``transaction=True`` the ``on_commit`` callbacks run, and Celery is eager in the test
settings, so a submit runs the checks before the browser sees the redirect.

Screenshots of the queue and the request page go to ``var/screenshots/`` (gitignored).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser

from requests_app import services
from requests_app.checks.labels import CHECK_LABELS
from requests_app.models import RelayRequest
from requests_app.models import RequestState
from requests_app.models import Team
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
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

GOOD_SERVER = {
    "FQDN": "app.example.org",
    "IPv6 addresses": "2a02:898:0:20::10",
    "IPv4 addresses": "81.2.69.10",
    "Purpose": "Order confirmations from the shop",
    "Contact e-mail": "payments-ops@example.org",
    "Sender domains": "example.org",
    "Expected messages per day": "100",
}
#: Checks a good server request yields against the default test zone.
SERVER_CHECK_IDS = ("address_policy", "forward", "reverse", "sender_spf", "sender_dmarc")


def fill_form(page: Page, values: dict[str, str]) -> None:
    """Type each value into the field whose visible label starts with the key."""
    for label, value in values.items():
        page.get_by_label(re.compile(rf"^{re.escape(label)}\b")).fill(value)


def expect_text(page: Page, selector: str, *needles: str) -> str:
    """The visible text of ``selector``, asserting it contains every needle."""
    text = page.locator(selector).inner_text()
    for needle in needles:
        assert needle in text, f"{needle!r} not in {selector}: {text!r}"
    return text


def submitted_request(team: Team, requester: AbstractBaseUser, **fields: Any) -> RelayRequest:
    """A server request submitted through the service: the real checks run on commit.

    The checks run ``asyncio.run``, so the submit happens off Playwright's event loop.
    """
    draft = RelayRequestFactory(team=team, created_by=requester, **fields)
    off_the_event_loop(services.request_act, request_id=draft.pk, action="submit",
                       by=requester, source_ip="127.0.0.1")
    return RelayRequest.objects.get(pk=draft.pk)


def test_requester_fixes_a_bad_form_then_submits_and_sees_passing_checks(
    live_server: Any, browser_session: BrowserSession, requester: AbstractBaseUser  # noqa: F811
) -> None:
    page = browser_session()
    log_in(page, live_server.url, requester.get_username(), PASSWORD)

    page.get_by_role("navigation").get_by_role("link", name="New request").click()
    page.get_by_role("link", name=re.compile("Server allowlisting")).click()
    assert page.get_by_role("heading", level=1).inner_text() == "Server allowlisting"

    fill_form(page, {**GOOD_SERVER, "FQDN": "bad..name", "IPv4 addresses": "300.1.1.1",
                     "Expected messages per day": "0"})
    page.get_by_role("button", name="Save and submit").click()

    errors = page.get_by_role("alert").all_inner_texts()
    assert any(e.startswith("FQDN: Not a valid host name (FQDN rule)") for e in errors), errors
    assert "IPv4 addresses: 300.1.1.1 is not a valid IPv4 address." in errors
    assert (
        "Expected messages per day: Expected volume must be a positive integer." in errors
    )
    assert len(errors) == 3, errors
    # Each error sits in its field's box, and the typed values survive the round trip.
    assert page.locator(".field.has-error label").all_inner_texts() == [
        "FQDN *", "IPv4 addresses", "Expected messages per day *",
    ]
    fqdn = page.get_by_label(re.compile(r"^FQDN\b"))
    assert fqdn.input_value() == "bad..name"
    # Screen readers hear the error with the field: aria-invalid plus aria-describedby.
    assert fqdn.get_attribute("aria-invalid") == "true"
    described_by = (fqdn.get_attribute("aria-describedby") or "").split()
    assert described_by, "FQDN input has no aria-describedby"
    description = " ".join(page.locator(f"[id='{i}']").inner_text() for i in described_by)
    assert "FQDN rule" in description, description
    assert RelayRequest.objects.count() == 0
    screenshot(page, "request-form-errors")

    fill_form(page, GOOD_SERVER)
    # While typing, the quick check asks the API and shows DNS results before submit.
    quick = page.locator("#quick-check")
    quick.get_by_text(
        re.compile(r"Host name points to its addresses \(A/AAAA\) \(app\.example\.org\)")
    ).wait_for()
    assert quick.get_by_role("heading").inner_text() == "Quick DNS check"
    assert "Failed" not in quick.locator(".verdict").all_inner_texts()
    page.get_by_role("button", name="Save and submit").click()

    page.wait_for_url(re.compile(r"/requests/\d+/$"))
    saved = RelayRequest.objects.get()
    assert saved.state == RequestState.PENDING_APPROVAL
    expect_text(page, "h1", f"#{saved.pk}", "app.example.org", "Pending approval")
    expect_text(page, "[role=status]", f"Request #{saved.pk} saved")
    facts = expect_text(page, "dl.facts", "2a02:898:0:20::10", "81.2.69.10", "example.org")
    assert "Payments (payments)" in facts
    checks = page.locator("section.checks")
    assert checks.locator("h2 .verdict").inner_text() == "Passed"
    rows = checks.locator("tbody tr")
    ids = {rows.nth(i).get_attribute("data-check") for i in range(rows.count())}
    assert set(SERVER_CHECK_IDS) <= ids, ids
    # people read each check's label and status, never the ids
    labels = set(rows.locator("td:nth-child(1)").all_inner_texts())
    assert {CHECK_LABELS[i] for i in SERVER_CHECK_IDS} <= labels, labels
    assert set(rows.locator("td:nth-child(3)").all_inner_texts()) == {"Passed"}
    expect_text(page, "section.timeline", requester.get_username(), "Submitted",
                "Checks recorded: Passed")


def test_approver_filters_the_queue_and_approves_with_a_comment(
    live_server: Any,
    browser_session: BrowserSession,  # noqa: F811
    team: Team,
    requester: AbstractBaseUser,
    approver: AbstractBaseUser,
) -> None:
    mine = submitted_request(team, requester)
    assert mine.state == RequestState.PENDING_APPROVAL and mine.check_verdict == "pass"
    other_team = TeamFactory(slug="billing", name="Billing")
    other = RelayRequestFactory(
        team=other_team, fqdn="other.example.org", ipv4=["81.2.69.77"], ipv6=[],
        state=RequestState.PENDING_APPROVAL,
    )

    page = browser_session()
    log_in(page, live_server.url, approver.get_username(), PASSWORD)
    page.get_by_role("link", name="Approval queue").click()
    page.wait_for_url(f"{live_server.url}/requests/queue/")
    queue = page.locator("table.queue tbody")
    assert queue.locator("tr").count() == 2

    row = queue.locator("tr", has_text="app.example.org")
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == f"#{mine.pk}"
    assert "2a02:898:0:20::10" in cells[4] and "81.2.69.10" in cells[4]
    assert cells[5:8] == ["payments", requester.get_username(), "Pending approval"]
    assert cells[8].startswith("Passed"), cells[8]
    assert re.search(r"\b\d+ passed\b", cells[8]), cells[8]
    screenshot(page, "queue")

    filters = page.locator("form.filters")
    filters.get_by_label("Team").select_option("payments")
    filters.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"team=payments"))
    assert queue.locator("td:nth-child(1)").all_inner_texts() == [f"#{mine.pk}"]
    assert filters.get_by_label("Team").input_value() == "payments"

    filters.get_by_label("Team").select_option("")
    filters.get_by_label("Search").fill("81.2.69.77")
    filters.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"q=81\.2\.69\.77"))
    assert queue.locator("td:nth-child(1)").all_inner_texts() == [f"#{other.pk}"]
    assert filters.get_by_label("Search").input_value() == "81.2.69.77"

    filters.get_by_label("Search").fill("81.2.69.10")
    filters.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"q=81\.2\.69\.10"))
    queue.get_by_role("link", name=f"#{mine.pk}").click()

    page.wait_for_url(f"{live_server.url}/requests/{mine.pk}/")
    expect_text(page, "h1", "Pending approval")
    screenshot(page, "request-pending")
    panel = page.locator("form.action-panel")
    panel.get_by_label("Comment").fill("Checked with the payments team lead.")
    panel.get_by_role("button", name="Approve").click()

    page.wait_for_load_state()
    expect_text(page, "[role=status]", f"Request #{mine.pk} approved.")
    # Provisioning runs on commit (eager Celery): the relay config is built at once.
    expect_text(page, "h1", "Active")
    approval = page.locator("section.timeline li", has_text="Approved (")
    assert approval.count() == 1
    expect_text(page, "section.timeline li:has-text('Approved (')", approver.get_username(),
                "Pending approval → Provisioning", "Checked with the payments team lead.")
    expect_text(page, "section.timeline", "Activated (Provisioning → Active)")
    assert RelayRequest.objects.get(pk=mine.pk).decided_by == approver
    screenshot(page, "request-active")


def test_copy_button_copies_a_snippet_of_an_active_request(
    live_server: Any, browser_session: BrowserSession,  # noqa: F811
    team: Team, requester: AbstractBaseUser,
) -> None:
    active = RelayRequestFactory(team=team, created_by=requester, state=RequestState.ACTIVE)
    # Read permission only so the test can check what landed on the clipboard.
    page = browser_session(permissions=["clipboard-read", "clipboard-write"])
    log_in(page, live_server.url, requester.get_username(), PASSWORD)
    page.goto(f"{live_server.url}/requests/{active.pk}/")
    screenshot(page, "request-active-requester")

    section = page.locator("#snippets")
    expect_text(page, "#snippets h2", "Settings for your server")
    first = section.locator("figure.snippet").first
    code = first.locator("pre").inner_text()
    assert "smtp-relay.example.org" in code or "relayhost" in code, code
    # A handle, not a locator by name: the accessible name changes with the label.
    button = first.get_by_role("button", name="Copy").element_handle()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    button.click()
    page.wait_for_function("b => b.textContent === 'Copied'", arg=button, timeout=3000)
    assert button.inner_text() == "Copied"
    assert page.evaluate("navigator.clipboard.readText()").strip() == code.strip()
    # The label goes back, so the button can be used again.
    page.wait_for_function("b => b.textContent === 'Copy'", arg=button, timeout=3000)
    assert errors == []


def test_requester_of_another_team_gets_404(
    live_server: Any, browser_session: BrowserSession, server_request: RelayRequest,  # noqa: F811
) -> None:
    outsider = member_of(TeamFactory(slug="marketing"), username="mallory")
    page = browser_session()
    log_in(page, live_server.url, outsider.get_username(), PASSWORD)

    response = page.goto(f"{live_server.url}/requests/{server_request.pk}/")
    assert response is not None and response.status == 404
    assert page.get_by_role("heading", level=1).inner_text() == "Not found"
    assert page.title() == "Not found · Relaydesk"
    assert "app.example.org" not in page.content()

    response = page.goto(f"{live_server.url}/requests/{server_request.pk}/edit/")
    assert response is not None and response.status == 404

    page.goto(f"{live_server.url}/requests/")
    expect_text(page, "table.grid tbody", "No requests yet.")

    response = page.goto(f"{live_server.url}/requests/queue/")
    assert response is not None and response.status == 403
    expect_text(page, "main", "Not allowed", "The queue is for approvers.")
