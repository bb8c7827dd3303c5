"""Directory provisioning of functional accounts, against a real OpenLDAP slapd on loopback.

The services that fire ``directory_change_enqueue`` on approve/revoke/expire are wired by
the lead; these tests call the directory functions directly, inside a transaction, and
run the task through ``.apply()`` or the captured on-commit callback.
"""

from __future__ import annotations

from collections.abc import Iterator

import ldap3
import pytest
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.urls import include
from django.urls import path

from onboarding import urls as project_urls
from requests_app import directory_views
from requests_app import urls as app_urls
from requests_app.directory import DirectoryUnavailable
from requests_app.directory import InvalidAccountName
from requests_app.directory import account_dn
from requests_app.directory import directory_apply
from requests_app.directory import directory_change_enqueue
from requests_app.directory import directory_mark_done_manually
from requests_app.directory import pending_manual_changes
from requests_app.directory import render_ldif
from requests_app.directory_tasks import provision_directory
from requests_app.models import DirectoryChange
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState
from tests.factories import RelayRequestFactory
from tests.support.slapd import PLACEHOLDER_DN
from tests.support.slapd import READER_DN
from tests.support.slapd import READER_PASSWORD
from tests.support.slapd import SlapdInstance

pytestmark = [pytest.mark.django_db]

ADD = DirectoryChange.Action.ADD
REMOVE = DirectoryChange.Action.REMOVE
GROUP = "cn=smtprelayallow,ou=groups,dc=example,dc=org"
BILLING_DN = "uid=svc-billing,ou=services,dc=example,dc=org"

# The to-do routes are wired into requests_app/urls.py by the lead; until then (and
# harmlessly after) this module serves as the URLconf with both routes in "requests".
_directory_paths = [
    path("directory/", directory_views.directory_todo, name="directory_todo"),
    path(
        "directory/<int:pk>/done/",
        directory_views.directory_change_mark_done,
        name="directory_mark_done",
    ),
]
urlpatterns = [
    path("requests/", include(([*app_urls.urlpatterns, *_directory_paths], "requests")))
    if getattr(p, "namespace", None) == "requests"
    else p
    for p in project_urls.urlpatterns
]


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def eager_retries() -> Iterator[None]:
    """Eager ``apply`` replays a retry at once only when it does not propagate errors."""
    conf = provision_directory.app.conf
    previous = conf.task_eager_propagates
    conf.task_eager_propagates = False
    try:
        yield
    finally:
        conf.task_eager_propagates = previous


@pytest.fixture
def slapd() -> Iterator[SlapdInstance]:
    with SlapdInstance() as server:
        yield server


@pytest.fixture
def directory(settings: object, slapd: SlapdInstance) -> SlapdInstance:
    """The app points at the test slapd, binding as the least-privileged provisioner."""
    settings.DIRECTORY_URL = f"{slapd.url}/"
    settings.DIRECTORY_BIND_DN = slapd.bind_dn
    settings.DIRECTORY_BIND_PASSWORD = slapd.bind_password
    settings.DIRECTORY_RELAY_GROUP_DN = slapd.group_dn
    settings.DIRECTORY_ACCOUNT_DN_TEMPLATE = slapd.account_dn_template
    settings.DIRECTORY_TIMEOUT_SECONDS = 2.0
    return slapd


@pytest.fixture
def no_directory(settings: object) -> None:
    settings.DIRECTORY_URL = ""
    settings.DIRECTORY_RELAY_GROUP_DN = GROUP
    settings.DIRECTORY_ACCOUNT_DN_TEMPLATE = "uid={account},ou=services,dc=example,dc=org"


@pytest.fixture
def account_request(team, requester) -> RelayRequest:  # type: ignore[no-untyped-def]
    """An approved functional-account request for a seeded service account."""
    return RelayRequestFactory(
        account=True,
        account_name="svc-billing",
        team=team,
        created_by=requester,
        state=RequestState.PROVISIONING,
    )


def group_members(server: SlapdInstance) -> list[str]:
    """Read the group back as the directory's root, independent of the app's code."""
    conn = ldap3.Connection(
        ldap3.Server(server.url, connect_timeout=2),
        server.root_dn,
        server.root_password,
        auto_bind=True,
    )
    try:
        assert conn.search(server.group_dn, "(objectClass=*)", ldap3.BASE, attributes=["member"])
        return sorted(str(dn).lower() for dn in conn.entries[0].member.values)
    finally:
        conn.unbind()


def enqueue(request: RelayRequest, action: str, captured: object) -> DirectoryChange:
    """What the lead's service does: enqueue inside its transaction."""
    with captured, transaction.atomic():  # type: ignore[attr-defined]
        return directory_change_enqueue(request=request, action=action)


def directory_events(request: RelayRequest) -> list[RequestEvent]:
    return list(request.events.filter(type=RequestEvent.Type.DIRECTORY).order_by("pk"))


# --- with a directory ------------------------------------------------------------------


@pytest.mark.ldap
def test_add_on_approval_puts_account_in_group(
    directory, account_request, django_capture_on_commit_callbacks
):
    # given an approved account request and a configured directory
    # when the approval's transaction commits
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            change = directory_change_enqueue(request=account_request, action=ADD)

    # then the task ran once after commit and the account is a member of the group
    assert len(callbacks) == 1
    change.refresh_from_db()
    assert change.status == DirectoryChange.Status.DONE
    assert change.attempts == 1
    assert change.done_by == "system"
    assert change.last_error == ""
    assert group_members(directory) == sorted([PLACEHOLDER_DN, BILLING_DN])
    assert [e.comment for e in directory_events(account_request)] == [
        f"Directory change queued: add {BILLING_DN}.",
        f"Directory: {BILLING_DN} added.",
    ]
    assert directory_events(account_request)[-1].parameters["outcome"] == "added"


@pytest.mark.ldap
def test_apply_twice_is_idempotent(directory, account_request, django_capture_on_commit_callbacks):
    # given a pending add
    change = enqueue(account_request, ADD, django_capture_on_commit_callbacks())

    # when the task is delivered twice
    first = provision_directory.apply(args=[change.pk]).get()
    second = provision_directory.apply(args=[change.pk]).get()

    # then the second delivery does nothing and the account is in the group once
    assert (first, second) == ("done", "skipped:done")
    change.refresh_from_db()
    assert change.attempts == 1
    assert group_members(directory) == sorted([PLACEHOLDER_DN, BILLING_DN])
    assert len(directory_events(account_request)) == 2  # queued, added


@pytest.mark.ldap
def test_add_when_already_member_counts_as_done(
    directory, account_request, django_capture_on_commit_callbacks
):
    # given the account is already in the group (an earlier run, or an administrator)
    added = enqueue(account_request, ADD, django_capture_on_commit_callbacks())
    directory_apply(change_id=added.pk)
    again = enqueue(account_request, ADD, django_capture_on_commit_callbacks())

    # when the provisioner adds it again
    result = directory_apply(change_id=again.pk)

    # then that is success, with no duplicate value and no error
    again.refresh_from_db()
    assert result == "done"
    assert again.status == DirectoryChange.Status.DONE
    assert directory_events(account_request)[-1].parameters["outcome"] == "already a member"
    assert group_members(directory) == sorted([PLACEHOLDER_DN, BILLING_DN])


@pytest.mark.ldap
def test_remove_on_revoke(directory, account_request, django_capture_on_commit_callbacks):
    # given the account was added and the request is then revoked
    added = enqueue(account_request, ADD, django_capture_on_commit_callbacks())
    directory_apply(change_id=added.pk)
    RelayRequest.objects.filter(pk=account_request.pk).update(state=RequestState.REVOKED)
    account_request.refresh_from_db()

    # when the removal runs, twice (second as a fresh change: nothing left to remove)
    removal = enqueue(account_request, REMOVE, django_capture_on_commit_callbacks())
    assert directory_apply(change_id=removal.pk) == "done"
    replay = enqueue(account_request, REMOVE, django_capture_on_commit_callbacks())
    assert directory_apply(change_id=replay.pk) == "done"

    # then the member is gone, and "no such value" was not an error
    assert group_members(directory) == [PLACEHOLDER_DN]
    outcomes = [e.parameters.get("outcome") for e in directory_events(account_request)]
    assert outcomes[-3:] == ["removed", None, "was not a member"]


@pytest.mark.ldap
def test_directory_down_is_retried_then_done_once(
    directory, account_request, django_capture_on_commit_callbacks
):
    # given the directory is down when the change is applied
    change = enqueue(account_request, ADD, django_capture_on_commit_callbacks())
    directory.stop()

    # when the provisioner tries
    with pytest.raises(DirectoryUnavailable, match="LDAPSocketOpenError"):
        directory_apply(change_id=change.pk)

    # then the attempt and the error are recorded, and nothing is done
    change.refresh_from_db()
    assert change.status == DirectoryChange.Status.PENDING
    assert change.attempts == 1
    assert "LDAPSocketOpenError" in change.last_error
    assert len(directory_events(account_request)) == 1  # only "queued"

    # when the directory is back and the retry runs (and is delivered once more)
    directory.start()
    assert provision_directory.apply(args=[change.pk]).get() == "done"
    assert provision_directory.apply(args=[change.pk]).get() == "skipped:done"

    # then it is done once
    change.refresh_from_db()
    assert (change.status, change.attempts, change.last_error) == ("done", 2, "")
    assert group_members(directory) == sorted([PLACEHOLDER_DN, BILLING_DN])
    assert [e.parameters.get("outcome") for e in directory_events(account_request)] == [
        None,
        "added",
    ]


@pytest.mark.ldap
def test_task_retries_then_hands_over_to_a_person(
    directory, account_request, django_capture_on_commit_callbacks, eager_retries
):
    # given the directory stays down
    change = enqueue(account_request, ADD, django_capture_on_commit_callbacks())
    directory.stop()

    # when the task runs (eagerly, so Celery's autoretry replays it without the countdown)
    result = provision_directory.apply(args=[change.pk]).get()

    # then every retry was counted, and after the last one the change is a to-do
    change.refresh_from_db()
    assert result == "failed"
    assert change.status == DirectoryChange.Status.FAILED
    assert change.attempts == provision_directory.max_retries + 1
    assert list(pending_manual_changes()) == [change]
    assert "unreachable after 9 attempts" in directory_events(account_request)[-1].comment


@pytest.mark.ldap
@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param({"DIRECTORY_RELAY_GROUP_DN": "cn=nope,ou=groups,dc=example,dc=org"},
                     "noSuchObject", id="group_missing_case"),
        pytest.param({"DIRECTORY_BIND_DN": READER_DN,
                      "DIRECTORY_BIND_PASSWORD": READER_PASSWORD},
                     "insufficientAccessRights", id="no_write_access_case"),
        pytest.param({"DIRECTORY_BIND_PASSWORD": "wrong"},
                     "invalidCredentials", id="bad_password_case"),
        pytest.param({"account_name": "svc-ghost"}, "noSuchObject", id="account_missing_case"),
    ],
)
@pytest.mark.ldap
def test_permanent_errors_fail_without_retry(
    directory, settings, team, requester, setup, expected, django_capture_on_commit_callbacks
):
    # given a directory that will give a definitive "no"
    request = RelayRequestFactory(
        account=True, account_name=setup.pop("account_name", "svc-billing"), team=team,
        created_by=requester, state=RequestState.PROVISIONING,
    )
    for name, value in setup.items():
        setattr(settings, name, value)
    change = enqueue(request, ADD, django_capture_on_commit_callbacks())

    # when the task runs
    result = provision_directory.apply(args=[change.pk]).get()

    # then it failed once, named the error in the trail, and the group is unchanged
    change.refresh_from_db()
    assert result == "failed"
    assert (change.status, change.attempts) == ("failed", 1)
    assert expected in change.last_error
    last = directory_events(request)[-1]
    assert expected in last.comment
    assert last.parameters["status"] == "failed"
    assert group_members(directory) == [PLACEHOLDER_DN]


@pytest.mark.ldap
def test_removal_keeps_member_still_granted_by_another_request(
    directory, account_request, team, requester, django_capture_on_commit_callbacks
):
    # given a renewal for the same account is active while the old request is revoked
    added = enqueue(account_request, ADD, django_capture_on_commit_callbacks())
    directory_apply(change_id=added.pk)
    renewal = RelayRequestFactory(
        account=True, account_name="svc-billing", team=team, created_by=requester,
        state=RequestState.ACTIVE,
    )
    RelayRequest.objects.filter(pk=account_request.pk).update(state=RequestState.REVOKED)
    account_request.refresh_from_db()

    # when the old request's removal is enqueued
    with django_capture_on_commit_callbacks() as callbacks:
        with transaction.atomic():
            removal = directory_change_enqueue(request=account_request, action=REMOVE)

    # then nothing is sent to the directory and the member stays
    assert callbacks == []
    assert removal.status == DirectoryChange.Status.DONE
    assert directory_events(account_request)[-1].parameters["kept_for"] == renewal.pk
    assert group_members(directory) == sorted([PLACEHOLDER_DN, BILLING_DN])


# --- without a directory ---------------------------------------------------------------


def test_without_directory_change_is_a_manual_todo(
    no_directory, account_request, django_capture_on_commit_callbacks
):
    # given no DIRECTORY_URL
    # when the approval enqueues the change
    with django_capture_on_commit_callbacks() as callbacks:
        with transaction.atomic():
            change = directory_change_enqueue(request=account_request, action=ADD)

    # then it is a manual to-do with the exact LDIF, audited, and no task was scheduled
    assert callbacks == []
    assert change.status == DirectoryChange.Status.MANUAL
    assert change.ldif == (
        "dn: cn=smtprelayallow,ou=groups,dc=example,dc=org\n"
        "changetype: modify\n"
        "add: member\n"
        "member: uid=svc-billing,ou=services,dc=example,dc=org\n"
        "-"
    )
    [event] = directory_events(account_request)
    assert event.actor is None and event.actor_name == "system"
    assert event.parameters["ldif"] == change.ldif
    assert event.parameters["status"] == "manual"
    assert "an administrator must add" in event.comment
    assert list(pending_manual_changes()) == [change]


def test_removal_ldif_and_supersedes_open_add(no_directory, account_request):
    # given an add that nobody has applied yet
    with transaction.atomic():
        add = directory_change_enqueue(request=account_request, action=ADD)

    # when the request is revoked
    RelayRequest.objects.filter(pk=account_request.pk).update(state=RequestState.REVOKED)
    account_request.refresh_from_db()
    with transaction.atomic():
        removal = directory_change_enqueue(request=account_request, action=REMOVE)

    # then only the removal is left to do, and the add is closed as superseded
    add.refresh_from_db()
    assert (add.status, add.done_by) == ("done", f"superseded by #{removal.pk}")
    assert list(pending_manual_changes()) == [removal]
    assert removal.ldif.splitlines()[2:4] == ["delete: member", f"member: {BILLING_DN}"]


@pytest.mark.urls(__name__)
def test_todo_page_for_approvers_only(no_directory, client, account_request, approver, requester):
    # given a manual change
    with transaction.atomic():
        change = directory_change_enqueue(request=account_request, action=ADD)

    # when a requester opens the to-do page or posts "Mark done"
    client.force_login(requester)
    page = client.get("/requests/directory/")
    post = client.post(f"/requests/directory/{change.pk}/done/")

    # then both are refused and nothing changed
    assert (page.status_code, post.status_code) == (403, 403)
    change.refresh_from_db()
    assert change.status == DirectoryChange.Status.MANUAL
    assert len(directory_events(account_request)) == 1

    # when an approver opens it
    client.force_login(approver)
    page = client.get("/requests/directory/")

    # then the LDIF and the button are there
    assert page.status_code == 200
    html = page.content.decode()
    assert "member: uid=svc-billing,ou=services,dc=example,dc=org" in html
    assert f'action="/requests/directory/{change.pk}/done/"' in html
    assert "Mark done" in html


@pytest.mark.urls(__name__)
def test_mark_done_records_who(no_directory, client, account_request, approver):
    # given a manual change
    with transaction.atomic():
        change = directory_change_enqueue(request=account_request, action=ADD)

    # when an approver marks it done (and confirms: the first POST asks)
    client.force_login(approver)
    asked = client.post(f"/requests/directory/{change.pk}/done/")
    assert asked.status_code == 200 and 'name="confirm" value="1"' in asked.content.decode()
    response = client.post(f"/requests/directory/{change.pk}/done/", {"confirm": "1"})

    # then it is done, by them, in the row and in the trail, and off the list
    assert response.status_code == 302
    assert response.url == "/requests/directory/"
    change.refresh_from_db()
    assert (change.status, change.done_by) == ("done", "bob")
    assert change.done_at is not None
    event = directory_events(account_request)[-1]
    assert (event.actor, event.actor_name) == (approver, "bob")
    assert event.parameters["previous_status"] == "manual"
    assert list(pending_manual_changes()) == []

    # when it is marked done again
    client.post(f"/requests/directory/{change.pk}/done/")

    # then that is refused (no second event)
    assert len(directory_events(account_request)) == 2


def test_request_page_shows_where_the_group_change_stands(
    no_directory, client, account_request, approver, requester, server_request
):
    # given an approved account whose group change waits for an administrator
    with transaction.atomic():
        change = directory_change_enqueue(request=account_request, action=ADD)
    client.force_login(requester)

    # when its owner opens the request
    html = client.get(f"/requests/{account_request.pk}/").content.decode()

    # then they see why a login would fail for now
    assert "Relay group membership" in html
    assert "Add to relay group: <strong class=\"directory-manual\">manual to-do</strong>" in html
    assert "until then the relay refuses this account's login" in html

    # when an approver has applied it by hand
    directory_mark_done_manually(change_id=change.pk, by=approver)
    html = client.get(f"/requests/{account_request.pk}/").content.decode()

    # then the page says so, and by whom
    assert "<strong class=\"directory-done\">done</strong>" in html
    assert "by bob" in html
    assert "refuses this account" not in html

    # and a server request has no such section
    assert "Relay group membership" not in client.get(
        f"/requests/{server_request.pk}/").content.decode()


@pytest.mark.ldap
def test_request_page_shows_a_change_that_waits_for_the_directory(
    directory, client, account_request, requester, django_capture_on_commit_callbacks
):
    # given the directory was down when the provisioner tried
    change = enqueue(account_request, ADD, django_capture_on_commit_callbacks())
    directory.stop()
    with pytest.raises(DirectoryUnavailable):
        directory_apply(change_id=change.pk)

    # when the owner opens the request
    client.force_login(requester)
    html = client.get(f"/requests/{account_request.pk}/").content.decode()

    # then the page says it is retried, how often it was tried, and the last error
    assert "<strong class=\"directory-pending\">pending</strong>" in html
    assert "retries automatically (1 attempt so far)" in html
    assert "LDAPSocketOpenError" in html


def test_mark_done_refuses_non_approver(no_directory, account_request, requester):
    # given a manual change
    with transaction.atomic():
        change = directory_change_enqueue(request=account_request, action=ADD)

    # when a requester calls the service directly (API, shell)
    with pytest.raises(PermissionDenied, match="Only approvers"):
        directory_mark_done_manually(change_id=change.pk, by=requester)

    # then nothing happened
    change.refresh_from_db()
    assert change.status == DirectoryChange.Status.MANUAL
    assert len(directory_events(account_request)) == 1


# --- DN safety -------------------------------------------------------------------------


def test_account_dn_from_template(settings):
    settings.DIRECTORY_ACCOUNT_DN_TEMPLATE = "uid={account},ou=services,dc=example,dc=org"
    assert account_dn("svc-billing") == BILLING_DN
    assert account_dn("svc.app_1", "cn={account},ou=x") == "cn=svc.app_1,ou=x"


@pytest.mark.parametrize(
    "name",
    ["svc,ou=admins", "svc+cn=admin", "svc\\2cou=admins", "svc=x", "SVC-billing", " svc-b",
     "svc-b\n", "svc*", "svc#1", "Ωsvc", ""],
)
def test_account_dn_refuses_injection(settings, name):
    settings.DIRECTORY_ACCOUNT_DN_TEMPLATE = "uid={account},ou=services,dc=example,dc=org"
    with pytest.raises(InvalidAccountName):
        account_dn(name)


@pytest.mark.ldap
def test_injected_account_name_never_reaches_directory(
    directory, team, requester, django_capture_on_commit_callbacks
):
    # given a request whose account name (bypassing the form) tries DN injection
    request = RelayRequestFactory(
        account=True, account_name="svc,ou=admins", team=team, created_by=requester,
        state=RequestState.PROVISIONING,
    )

    # when its approval enqueues the change
    with django_capture_on_commit_callbacks() as callbacks:
        with transaction.atomic():
            change = directory_change_enqueue(request=request, action=ADD)

    # then it is refused: failed, no LDIF, no task, audited, group untouched
    assert callbacks == []
    assert (change.status, change.ldif) == ("failed", "")
    assert "svc,ou=admins" in change.last_error
    assert "refused" in directory_events(request)[-1].comment
    assert directory_apply(change_id=change.pk) == "skipped:failed"
    assert group_members(directory) == [PLACEHOLDER_DN]


def test_ldif_encodes_unsafe_values():
    ldif = render_ldif(action=REMOVE, group_dn="cn=relé,dc=example,dc=org", member_dn="uid=a")
    assert ldif.splitlines() == [
        "dn:: Y249cmVsw6ksZGM9ZXhhbXBsZSxkYz1vcmc=",
        "changetype: modify",
        "delete: member",
        "member: uid=a",
        "-",
    ]
