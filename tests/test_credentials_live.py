"""Issued passwords through the real relay chain: Postfix -> libsasl2 -> saslauthd -> slapd.

Reuses the private relay of ``tests/test_sasl_live.py`` (its ``live`` fixture, a fresh
instance for this module): Relaydesk in ``issue`` mode sets the password with Password
Modify, an owner reveals it once, and SMTP AUTH after STARTTLS answers 235; after
"Rotate now" the old one gets 535 and the new one 235; after revoke the right password
gets 535 and the account is out of the relay-allow group.
"""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from requests_app.credentials import credential_issue_on_activation
from requests_app.models import RequestState
from requests_app.services import request_act
from tests.factories import PASSWORD
from tests.factories import RelayRequestFactory
from tests.test_sasl_live import PASSWORDS
from tests.test_sasl_live import account_dn
from tests.test_sasl_live import group_members
from tests.test_sasl_live import live  # noqa: F401 - the module-scoped relay fixture
from tests.test_sasl_live import login_code

pytestmark = [pytest.mark.django_db, pytest.mark.ldap]

LINK_RE = re.compile(r"/requests/credentials/link/([A-Za-z0-9_-]+)/")


def _reveal(client) -> str:  # type: ignore[no-untyped-def]
    token = LINK_RE.search([m for m in mail.outbox if LINK_RE.search(m.body)][-1].body).group(1)
    page = client.post(reverse("requests:credential_link", kwargs={"token": token}),
                       {"password": PASSWORD}).content.decode()
    return re.search(r'<code id="secret" class="secret">([^<]+)</code>', page).group(1)


def test_issued_password_rotation_and_revoke_on_the_live_relay(
    live, settings, team, requester, approver, client,  # noqa: F811
    django_capture_on_commit_callbacks,
):
    settings.RELAY_ACCOUNT_CREDENTIALS = "issue"
    settings.DIRECTORY_URL = f"{live.slapd.url}/"
    settings.DIRECTORY_BIND_DN = live.slapd.bind_dn
    settings.DIRECTORY_BIND_PASSWORD = live.slapd.bind_password
    settings.DIRECTORY_RELAY_GROUP_DN = live.slapd.group_dn
    settings.DIRECTORY_ACCOUNT_DN_TEMPLATE = live.slapd.account_dn_template
    settings.DIRECTORY_TIMEOUT_SECONDS = 2.0
    account = RelayRequestFactory(account=True, account_name="svc-relay", team=team,
                                  created_by=requester, state=RequestState.ACTIVE,
                                  activated_at=timezone.now())
    seeded = PASSWORDS["svc-relay"]
    assert login_code(live, "svc-relay", seeded) == 235, live.diagnostics()

    # issued on activation: the revealed password logs in, the one before does not
    with django_capture_on_commit_callbacks(execute=True):
        credential_issue_on_activation(request_id=account.pk)
    client.force_login(requester)
    issued = _reveal(client)
    assert login_code(live, "svc-relay", issued) == 235, live.diagnostics()
    assert login_code(live, "svc-relay", seeded) == 535

    # rotate now: old 535, new 235
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("requests:credential_rotate", kwargs={"pk": account.pk}))
    rotated = _reveal(client)
    assert login_code(live, "svc-relay", issued) == 535
    assert login_code(live, "svc-relay", rotated) == 235, live.diagnostics()

    # revoke: the right password gets 535, and the account is out of the group
    with django_capture_on_commit_callbacks(execute=True):
        request_act(request_id=account.pk, action="revoke", by=approver, comment="done")
    assert login_code(live, "svc-relay", rotated) == 535
    assert account_dn("svc-relay").lower() not in group_members(live.slapd)
