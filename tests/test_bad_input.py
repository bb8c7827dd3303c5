"""No input gives a 500: bad query parameters, bodies and free text answer 400 by name.

Drives the real URLs (web pages with a session, the JSON API with a token) with NUL
bytes, numbers out of range, non-ASCII digits, over-long text, control and
text-direction characters. Each answer is a 400 that names the parameter or field and
the rule; nothing is saved. Mails quoting such text stay bounded.
"""

from __future__ import annotations

from itertools import product

import pytest
from django.test import Client
from rest_framework.test import APIClient

from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState as S
from requests_app.notifications import MAIL_LIST_LIMIT
from requests_app.notifications import MAIL_TEXT_LIMIT
from requests_app.notifications import notification_record
from requests_app.notifications import render_notification
from requests_app.validators import FREE_TEXT_LIMITS
from requests_app.validators import validate_free_text
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory

pytestmark = pytest.mark.django_db

HUGE = "9999999999999999999999999"
BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
        "\u2069"]
SERVER = {
    "kind": "server", "team": "payments", "fqdn": "app.example.org", "ipv4": ["81.2.69.10"],
    "purpose": "Order confirmations", "contact_email": "ops@example.org",
    "sender_domains": ["example.org"], "expected_daily_volume": 500,
}
ACCOUNT = {
    "kind": "account", "team": "payments", "account_name": "svc-orders",
    "use_case": "Order mails", "tls_mode": "smtps", "contact_email": "ops@example.org",
    "sender_addresses": ["noreply@example.org"], "expected_daily_volume": 50,
}
FORM = {"team": "payments", "fqdn": "app.example.org", "ipv4": "81.2.69.10", "ipv6": "",
        "purpose": "Shop mails", "contact_email": "ops@example.org",
        "sender_domains": "example.org", "expected_daily_volume": "10"}


def web(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def api(user) -> APIClient:
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)
    return client


# --- query parameters ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "url", "name"),
    [
        pytest.param("approver", "/requests/audit.csv?request=²", "request", id="csv_superscript"),
        pytest.param("approver", f"/requests/audit.csv?request={HUGE}", "request",
                     id="csv_out_of_range"),
        pytest.param("approver", "/requests/audit.csv?request=-1", "request", id="csv_negative"),
        pytest.param("approver", "/requests/audit.csv?request=%00", "request", id="csv_nul"),
        pytest.param("approver", "/requests/queue/?page=١", "page", id="queue_arabic_digit"),
        pytest.param("approver", f"/requests/queue/?page={HUGE}", "page", id="queue_huge_page"),
        pytest.param("requester", "/requests/?page=%EF%BC%92", "page", id="list_fullwidth"),
        pytest.param("requester", "/requests/?page=%201", "page", id="list_spaced_page"),
        pytest.param("approver", "/requests/queue/?team=a%00b", "team", id="queue_nul"),
        pytest.param("approver", "/requests/queue/?state=bogus", "state", id="queue_state"),
        pytest.param("approver", "/requests/queue/?kind=fax", "kind", id="queue_kind"),
        pytest.param("approver", "/requests/queue/?drifted=maybe", "drifted",
                     id="queue_flag"),
        pytest.param("approver", "/requests/queue/?q=" + "x" * 201, "q", id="queue_long_q"),
        pytest.param("approver", "/requests/queue/?q=%E2%80%AEabc", "q", id="queue_bidi_q"),
    ],
)
def test_bad_query_parameter_on_a_page_is_a_400_naming_it(
    who, url, name, requester, approver
):
    # given a signed-in user of the page
    user = {"requester": requester, "approver": approver}[who]
    # when the page is asked for with a bad parameter
    response = web(user).get(url)
    # then it answers 400 with a page saying which parameter is wrong
    assert response.status_code == 400, response.content[:300]
    assert f"&#x27;{name}&#x27;" in response.content.decode()


@pytest.mark.parametrize(
    ("query", "name"),
    [
        pytest.param(f"limit={HUGE}", "limit", id="limit_out_of_range"),
        pytest.param("limit=١", "limit", id="limit_arabic_digit"),
        pytest.param("limit=0", "limit", id="limit_zero"),
        pytest.param("limit=abc", "limit", id="limit_text"),
        pytest.param(f"offset={HUGE}", "offset", id="offset_out_of_range"),
        pytest.param("offset=-1", "offset", id="offset_negative"),
        pytest.param("state=a%00b", "state", id="state_nul"),
        pytest.param("state=bogus", "state", id="state_unknown"),
        pytest.param("kind=fax", "kind", id="kind_unknown"),
        pytest.param("team=" + "t" * 51, "team", id="team_long"),
        pytest.param("drifted=perhaps", "drifted", id="drifted_unknown"),
    ],
)
def test_bad_query_parameter_on_the_api_is_a_400_naming_it(query, name, requester):
    # when the list is asked for with a bad parameter
    response = api(requester).get(f"/api/requests/?{query}")
    # then the answer is JSON naming the parameter
    assert response.status_code == 400, response.content[:300]
    assert list(response.json()) == [name]
    assert name in response.json()[name][0]


def test_good_query_parameters_still_filter_and_page(requester, team):
    # given three requests of the requester's team
    RelayRequestFactory.create_batch(3, team=team, created_by=requester)
    # when the API is paged and filtered with valid values
    page = api(requester).get("/api/requests/?limit=2&offset=1&state=draft&kind=server"
                              "&team=payments&drifted=0")
    # then the page holds the rest after the first
    assert page.status_code == 200
    assert (page.json()["count"], len(page.json()["results"])) == (3, 2)


def test_non_ascii_digits_do_not_route_to_a_request(requester, team):
    # given a request
    req = RelayRequestFactory(team=team, created_by=requester)
    arabic = "".join(chr(0x0660 + int(d)) for d in str(req.pk))
    assert int(arabic) == req.pk  # what a route taking int() would look up
    # when its number is written in Arabic-Indic digits
    response = api(requester).get(f"/api/requests/{arabic}/")
    # then there is no such URL (int("١") would have found request #1)
    assert response.status_code == 404


PAGES = ["/requests/", "/requests/queue/", "/requests/audit.csv", "/requests/dashboard/",
         "/relay-config/", "/api/requests/", "/requests/directory/"]
PARAMS = ["page", "request", "limit", "offset", "state", "kind", "team", "q", "drifted",
          "verdict"]
VALUES = ["%00", "²", "١", HUGE, "-1", "x" * 5000, "%E2%80%AE", "%FF", "9" * 5000]


def test_no_query_parameter_value_gives_a_500(approver):
    # given an approver (every page open to them) and hostile values for every parameter
    client, tried, answers = web(approver), 0, {}
    # when each page is asked for with each parameter set to each value
    for page, name, value in product(PAGES, PARAMS, VALUES):
        response = client.get(f"{page}?{name}={value}")
        tried += 1
        answers.setdefault(response.status_code, []).append(f"{page}?{name}={value[:20]}")
    # then no answer is a server error
    assert tried == len(PAGES) * len(PARAMS) * len(VALUES) == 630
    assert not [s for s in answers if s >= 500], {s: u[:5] for s, u in answers.items()}
    assert set(answers) <= {200, 400}, {s: u[:5] for s, u in answers.items()}


# --- JSON bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "change", "field", "fragment"),
    [
        pytest.param(SERVER, {"purpose": "a\x00b"}, "purpose", "null", id="purpose_nul"),
        pytest.param(SERVER, {"purpose": "x" * 2001}, "purpose", "2000", id="purpose_long"),
        pytest.param(SERVER, {"purpose": "ok \u202eevil"}, "purpose", "U+202E",
                     id="purpose_bidi"),
        pytest.param(SERVER, {"purpose": "bell\x07"}, "purpose", "U+0007", id="purpose_ctrl"),
        pytest.param(ACCOUNT, {"use_case": "\x1b[31mred"}, "use_case", "U+001B",
                     id="use_case_escape"),
        pytest.param(ACCOUNT, {"use_case": "u" * 2001}, "use_case", "2000",
                     id="use_case_long"),
        pytest.param(SERVER, {"chat_channel": "#ops\n#evil"}, "chat_channel", "U+000A",
                     id="chat_newline"),
        pytest.param(SERVER, {"chat_channel": "c" * 201}, "chat_channel", "200",
                     id="chat_long"),
        pytest.param(SERVER, {"chat_channel": "\u2066#ops"}, "chat_channel", "U+2066",
                     id="chat_isolate"),
        pytest.param(SERVER, {"expected_daily_volume": 10**30}, "expected_daily_volume",
                     "less than or equal", id="volume_huge"),
        pytest.param(SERVER, {"expected_daily_volume": "9" * 5000}, "expected_daily_volume",
                     "too large", id="volume_5000_digits"),
        pytest.param(SERVER, {"expected_daily_volume": 1e300}, "expected_daily_volume",
                     "valid integer", id="volume_float"),
        pytest.param(SERVER, {"fqdn": "app\x00.example.org"}, "fqdn", "null", id="fqdn_nul"),
        pytest.param(SERVER, {"sender_domains": ["exa\x00mple.org"]}, "sender_domains",
                     "null", id="domain_nul"),
        pytest.param(SERVER, {"contact_email": "ops\x00@example.org"}, "contact_email",
                     "null", id="email_nul"),
        pytest.param(SERVER, {"team": "pay\x00ments"}, "team", "null", id="team_nul"),
    ],
)
def test_bad_json_body_is_a_400_naming_the_field_and_saves_nothing(
    requester, base, change, field, fragment
):
    # when a request is created with one bad field
    response = api(requester).post("/api/requests/", {**base, **change}, format="json")
    # then the answer names that field and its rule, and nothing was saved
    assert response.status_code == 400, response.content[:300]
    errors = response.json()
    assert field in errors, errors
    assert fragment.lower() in str(errors[field]).lower(), errors  # list items: by index
    assert not RelayRequest.objects.exists()


def test_bad_free_text_in_an_edit_is_refused_and_the_draft_unchanged(requester, team):
    # given a draft
    draft = RelayRequestFactory(team=team, created_by=requester)
    # when its purpose is changed to text with a right-to-left override
    response = api(requester).patch(f"/api/requests/{draft.pk}/",
                                    {"purpose": "pay \u202eexe.txt"}, format="json")
    # then the edit is refused by field and the draft keeps its purpose
    assert response.status_code == 400
    assert "U+202E" in response.json()["purpose"][0]
    assert RelayRequest.objects.get(pk=draft.pk).purpose == "Order confirmations"
    assert not RequestEvent.objects.filter(request=draft, type="updated").exists()


@pytest.fixture
def pending(team, requester):
    return RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                               check_verdict="pass")


@pytest.mark.parametrize(
    ("comment", "fragment"),
    [
        pytest.param("no\x00pe", "U+0000", id="nul"),
        pytest.param("r" * 2001, "2000", id="long"),
        pytest.param("fine \u2067reversed", "U+2067", id="isolate"),
        pytest.param("esc \x1b]8;;http://x\x1b\\", "U+001B", id="terminal_escape"),
    ],
)
def test_bad_action_comment_on_the_api_is_a_400_and_nothing_happens(
    pending, approver, comment, fragment
):
    # when an approver rejects with a bad comment
    response = api(approver).post(f"/api/requests/{pending.pk}/reject/",
                                  {"comment": comment}, format="json")
    # then the comment is refused by name and the request did not move
    assert response.status_code == 400, response.content[:300]
    assert fragment in response.json()["comment"][0]
    assert RelayRequest.objects.get(pk=pending.pk).state == S.PENDING_APPROVAL
    assert not RequestEvent.objects.filter(request=pending, type="transition").exists()
    assert not Notification.objects.filter(request=pending).exists()


def test_multi_line_comment_with_tabs_and_crlf_is_accepted(pending, approver):
    # when an approver rejects with an ordinary multi-line comment
    response = api(approver).post(f"/api/requests/{pending.pk}/reject/",
                                  {"comment": "Line one\r\n\tindented\nthree"},
                                  format="json")
    # then it is taken
    assert response.status_code == 200, response.content[:300]
    assert RelayRequest.objects.get(pk=pending.pk).state == S.REJECTED


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"team": "bil\x00ling"}, "team", id="team_nul"),
        pytest.param({"team": "b" * 5000}, "team", id="team_long"),
        pytest.param({"team": "billing", "comment": "c" * 2001}, "comment", id="comment_long"),
        pytest.param({"team": "billing", "comment": "\u202dx"}, "comment", id="comment_bidi"),
    ],
)
def test_bad_handover_input_is_a_400_and_the_entry_stays(team, requester, body, field):
    # given an active entry and another team
    TeamFactory(slug="billing")
    active = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE)
    # when it is handed over with a bad team name or comment
    response = api(requester).post(f"/api/requests/{active.pk}/handover/", body,
                                   format="json")
    # then the field is named and the entry still belongs to its team
    assert response.status_code == 400, response.content[:300]
    assert field in response.json()
    assert RelayRequest.objects.get(pk=active.pk).team == team


# --- web forms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        pytest.param({"purpose": "x" * 2001}, "purpose", "2000", id="purpose_long"),
        pytest.param({"purpose": "ok\u202eevil"}, "purpose", "U+202E", id="purpose_bidi"),
        pytest.param({"chat_channel": "#a\tb"}, "chat_channel", "U+0009", id="chat_tab"),
        pytest.param({"expected_daily_volume": HUGE}, "expected_daily_volume", "",
                     id="volume_huge"),
    ],
)
def test_bad_field_in_the_web_form_is_a_400_naming_it(requester, change, field, fragment):
    # when the server form is sent with one bad field
    response = web(requester).post("/requests/new/server/", {**FORM, **change})
    # then the form comes back (400) with the error on that field, and nothing saved
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field], errors
    assert fragment in errors[field][0]
    assert not RelayRequest.objects.exists()


def test_nul_in_any_form_field_is_a_400_naming_the_field(requester):
    # when a form field carries a NUL byte
    response = web(requester).post("/requests/new/server/", {**FORM, "purpose": "a\x00b"})
    # then the request is refused before any form runs, naming the field
    assert response.status_code == 400
    assert "&#x27;purpose&#x27; contains a NUL" in response.content.decode()
    assert not RelayRequest.objects.exists()


def test_bad_comment_on_the_web_action_is_a_400_on_the_request_page(pending, approver):
    # when an approver rejects through the page with a text-direction override
    response = web(approver).post(f"/requests/{pending.pk}/reject/",
                                  {"comment": "approved\u202e"})
    # then the request page comes back (400) saying what is wrong with the comment
    assert response.status_code == 400
    page = response.content.decode()
    assert "Comment:" in page and "U+202E" in page
    assert RelayRequest.objects.get(pk=pending.pk).state == S.PENDING_APPROVAL


def test_missing_reason_on_the_web_action_is_a_400_too(pending, approver):
    # when an approver rejects without the required reason
    response = web(approver).post(f"/requests/{pending.pk}/reject/", {"comment": "  "})
    # then the page says a written comment is required, and nothing moved
    assert response.status_code == 400
    assert "A written comment is required to reject." in response.content.decode()
    assert RelayRequest.objects.get(pk=pending.pk).state == S.PENDING_APPROVAL


# --- the rule itself -----------------------------------------------------------------------


@pytest.mark.parametrize("char", BIDI)
def test_every_text_direction_override_is_refused_in_every_free_text_field(char):
    # when each free-text field holds one bidi embedding, override or isolate
    for field in FREE_TEXT_LIMITS:
        with pytest.raises(Exception) as caught:
            validate_free_text(f"a{char}b", field=field)
        # then the message names the field, the character and the rule
        message = " ".join(caught.value.messages)
        assert message.startswith(field.replace("_", " ").capitalize())
        assert f"U+{ord(char):04X}" in message and "text-direction" in message


def test_limits_are_inclusive_and_line_breaks_only_in_multi_line_fields():
    # then text exactly at the limit passes and one character more does not
    for field, limit in FREE_TEXT_LIMITS.items():
        assert validate_free_text("x" * limit, field=field) == "x" * limit
        with pytest.raises(Exception, match=str(limit)):
            validate_free_text("x" * (limit + 1), field=field)
    # and line breaks and tabs are fine in multi-line text, not in a chat channel
    assert validate_free_text("a\r\nb\tc", field="purpose") == "a\r\nb\tc"
    with pytest.raises(Exception, match="U\\+000D"):
        validate_free_text("a\r\nb", field="chat_channel")


# --- mail stays bounded -----------------------------------------------------------------


def test_mail_quoting_huge_text_stays_bounded(team, requester):
    # given an outbox row whose context holds more text and more items than a mail shows
    # (written before the bounds existed, or by a caller that did not check)
    req = RelayRequestFactory(team=team, created_by=requester)
    checks = [{"check_id": "spf", "subject": f"d{i}.example.org", "status": "fail",
               "detail": "y" * 50_000} for i in range(500)]
    row, _ = notification_record(request=req, kind="checks_failed", key="bounded-test",
                                 recipients=["ops@example.org"],
                                 context={"comment": "z" * 1_000_000, "failing_checks": checks})
    # when the mail is rendered
    message = render_notification(Notification.objects.get(pk=row.pk))
    # then the stored context and the body are cut, and say so
    assert len(row.context["comment"]) < MAIL_TEXT_LIMIT + 100
    assert len(row.context["failing_checks"]) == MAIL_LIST_LIMIT
    assert len(message.body) < (MAIL_LIST_LIMIT + 2) * (MAIL_TEXT_LIMIT + 200)
    assert f"[cut at {MAIL_TEXT_LIMIT} characters]" in message.body
