"""Both journeys end to end in headless Chromium, at 1280 px and at a 390 px phone, with
axe-core on every page and no sideways scrolling.

* requester: new request -> checks fail (labels, evidence) -> comment to the approvers ->
  changes -> checks pass -> (approver approves) -> snippets;
* approver, by keyboard only: skip link -> queue -> request -> comment -> approve, after
  a Reject opened its confirmation dialog and was cancelled;
* every other page (lists, forms, the request page in each state, queue, dashboard,
  relay config, directory to-do, credentials pages, confirmation and error pages).

axe-core comes from the npm registry, pinned in ``tests/js/package-lock.json`` (``npm ci``
there, as ``.ci/run`` does) and injected with Playwright's ``add_script_tag``: a page
passes with zero serious or critical violations (the rule ids and elements are listed
otherwise). Each step's screenshot goes to ``var/screenshots/<test>/<step>.png``
(git-ignored); the folder is printed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.utils import translation
from django.utils.text import capfirst
from django.utils.translation import gettext

from requests_app import relay
from requests_app import services
from requests_app.actions import ACTIONS
from requests_app.models import CheckResult
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.models import Team
from tests.conftest import require
from tests.factories import PASSWORD
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.support.browser import SCREENSHOT_DIR
from tests.support.browser import BrowserSession
from tests.support.browser import browser_session  # noqa: F401 - pytest fixture
from tests.support.browser import log_in
from tests.support.browser import off_the_event_loop
from tests.support.browser import playwright_driver  # noqa: F401 - pytest fixture

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
WIDTHS = {"1280": DESKTOP, "390": PHONE}
#: What fails a page: axe's two highest impacts.
BLOCKING = ("serious", "critical")

RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 4).map(n => n.target.join(" "))}));
}"""


class Proof:
    """Screenshots, the no-sideways-scroll rule and axe-core, step by step.

    Failures are collected and asserted at the end, so one run lists every page that
    breaks a rule (with axe's rule ids and the elements), not only the first.
    """

    def __init__(self, name: str) -> None:
        self.folder = SCREENSHOT_DIR / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.problems: list[str] = []
        self.steps: list[str] = []
        print(f"\nscreenshots: {self.folder}")

    def check(self, page: Page, step: str, *, axe: bool = True) -> None:
        """Screenshot ``step``; note a page wider than the window and, unless the page
        runs without JavaScript (``axe=False``), axe's serious and critical findings."""
        page.wait_for_load_state()
        self.steps.append(step)
        page.screenshot(path=str(self.folder / f"{step}.png"), full_page=True)
        width, inner = page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth]")
        if width > inner:
            wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
              .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
                           || e.scrollWidth > e.clientWidth + 1
                              && getComputedStyle(e).overflowX === 'visible')
              .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' +
                               Math.round(e.getBoundingClientRect().right))""")
            self.problems.append(f"{step}: page is {width} px wide at {inner} px: {wide}")
        if not axe:
            return
        page.add_script_tag(path=str(AXE))
        for v in page.evaluate(RUN_AXE):
            if v["impact"] in BLOCKING:
                self.problems.append(f"{step}: axe {v['impact']} {v['id']} ({v['help']}) "
                                     f"at {v['nodes']}")

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)


@pytest.fixture
def proof(request: pytest.FixtureRequest) -> Iterator[Proof]:
    require(AXE.is_file(), f"{AXE} missing: run `npm ci` in tests/js (axe-core, pinned)")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name.removeprefix("test_")).strip("-")
    yield Proof(name)


def state_of(pk: int) -> str:
    return RelayRequest.objects.values_list("state", flat=True).get(pk=pk)


def tab_to(page: Page, selector: str, *, limit: int = 80) -> None:
    """Press Tab until the element matching ``selector`` has the focus (keyboard only)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement && document.activeElement.matches(s)",
                         selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


#: The requester's journey: English at both widths, and once in Norwegian Bokmål on the
#: phone (the browser asks for it with Accept-Language; docs/i18n.md).
JOURNEYS = [("1280", "en"), ("390", "en"), ("390", "nb")]
LOCALES = {"en": "en-GB", "nb": "nb-NO"}
#: What the quick check says about "not a host!!" (the FQDN rule's words, translated).
QUICK_ERROR = {"en": "contains a space", "nb": "inneholder et mellomrom"}


def words(lang: str) -> Callable[[str], str]:
    """The pages' words in ``lang``: looked up in the catalogs the app serves, so the
    journey follows the translation instead of a second copy of it."""
    def t(text: str) -> str:
        with translation.override(lang):
            return gettext(text)
    return t


def log_in_in(page: Page, base_url: str, username: str, t: Callable[[str], str]) -> None:
    """``log_in`` in the page's language (the fields by id, the button by its word)."""
    page.goto(f"{base_url}/accounts/login/")
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name=t("Log in")).click()
    page.wait_for_url(f"{base_url}/requests/")


@pytest.mark.parametrize(("width", "lang"), JOURNEYS)
def test_requester_journey_new_request_to_snippets(
    live_server: Any, browser_session: BrowserSession,  # noqa: F811
    requester: AbstractBaseUser, approver: AbstractBaseUser, proof: Proof, width: str,
    lang: str,
) -> None:
    # The browser asks for its language (Accept-Language); the words come from the catalogs.
    t = words(lang)
    page = browser_session(viewport=WIDTHS[width], locale=LOCALES[lang])
    log_in_in(page, live_server.url, requester.get_username(), t)
    assert page.locator("html").get_attribute("lang") == lang
    proof.check(page, "01-list")

    page.get_by_role("navigation").get_by_role("link", name=t("New request")).click()
    assert page.get_by_role("link", name=t("New request"), exact=True).first.get_attribute(
        "aria-current") == "page"
    proof.check(page, "02-choose")
    page.get_by_role("link", name=re.compile(t("Server allowlisting"))).click()
    # A first try with a bad value: the quick check puts the reason under the field.
    page.get_by_label(re.compile(r"^FQDN\b")).fill("not a host!!")
    page.locator("#id_fqdn_quick_error").wait_for()
    assert QUICK_ERROR[lang] in page.locator("#id_fqdn_quick_error").inner_text()
    assert page.get_by_label(re.compile(r"^FQDN\b")).get_attribute("aria-invalid") == "true"
    proof.check(page, "03-form-quick-error")
    values = {
        "FQDN": "app.example.org", "IPv4 addresses": "81.2.69.77",
        "Purpose": "Order confirmations from the shop",
        "Contact e-mail": "payments-ops@example.org", "Sender domains": "example.org",
        "Expected messages per day": "100",
    }
    for label, value in values.items():
        page.get_by_label(re.compile(rf"^{re.escape(t(label))}\b")).fill(value)
    quick = page.locator("#quick-check")
    quick.get_by_text(t("Reverse DNS names the host (PTR)")).wait_for()
    assert page.locator("#id_fqdn_quick_error").count() == 0
    proof.check(page, "04-form-quick-check")
    page.get_by_role("button", name=t("Save and submit")).click()

    # the checks ran (eager Celery): failed, said in words, with the record to publish
    page.wait_for_url(re.compile(r"/requests/\d+/$"))
    pk = int(re.search(r"/requests/(\d+)/$", page.url).group(1))
    page.wait_for_function("() => !document.querySelector('h1 .state-checking')")
    page.reload()
    assert state_of(pk) == S.NEEDS_CHANGES
    checks = page.locator("section.checks")
    assert checks.locator("h2 .verdict").inner_text() == t("Failed")
    labels = checks.locator("tbody td:nth-child(1)").all_inner_texts()
    assert t("Reverse DNS names the host (PTR)") in labels and "reverse" not in labels
    sent_back = capfirst(t("sent back by its checks"))
    assert f"{sent_back} ({t('Checking')} → {t('Needs changes')})" in page.locator(
        "section.timeline").inner_text()
    proof.check(page, "05-checks-failed")

    # a word to the approvers in the conversation
    thread = page.locator("#comments")
    if thread.count():
        thread.get_by_role("textbox").fill("The shop moves to 81.2.69.10 next week.")
        thread.get_by_role("button", name=t("Add comment")).click()
        page.wait_for_load_state()
        assert "moves to 81.2.69.10" in page.locator("#comments").inner_text()
        proof.check(page, "06-commented")

    # the changes: the right address, submitted again
    page.get_by_role("link", name=t("Edit")).click()
    page.get_by_label(re.compile(rf"^{t('IPv4 addresses')}\b")).fill("81.2.69.10")
    proof.check(page, "07-edit")
    page.get_by_role("button", name=t("Save and submit")).click()
    page.wait_for_url(re.compile(rf"/requests/{pk}/$"))
    page.wait_for_function("() => !document.querySelector('h1 .state-checking')")
    page.reload()
    assert state_of(pk) == S.PENDING_APPROVAL
    # passed, or with a warning only (no DKIM selector given): nothing blocks approval
    assert page.locator("section.checks h2 .verdict").inner_text() in (t("Passed"), t("Warning"))
    proof.check(page, "08-pending-approval")

    # an approver approves (the approver's own journey is the test below)
    desk = browser_session(viewport=WIDTHS[width])
    log_in(desk, live_server.url, approver.get_username(), PASSWORD)
    desk.goto(f"{live_server.url}/requests/{pk}/")
    desk.get_by_role("button", name="Approve", exact=True).click()
    desk.wait_for_load_state()
    assert state_of(pk) == S.ACTIVE

    # the requester's page has the settings to copy
    page.reload()
    page.locator("#snippets").wait_for()
    assert t("Settings for your server") in page.locator("#snippets h2").inner_text()
    if lang != "en":  # no English sentence of the page left on the way
        assert "Settings for your server" not in page.content()
    proof.check(page, "09-active-snippets")
    proof.assert_clean()


@pytest.mark.parametrize(("width", "lang"), JOURNEYS)
def test_approver_journey_by_keyboard_queue_to_approval(
    live_server: Any, browser_session: BrowserSession,  # noqa: F811
    team: Team, requester: AbstractBaseUser, approver: AbstractBaseUser, proof: Proof,
    width: str, lang: str,
) -> None:
    t = words(lang)
    draft = RelayRequestFactory(team=team, created_by=requester)
    off_the_event_loop(services.request_act, request_id=draft.pk, action="submit",
                       by=requester, source_ip="127.0.0.1")
    assert state_of(draft.pk) == S.PENDING_APPROVAL

    page = browser_session(viewport=WIDTHS[width], locale=LOCALES[lang])
    # the login form, by keyboard
    page.goto(f"{live_server.url}/accounts/login/")
    tab_to(page, "input[name=username]")
    page.keyboard.type(approver.get_username())
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/requests/")

    page.goto(f"{live_server.url}/requests/queue/")
    assert page.locator("html").get_attribute("lang") == lang
    # the first Tab reaches the skip link, which moves the focus to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == t("Skip to main content")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    assert page.locator("nav a[aria-current=page]").inner_text() == t("Approval queue")
    proof.check(page, "01-queue")
    tab_to(page, f"main a[href='/requests/{draft.pk}/']")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/requests/{draft.pk}/")
    proof.check(page, "02-request")

    # the evidence comes before the one action panel
    order = page.evaluate("""() => {
      const c = document.getElementById('checks'), a = document.getElementById('actions');
      return c.compareDocumentPosition(a) & Node.DOCUMENT_POSITION_FOLLOWING; }""")
    assert order, "the action panel is above the evidence"
    assert page.locator("textarea[name=comment]").count() == 1

    # a comment, then Reject: the dialog asks, Cancel has the focus, Escape changes nothing
    tab_to(page, "#action-comment")
    page.keyboard.type("Checked with the payments team lead.")
    tab_to(page, "button.action-reject")
    page.keyboard.press("Enter")
    dialog = page.locator("dialog.confirm-dialog")
    dialog.wait_for()
    assert t(ACTIONS["reject"].confirm) in dialog.inner_text()
    assert page.evaluate("document.activeElement.textContent") == t("Cancel")
    proof.check(page, "03-reject-dialog")
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    assert state_of(draft.pk) == S.PENDING_APPROVAL

    tab_to(page, "button.action-approve")
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    page.locator(".msg", has_text=ACTIONS["approve"].done_message(draft.pk, t)).wait_for()
    assert state_of(draft.pk) == S.ACTIVE
    approved = RelayRequest.objects.get(pk=draft.pk)
    assert approved.decision_note == "Checked with the payments team lead."
    approved_line = (f"{capfirst(t(ACTIONS['approve'].past))} "
                     f"({t('Pending approval')} → {t('Provisioning')})")
    assert approved_line in page.locator("section.timeline").inner_text()
    proof.check(page, "04-approved")
    proof.assert_clean()


def test_without_javascript_a_destructive_action_asks_on_a_page(
    live_server: Any, browser_session: BrowserSession,  # noqa: F811
    team: Team, requester: AbstractBaseUser, approver: AbstractBaseUser, proof: Proof,
) -> None:
    pending = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                                  check_verdict="pass")
    page = browser_session(viewport=PHONE, java_script_enabled=False)
    log_in(page, live_server.url, approver.get_username(), PASSWORD)
    page.goto(f"{live_server.url}/requests/{pending.pk}/")
    page.get_by_label("Comment").fill("Not a service of ours.")
    page.get_by_role("button", name="Reject").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == f"Reject request #{pending.pk}?"
    assert state_of(pending.pk) == S.PENDING_APPROVAL
    proof.check(page, "01-confirm-page", axe=False)  # axe runs in the page: JS is off
    page.get_by_role("button", name="Reject").click()
    page.wait_for_load_state()
    assert state_of(pending.pk) == S.REJECTED
    assert RelayRequest.objects.get(pk=pending.pk).decision_note == "Not a service of ours."
    proof.assert_clean()


def _every_state(team: Team, requester: AbstractBaseUser) -> dict[str, RelayRequest]:
    """One request per state the request page shows differently, with check results."""
    made = {}
    for n, state in enumerate((S.DRAFT, S.CHECKING, S.NEEDS_CHANGES, S.PENDING_APPROVAL,
                               S.PROVISIONING_FAILED, S.ACTIVE, S.REJECTED, S.WITHDRAWN,
                               S.REVOKED, S.EXPIRED)):
        req = RelayRequestFactory(team=team, created_by=requester, state=state,
                                  fqdn=f"host{n}.xn--bcher-kva.example",
                                  ipv4=[f"81.2.69.{100 + n}"], ipv6=[],
                                  check_verdict="" if state == S.DRAFT else "fail",
                                  provision_error="renderer refused it"
                                  if state == S.PROVISIONING_FAILED else "")
        if state != S.DRAFT:
            CheckResult.objects.create(request=req, check_id="reverse",
                                       subject=req.ipv4[0], status="fail",
                                       detail="no PTR record", evidence={"ptr": []})
        made[state] = req
    made["account"] = RelayRequestFactory(team=team, created_by=requester, account=True,
                                          state=S.ACTIVE)
    return made


def test_every_page_has_no_serious_accessibility_violation_and_fits_a_phone(
    live_server: Any, browser_session: BrowserSession,  # noqa: F811
    team: Team, requester: AbstractBaseUser, approver: AbstractBaseUser,
    auditor: AbstractBaseUser, proof: Proof,
) -> None:
    made = _every_state(team, requester)
    other = TeamFactory(slug="billing", name="Billing")
    RelayRequestFactory(team=other, fqdn="other.example.org", ipv4=["81.2.69.77"], ipv6=[],
                        state=S.PENDING_APPROVAL, check_verdict="pass")
    off_the_event_loop(relay.relay_config_rebuild, reason="test")
    RelayRequest.objects.filter(pk=made[S.REVOKED].pk).update(state=S.ACTIVE)
    off_the_event_loop(relay.relay_config_rebuild, reason="test")
    RelayRequest.objects.filter(pk=made[S.REVOKED].pk).update(state=S.REVOKED)

    owner_pages = ["/requests/", "/requests/new/", "/requests/new/server/",
                   "/requests/new/account/",
                   *[f"/requests/{r.pk}/" for r in made.values()],
                   f"/requests/{made[S.DRAFT].pk}/edit/", "/requests/999999/"]
    approver_pages = ["/requests/queue/", "/requests/dashboard/", "/requests/directory/",
                      "/requests/credentials/overdue/", "/relay-config/",
                      "/relay-config/v1/", "/relay-config/diff/1/2/",
                      *[f"/requests/{made[s].pk}/" for s in (S.PENDING_APPROVAL, S.ACTIVE,
                                                               S.PROVISIONING_FAILED)],
                      f"/requests/{made['account'].pk}/"]
    # axe on every page at the phone width (the journeys run it at both widths); at
    # 1280 px the approvers' wide pages are screenshot and checked for sideways scrolling.
    page = browser_session(viewport=PHONE)
    page.goto(f"{live_server.url}/accounts/login/")
    proof.check(page, "390-login")
    log_in(page, live_server.url, requester.get_username(), PASSWORD)
    for path in owner_pages:
        page.goto(live_server.url + path)
        proof.check(page, f"390-owner{path.strip('/').replace('/', '_')}")
    # the confirmation page (the no-JavaScript step of Withdraw)
    page.goto(f"{live_server.url}/requests/{made[S.DRAFT].pk}/")
    page.evaluate("document.querySelectorAll('[data-confirm]').forEach("
                  "b => b.removeAttribute('data-confirm'))")
    page.get_by_role("button", name="Withdraw").click()
    page.wait_for_load_state()
    proof.check(page, "390-confirm-withdraw")
    for viewport_name, viewport in WIDTHS.items():
        desk = browser_session(viewport=viewport)
        log_in(desk, live_server.url, approver.get_username(), PASSWORD)
        for path in approver_pages:
            desk.goto(live_server.url + path)
            proof.check(desk, f"{viewport_name}-approver{path.strip('/').replace('/', '_')}",
                        axe=viewport is PHONE)
    assert len(proof.steps) == len(owner_pages) + 2 * len(approver_pages) + 2
    proof.assert_clean()


@pytest.fixture(autouse=True)
def _second_approver_for_sod() -> None:
    """Approvers who are not on the owning team exist for every decision made here."""
    ApproverFactory(username="erin")
