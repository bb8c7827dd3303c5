"""Functional-account passwords against a real OpenLDAP slapd on loopback.

What is proven here, on real parts: the issued password binds in slapd; the one-time
link shows it once to a freshly re-authenticated owner and to nobody else; the secret
is nowhere in the database dump, the outbox, the mail or the logs; rotation makes the
old password fail (at once, or after the overlap); revoke makes the right password fail
and takes the account out of the group; a directory outage leaves nothing half-done.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import timedelta

import ldap3
import pytest
from django.core import mail
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from requests_app import activation
from requests_app import credential_keys
from requests_app.credential_keys import CredentialKeyChanged
from requests_app.credential_keys import CredentialUnreadable
from requests_app.credential_tasks import apply_credential
from requests_app.credentials import PASSWORD_ALPHABET
from requests_app.credentials import credential_after_transition
from requests_app.credentials import credential_apply
from requests_app.credentials import credential_give_up
from requests_app.credentials import credential_issue_on_activation
from requests_app.credentials import credential_sweep
from requests_app.credentials import generate_password
from requests_app.credentials import overdue_accounts
from requests_app.directory import DirectoryUnavailable
from requests_app.directory import directory_apply
from requests_app.directory import directory_change_enqueue
from requests_app.models import AccountCredential
from requests_app.models import DirectoryChange
from requests_app.models import Notification
from requests_app.models import RelayRequest
from requests_app.models import RequestEvent
from requests_app.models import RequestState
from requests_app.notifications import render_notification
from requests_app.services import request_act
from requests_app.system_checks import account_credentials_configured
from tests.factories import PASSWORD
from tests.factories import RelayRequestFactory
from tests.factories import TeamFactory
from tests.factories import member_of
from tests.support.slapd import SlapdInstance

pytestmark = [pytest.mark.django_db]

BILLING_DN = "uid=svc-billing,ou=services,dc=example,dc=org"
LINK_RE = re.compile(r"/requests/credentials/link/([A-Za-z0-9_-]+)/")
Status = AccountCredential.Status


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def slapd() -> Iterator[SlapdInstance]:
    with SlapdInstance() as server:
        yield server


@pytest.fixture
def issue_mode(settings: object, slapd: SlapdInstance) -> SlapdInstance:
    """Issue mode, the app bound to slapd as the least-privileged provisioner."""
    settings.RELAY_ACCOUNT_CREDENTIALS = "issue"
    settings.DIRECTORY_URL = f"{slapd.url}/"
    settings.DIRECTORY_BIND_DN = slapd.bind_dn
    settings.DIRECTORY_BIND_PASSWORD = slapd.bind_password
    settings.DIRECTORY_RELAY_GROUP_DN = slapd.group_dn
    settings.DIRECTORY_ACCOUNT_DN_TEMPLATE = slapd.account_dn_template
    settings.DIRECTORY_TIMEOUT_SECONDS = 2.0
    settings.RELAY_CREDENTIAL_LINK_MINUTES = 60
    settings.RELAY_ACCOUNT_ROTATE_OVERLAP_MINUTES = 0
    return slapd


@pytest.fixture
def account(team, requester) -> RelayRequest:  # type: ignore[no-untyped-def]
    """An active functional account for the seeded ``svc-billing``."""
    return RelayRequestFactory(
        account=True, account_name="svc-billing", team=team, created_by=requester,
        state=RequestState.ACTIVE, activated_at=timezone.now(),
    )


def binds(server: SlapdInstance, password: str, dn: str = BILLING_DN) -> bool:
    """A simple bind as the account: what saslauthd's ``ldap_auth_method: bind`` does."""
    conn = ldap3.Connection(ldap3.Server(server.url, connect_timeout=2), dn, password)
    try:
        return bool(conn.bind())
    finally:
        conn.unbind()


def password_values(server: SlapdInstance, dn: str = BILLING_DN) -> list[bytes]:
    conn = ldap3.Connection(ldap3.Server(server.url, connect_timeout=2), server.root_dn,
                            server.root_password, auto_bind=True)
    try:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["userPassword"])
        return sorted(bytes(v) for v in conn.response[0]["raw_attributes"]["userPassword"])
    finally:
        conn.unbind()


def group_members(server: SlapdInstance) -> list[str]:
    conn = ldap3.Connection(ldap3.Server(server.url, connect_timeout=2), server.root_dn,
                            server.root_password, auto_bind=True)
    try:
        conn.search(server.group_dn, "(objectClass=*)", ldap3.BASE, attributes=["member"])
        return sorted(str(dn).lower() for dn in conn.entries[0].member.values)
    finally:
        conn.unbind()


def issue(account: RelayRequest, capture: object) -> AccountCredential:
    """What activation sets in motion: the issue task, then the directory task, then mail."""
    with capture(execute=True):  # type: ignore[operator]
        credential_issue_on_activation(request_id=account.pk)
    return AccountCredential.objects.filter(request=account).latest("pk")


def token_from_mail() -> str:
    found = [m for m in mail.outbox if LINK_RE.search(m.body)]
    assert found, [m.subject for m in mail.outbox]
    return LINK_RE.search(found[-1].body).group(1)


def link(token: str) -> str:
    return reverse("requests:credential_link", kwargs={"token": token})


def reveal(client, token: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post(link(token), {"password": password})


def secret_of(response) -> str:  # type: ignore[no-untyped-def]
    match = re.search(r'<code id="secret" class="secret">([^<]+)</code>',
                      response.content.decode())
    assert match, response.content.decode()[:500]
    return match.group(1)


def credential_events(request: RelayRequest) -> list[RequestEvent]:
    return list(request.events.filter(type=RequestEvent.Type.CREDENTIAL).order_by("pk"))


# --- issuance and the one-time link ------------------------------------------------------


@pytest.mark.ldap
def test_issued_password_binds_and_the_link_shows_it_once(
    issue_mode, account, requester, client, django_capture_on_commit_callbacks
):
    # given an account that went live in issue mode
    row = issue(account, django_capture_on_commit_callbacks)

    # then the directory has a password, the owners a mail with a link (not the password)
    assert row.status == Status.OFFERED and row.set_at is not None
    assert row.ciphertext is not None and row.token_hash
    token = token_from_mail()
    assert credential_keys.token_hash(token) == row.token_hash

    # when an owner opens the link: nothing is revealed on GET
    client.force_login(requester)
    page = client.get(link(token))
    assert page.status_code == 200
    assert 'id="secret"' not in page.content.decode()
    assert "no-store" in page["Cache-Control"]

    # when they reveal without confirming their own password: refused, link still usable
    wrong = reveal(client, token, password="not-my-password")
    assert wrong.status_code == 403 and 'id="secret"' not in wrong.content.decode()
    row.refresh_from_db()
    assert row.status == Status.OFFERED and row.ciphertext is not None

    # when they confirm: the secret is shown once, and it binds in slapd
    shown = reveal(client, token)
    assert shown.status_code == 200
    secret = secret_of(shown)
    assert len(secret) >= 24 and set(secret) <= set(PASSWORD_ALPHABET)
    assert binds(issue_mode, secret)
    assert not binds(issue_mode, "not-used")  # the seeded password is gone

    # then the stored copy is wiped and the view is audited (who, from where)
    row.refresh_from_db()
    assert (row.status, row.ciphertext, row.viewed_by_id) == (Status.VIEWED, None, requester.pk)
    assert row.viewed_ip == "127.0.0.1" and row.wiped_at is not None
    viewed = credential_events(account)[-1]
    assert (viewed.actor_id, viewed.source_ip) == (requester.pk, "127.0.0.1")
    assert "viewed" in viewed.comment

    # and a second view, by POST or GET, shows nothing: 410
    for again in (reveal(client, token), client.get(link(token))):
        assert again.status_code == 410
        assert secret not in again.content.decode()


@pytest.mark.ldap
def test_link_refuses_other_team_anonymous_forged_and_expired(
    issue_mode, account, requester, client, django_capture_on_commit_callbacks
):
    row = issue(account, django_capture_on_commit_callbacks)
    token = token_from_mail()
    before = password_values(issue_mode)

    # another team's member: 403, on GET and POST, even with their right password
    stranger = member_of(TeamFactory(slug="other"), username="mallory")
    client.force_login(stranger)
    assert client.get(link(token)).status_code == 403
    assert reveal(client, token).status_code == 403
    # an approver outside the team is no owner either
    client.logout()

    # anonymous: 403 with a way to sign in, nothing shown
    anonymous = client.get(link(token))
    assert anonymous.status_code == 403 and "Sign in" in anonymous.content.decode()
    assert reveal(client, token).status_code == 403

    # forged tokens: 404, whoever asks
    client.force_login(requester)
    for forged in (token[:-1] + ("A" if token[-1] != "A" else "B"), "x" * 43, "-"):
        assert client.get(link(forged)).status_code == 404
        assert reveal(client, forged).status_code == 404

    # nothing changed: the row still holds its secret, the directory its password
    row.refresh_from_db()
    assert row.status == Status.OFFERED and row.ciphertext is not None
    assert password_values(issue_mode) == before

    # expired: 410 on reveal, the secret wiped, the expiry audited
    AccountCredential.objects.filter(pk=row.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(link(token)).status_code == 410
    assert reveal(client, token).status_code == 410
    row.refresh_from_db()
    assert (row.status, row.ciphertext) == (Status.EXPIRED, None)
    assert "expired" in credential_events(account)[-1].comment
    assert password_values(issue_mode) == before


@pytest.mark.ldap
def test_sweep_wipes_an_expired_link_and_audits_it(
    issue_mode, account, django_capture_on_commit_callbacks
):
    row = issue(account, django_capture_on_commit_callbacks)
    stats = credential_sweep(now=row.expires_at + timedelta(seconds=1))
    row.refresh_from_db()
    assert stats.expired == 1 and (row.status, row.ciphertext) == (Status.EXPIRED, None)
    assert credential_sweep(now=row.expires_at + timedelta(seconds=2)).expired == 0


@pytest.mark.ldap
def test_secret_is_nowhere_in_database_outbox_mail_or_logs(
    issue_mode, account, requester, client, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level("DEBUG")
    issue(account, django_capture_on_commit_callbacks)
    token = token_from_mail()
    client.force_login(requester)
    secret = secret_of(reveal(client, token))
    assert binds(issue_mode, secret)

    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    assert "svc-billing" in dump.getvalue()  # the dump is real and holds the rows
    assert secret not in dump.getvalue()
    assert token not in dump.getvalue()  # only the token's hash is stored
    for n in Notification.objects.all():
        assert secret not in str(n.context) and token not in str(n.context)
    for message in mail.outbox:
        assert secret not in message.body
        assert all(secret not in str(alt[0]) for alt in message.alternatives)
    for event in RequestEvent.objects.all():
        assert secret not in event.comment and secret not in str(event.parameters)
    assert secret not in caplog.text


@pytest.mark.ldap
def test_directory_outage_is_retried_and_no_link_before_the_password_is_set(
    issue_mode, account, django_capture_on_commit_callbacks
):
    with transaction.atomic():
        row = credential_after_transition(account, "activate")
    issue_mode.stop()
    with pytest.raises(DirectoryUnavailable):
        credential_apply(change_id=row.pk)
    row.refresh_from_db()
    assert row.status == Status.PENDING and row.attempts == 1 and not row.token_hash
    assert not mail.outbox and not Notification.objects.filter(kind="credential_link").exists()

    issue_mode.start()
    with django_capture_on_commit_callbacks(execute=True):
        assert apply_credential.apply(args=[row.pk]).get() == Status.OFFERED
    assert apply_credential.apply(args=[row.pk]).get() == "skipped:offered"
    row.refresh_from_db()
    assert row.attempts == 2 and row.token_hash
    assert len([m for m in mail.outbox if LINK_RE.search(m.body)]) == 1


@pytest.mark.ldap
def test_giving_up_wipes_the_secret_and_offers_nothing(
    issue_mode, account, django_capture_on_commit_callbacks
):
    with transaction.atomic():
        row = credential_after_transition(account, "activate")
    before = password_values(issue_mode)
    credential_give_up(change_id=row.pk, error="LDAPSocketOpenError")
    row.refresh_from_db()
    assert (row.status, row.ciphertext, row.token_hash) == (Status.FAILED, None, "")
    assert credential_apply(change_id=row.pk) == "skipped:failed"
    assert password_values(issue_mode) == before
    assert "not set" in credential_events(account)[-1].comment


@pytest.mark.ldap
def test_refused_password_change_is_failed_not_retried(
    issue_mode, settings, account, django_capture_on_commit_callbacks
):
    # the provisioner may not write this account's password (it is outside ou=services)
    settings.DIRECTORY_ACCOUNT_DN_TEMPLATE = "uid={account},dc=example,dc=org"
    with transaction.atomic():
        row = credential_after_transition(account, "activate")
    assert credential_apply(change_id=row.pk) == Status.FAILED
    row.refresh_from_db()
    assert row.ciphertext is None and not row.token_hash and row.last_error


# --- rotation ------------------------------------------------------------------------------


def rotate(client, account: RelayRequest, capture: object) -> str:  # type: ignore[no-untyped-def]
    mail.outbox.clear()
    with capture(execute=True):  # type: ignore[operator]
        response = client.post(reverse("requests:credential_rotate", kwargs={"pk": account.pk}))
    assert response.status_code == 302
    return token_from_mail()


@pytest.mark.ldap
def test_rotate_now_old_password_stops_new_one_binds(
    issue_mode, account, requester, client, django_capture_on_commit_callbacks
):
    issue(account, django_capture_on_commit_callbacks)
    client.force_login(requester)
    old = secret_of(reveal(client, token_from_mail()))

    new_token = rotate(client, account, django_capture_on_commit_callbacks)
    new = secret_of(reveal(client, new_token))

    assert new != old
    assert binds(issue_mode, new)
    assert not binds(issue_mode, old)
    rows = list(AccountCredential.objects.filter(request=account).order_by("pk"))
    assert [(r.purpose, r.status) for r in rows] == [("issue", "viewed"), ("rotate", "viewed")]
    assert rows[1].created_by_id == requester.pk


@pytest.mark.ldap
def test_rotation_supersedes_an_unseen_link(
    issue_mode, account, requester, client, django_capture_on_commit_callbacks
):
    issue(account, django_capture_on_commit_callbacks)
    first = token_from_mail()
    client.force_login(requester)
    rotate(client, account, django_capture_on_commit_callbacks)
    gone = reveal(client, first)
    assert gone.status_code == 410 and "newer password" in gone.content.decode()
    assert AccountCredential.objects.get(purpose="issue").ciphertext is None


@pytest.mark.ldap
def test_rotation_overlap_keeps_the_old_password_until_it_ends(
    issue_mode, settings, account, requester, client, django_capture_on_commit_callbacks
):
    settings.RELAY_ACCOUNT_ROTATE_OVERLAP_MINUTES = 5
    issue(account, django_capture_on_commit_callbacks)
    client.force_login(requester)
    old = secret_of(reveal(client, token_from_mail()))
    new = secret_of(reveal(client, rotate(client, account, django_capture_on_commit_callbacks)))

    # during the overlap both work
    assert binds(issue_mode, old) and binds(issue_mode, new)
    row = AccountCredential.objects.get(purpose="rotate")
    assert row.overlap_until is not None and row.old_ciphertext is not None

    # before its end the sweep leaves it; after, the old one stops and the new one stays
    assert credential_sweep(now=row.overlap_until - timedelta(seconds=1)).overlaps_closed == 0
    assert binds(issue_mode, old)
    assert credential_sweep(now=row.overlap_until + timedelta(seconds=1)).overlaps_closed == 1
    assert not binds(issue_mode, old) and binds(issue_mode, new)
    row.refresh_from_db()
    assert row.old_ciphertext is None
    assert len(password_values(issue_mode)) == 1


@pytest.mark.ldap
def test_only_owners_rotate_and_only_active_accounts(
    issue_mode, account, approver, client, django_capture_on_commit_callbacks
):
    client.force_login(approver)
    response = client.post(reverse("requests:credential_rotate", kwargs={"pk": account.pk}))
    assert response.status_code == 403
    assert not AccountCredential.objects.exists()


# --- revoke, expiry ----------------------------------------------------------------------


@pytest.mark.ldap
def test_revoke_invalidates_the_password_and_leaves_the_group(
    issue_mode, account, requester, approver, client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        add = directory_change_enqueue(request=account, action=DirectoryChange.Action.ADD)
    assert directory_apply(change_id=add.pk) in ("done", "skipped:done")
    assert BILLING_DN in group_members(issue_mode)
    issue(account, django_capture_on_commit_callbacks)
    client.force_login(requester)
    secret = secret_of(reveal(client, token_from_mail()))
    assert binds(issue_mode, secret)

    with django_capture_on_commit_callbacks(execute=True):
        request_act(request_id=account.pk, action="revoke", by=approver,
                    comment="no longer needed")

    assert not binds(issue_mode, secret)
    assert BILLING_DN not in group_members(issue_mode)
    # even with membership restored by hand, the old password stays dead
    conn = ldap3.Connection(ldap3.Server(issue_mode.url), issue_mode.root_dn,
                            issue_mode.root_password, auto_bind=True)
    conn.modify(issue_mode.group_dn, {"member": [(ldap3.MODIFY_ADD, [BILLING_DN])]})
    conn.unbind()
    assert not binds(issue_mode, secret)
    invalidation = AccountCredential.objects.get(purpose="invalidate")
    assert (invalidation.status, invalidation.ciphertext) == (Status.DONE, None)
    assert not invalidation.token_hash  # nobody gets a link to it


@pytest.mark.ldap
def test_revoke_keeps_the_password_of_a_renewal_that_holds_the_account(
    issue_mode, account, team, requester, django_capture_on_commit_callbacks
):
    RelayRequestFactory(account=True, account_name="svc-billing", team=team,
                        created_by=requester, state=RequestState.ACTIVE, replaces=account)
    RelayRequest.objects.filter(pk=account.pk).update(state=RequestState.REVOKED)
    account.refresh_from_db()
    with transaction.atomic():
        assert credential_after_transition(account, "supersede") is None


def test_directory_mode_issues_nothing(settings, account):
    settings.RELAY_ACCOUNT_CREDENTIALS = "directory"
    with transaction.atomic():
        assert credential_after_transition(account, "activate") is None
    assert credential_issue_on_activation(request_id=account.pk) is None
    assert not AccountCredential.objects.exists()


# --- reminders, confirmation, overdue list ------------------------------------------------


def test_rotation_reminders_are_sent_once_each(settings, account):
    settings.RELAY_ACCOUNT_CREDENTIALS = "directory"
    settings.RELAY_ACCOUNT_ROTATE_DAYS = 90
    settings.RELAY_ACCOUNT_ROTATE_REMINDER_DAYS = [14, 3]
    start = timezone.now()
    RelayRequest.objects.filter(pk=account.pk).update(activated_at=start)

    assert credential_sweep(now=start + timedelta(days=70)).reminded == 0
    assert credential_sweep(now=start + timedelta(days=77)).reminded == 1
    assert credential_sweep(now=start + timedelta(days=78)).reminded == 0
    assert credential_sweep(now=start + timedelta(days=87)).reminded == 1
    assert credential_sweep(now=start + timedelta(days=88)).reminded == 0
    reminders = Notification.objects.filter(kind="credential_rotate_reminder")
    assert sorted(n.event_key.rsplit(":", 1)[1] for n in reminders) == ["14d", "3d"]
    body = render_notification(reminders.latest("pk")).body
    assert "I rotated it" in body and settings.DIRECTORY_PASSWORD_HELP[:40] in body


def test_directory_mode_i_rotated_it_restarts_the_clock(settings, account, requester, client):
    settings.RELAY_ACCOUNT_CREDENTIALS = "directory"
    RelayRequest.objects.filter(pk=account.pk).update(
        activated_at=timezone.now() - timedelta(days=100))
    assert [r.pk for r in overdue_accounts()] == [account.pk]

    client.force_login(requester)
    response = client.post(reverse("requests:credential_confirm", kwargs={"pk": account.pk}))
    assert response.status_code == 302
    assert overdue_accounts() == []
    event = credential_events(account)[-1]
    assert event.actor_id == requester.pk and event.source_ip == "127.0.0.1"


def test_overdue_list_is_for_approvers(settings, account, approver, requester, client):
    settings.RELAY_ACCOUNT_CREDENTIALS = "directory"
    RelayRequest.objects.filter(pk=account.pk).update(
        activated_at=timezone.now() - timedelta(days=95))
    client.force_login(requester)
    assert client.get(reverse("requests:credential_overdue")).status_code == 403
    client.force_login(approver)
    page = client.get(reverse("requests:credential_overdue"))
    assert page.status_code == 200
    assert f'id="overdue-{account.pk}"' in page.content.decode()
    assert "svc-billing" in page.content.decode()


def test_request_page_says_where_to_set_the_password(settings, account, requester, client):
    settings.RELAY_ACCOUNT_CREDENTIALS = "directory"
    settings.DIRECTORY_PASSWORD_HELP = "Use https://id.example.org/password to set it."
    client.force_login(requester)
    page = client.get(reverse("requests:detail", kwargs={"pk": account.pk})).content.decode()
    assert "https://id.example.org/password" in page and "I rotated it" in page


# --- encryption at rest ------------------------------------------------------------------


def test_ciphertext_is_bound_to_its_row_and_key(settings):
    blob, kid = credential_keys.encrypt("s3cret", row_id=1, purpose="ciphertext")
    assert b"s3cret" not in blob
    assert credential_keys.decrypt(blob, row_id=1, purpose="ciphertext",
                                   stored_key_id=kid) == "s3cret"
    with pytest.raises(CredentialUnreadable):  # copied into another row
        credential_keys.decrypt(blob, row_id=2, purpose="ciphertext", stored_key_id=kid)
    with pytest.raises(CredentialUnreadable):  # moved to the other column
        credential_keys.decrypt(blob, row_id=1, purpose="old_ciphertext", stored_key_id=kid)
    again, _ = credential_keys.encrypt("s3cret", row_id=1, purpose="ciphertext")
    assert again[:12] != blob[:12]  # a fresh nonce each time
    settings.RELAY_CREDENTIAL_KEY = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    with pytest.raises(CredentialKeyChanged):
        credential_keys.decrypt(blob, row_id=1, purpose="ciphertext", stored_key_id=kid)


def test_generated_passwords_are_long_and_distinct():
    seen = {generate_password() for _ in range(200)}
    assert len(seen) == 200 and all(len(p) >= 24 for p in seen)
    with pytest.raises(ValueError):
        generate_password(12)


@pytest.mark.ldap
def test_a_changed_key_shows_nothing_and_says_to_rotate(
    issue_mode, settings, account, requester, client, django_capture_on_commit_callbacks
):
    issue(account, django_capture_on_commit_callbacks)
    token = token_from_mail()
    settings.RELAY_CREDENTIAL_KEY = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
    client.force_login(requester)
    # the link (its hash is stored) is found, but its secret cannot be decrypted any more
    gone = reveal(client, token)
    assert gone.status_code == 410 and "rotate" in gone.content.decode()
    assert AccountCredential.objects.get().status == Status.OFFERED  # nothing changed


@pytest.mark.ldap
def test_activation_issues_the_first_password_through_the_tasks(
    issue_mode, team, requester, django_capture_on_commit_callbacks
):
    request = RelayRequestFactory(account=True, account_name="svc-alerts", team=team,
                                  created_by=requester, state=RequestState.PROVISIONING)
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        locked = RelayRequest.objects.select_for_update().get(pk=request.pk)
        activation.activate(locked, version=1, comment="test")
    row = AccountCredential.objects.get(request=request)
    assert (row.purpose, row.status) == ("issue", "offered")
    assert any(LINK_RE.search(m.body) for m in mail.outbox)
    assert binds(issue_mode, "not-used", "uid=svc-alerts,ou=services,dc=example,dc=org") is False


# --- the same through the JSON API ----------------------------------------------------------


def api_client(user):  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.ldap
def test_api_rotate_now_mails_a_new_link_and_never_returns_the_password(
    issue_mode, account, requester, django_capture_on_commit_callbacks
):
    issue(account, django_capture_on_commit_callbacks)
    mail.outbox.clear()
    # when an owner rotates through the API
    with django_capture_on_commit_callbacks(execute=True):
        response = api_client(requester).post(f"/api/requests/{account.pk}/password/rotate/")
    # then the answer is the status (a rotation link waiting), and the owners got a new link
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["mode"], body["latest"]["purpose"]) == ("issue", "rotate")
    new = secret_of(reveal(_logged_in(requester), token_from_mail()))
    assert new not in response.content.decode() and binds(issue_mode, new)


def _logged_in(user):  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def test_api_password_status_and_i_rotated_it_in_directory_mode(
    settings, account, requester, approver
):
    settings.RELAY_ACCOUNT_CREDENTIALS = "directory"
    owner = api_client(requester)
    # the status says where to set the password, and nothing was set yet
    status = owner.get(f"/api/requests/{account.pk}/password/").json()
    assert status["mode"] == "directory" and status["password_help"]
    # "I rotated it" restarts the clock; rotate now is the other mode's (409)
    done = owner.post(f"/api/requests/{account.pk}/password/rotated/")
    assert done.status_code == 200 and done.json()["last_set_at"]
    assert owner.post(f"/api/requests/{account.pk}/password/rotate/").status_code == 409
    # an approver (not of the team) reads but may not act; a server entry has no password
    assert api_client(approver).get(f"/api/requests/{account.pk}/password/").status_code == 200
    assert api_client(approver).post(
        f"/api/requests/{account.pk}/password/rotated/").status_code == 403
    server = RelayRequestFactory(team=account.team, created_by=requester,
                                 state=RequestState.ACTIVE)
    assert owner.get(f"/api/requests/{server.pk}/password/").status_code == 404


@pytest.mark.parametrize(("mode", "url", "problem"), [
    ("directory", "", None),
    ("issue", "ldap://127.0.0.1:389/", None),
    ("issue", "", "DIRECTORY_URL is empty"),
    ("mint", "", "RELAY_ACCOUNT_CREDENTIALS 'mint' is invalid"),
])
def test_system_check_names_an_unusable_credential_mode(settings, mode, url, problem):
    settings.RELAY_ACCOUNT_CREDENTIALS, settings.DIRECTORY_URL = mode, url
    errors = account_credentials_configured()
    if problem is None:
        assert errors == []
    else:
        [error] = errors
        assert error.id == "relaydesk.E003" and problem in error.msg
