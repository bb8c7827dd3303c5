"""Relay config from the database: versions, history, export, pull endpoint, Postfix."""

from __future__ import annotations

import hashlib
import json
import smtplib
import time

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from requests_app import services
from requests_app.models import RelayConfigChange
from requests_app.models import RelayConfigVersion
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.relay import relay_config_export
from requests_app.relay import relay_config_rebuild
from tests.factories import RelayRequestFactory
from tests.support.postfix import PostfixInstance
from tests.support.postfix import minimal_config_dir
from tests.support.postfix import require_root
from tests.support.postfix import require_tool
from tests.support.postfix import run_tool

pytestmark = pytest.mark.django_db

FILES = ["MANIFEST.json", "client_access.cidr", "main.cf.fragment", "master.cf.fragment",
         "relay_policy", "sender_login_maps"]
# The live tests here prove the access map; the policy service is not running in them
# (tests/test_relay_enforcement_config.py and the live end-to-end test cover it).
WITHOUT_POLICY_SERVICE = "smtpd_recipient_restrictions =\nsmtpd_end_of_data_restrictions =\n"


def approve(req, approver, capture):
    with capture(execute=True):
        services.request_act(request_id=req.pk, action="approve", by=approver)
    req.refresh_from_db()
    return req


def approved(team, requester, approver, capture, **fields):
    """A checked request approved through the service (the eager task activates it)."""
    req = RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                              check_verdict="pass", **fields)
    return approve(req, approver, capture)


def revoke(req, approver, capture, comment="gone"):
    with capture(execute=True):
        services.request_act(request_id=req.pk, action="revoke", by=approver,
                             comment=comment)


@pytest.fixture
def pending(team, requester):
    return RelayRequestFactory(team=team, created_by=requester, state=S.PENDING_APPROVAL,
                               check_verdict="pass", fqdn="app.example.org",
                               ipv4=["81.2.69.10"], ipv6=["2a02:898:0:20::10"])


def test_approval_activates_with_a_new_version(pending, approver,
                                               django_capture_on_commit_callbacks):
    req = approve(pending, approver, django_capture_on_commit_callbacks)
    assert req.state == S.ACTIVE
    version = RelayConfigVersion.objects.get()
    assert version.number == 1
    cidr = version.files["client_access.cidr"]
    assert cidr == (
        f"# request {req.pk} app.example.org team payments\n81.2.69.10/32 OK\n"
        f"# request {req.pk} app.example.org team payments\n2a02:898:0:20::10/128 OK\n"
    )
    changes = set(RelayConfigChange.objects.values_list("action", "line", "request_id"))
    assert changes == {("added", "81.2.69.10/32 OK", req.pk),
                       ("added", "2a02:898:0:20::10/128 OK", req.pk),
                       ("added", "mode rewrite", None),
                       ("added", "filter relaydesk-srs:[127.0.0.1]:10026", None),
                       ("added", "approved example.org", None),
                       ("added", f"client 81.2.69.10 {req.pk} 200/86400,1/1 @example.org sandbox",
                        req.pk),
                       ("added", f"client 2a02:898:0:20::10 {req.pk} 200/86400,1/1 "
                                 "@example.org sandbox", req.pk)}
    assert req.events.filter(parameters__action="activate").get().comment == \
        "in relay config v1"


def test_same_state_gives_no_new_version_and_same_bytes(pending, approver, tmp_path,
                                                        django_capture_on_commit_callbacks):
    approve(pending, approver, django_capture_on_commit_callbacks)
    assert relay_config_rebuild(reason="again") is None
    first, second = tmp_path / "a", tmp_path / "b"
    relay_config_export(first)
    relay_config_export(second)
    assert sorted(p.name for p in first.iterdir()) == FILES
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    _, changed = relay_config_export(first)
    assert changed is False


def test_revoke_removes_the_entry_in_the_next_version(pending, approver, team, requester,
                                                      django_capture_on_commit_callbacks):
    req = approve(pending, approver, django_capture_on_commit_callbacks)
    other = approved(team, requester, approver, django_capture_on_commit_callbacks,
                     fqdn="other.example.org", ipv4=["81.2.69.77"], ipv6=[])
    revoke(req, approver, django_capture_on_commit_callbacks, "server decommissioned")
    latest = RelayConfigVersion.objects.order_by("-number").first()
    assert latest.number == 3
    assert "81.2.69.10" not in latest.files["client_access.cidr"]
    assert "81.2.69.77/32 OK" in latest.files["client_access.cidr"]
    removed = RelayConfigChange.objects.filter(version=latest, action="removed")
    assert set(removed.values_list("line", "request_id")) == {
        ("81.2.69.10/32 OK", req.pk), ("2a02:898:0:20::10/128 OK", req.pk),
        (f"client 81.2.69.10 {req.pk} 200/86400,1/1 @example.org sandbox", req.pk),
        (f"client 2a02:898:0:20::10 {req.pk} 200/86400,1/1 @example.org sandbox", req.pk)}
    assert other.state == S.ACTIVE


def test_account_entries_go_to_sender_login_maps(team, requester, approver,
                                                 django_capture_on_commit_callbacks):
    acct = RelayRequestFactory(team=team, created_by=requester, account=True,
                               account_name="svc-shop", state=S.PENDING_APPROVAL,
                               check_verdict="pass", sender_addresses=["shop@example.org"],
                               sender_domains=["shop.example.org"])
    approve(acct, approver, django_capture_on_commit_callbacks)
    maps = RelayConfigVersion.objects.get().files["sender_login_maps"]
    lines = [line for line in maps.splitlines() if line and not line.startswith("#")]
    assert sorted(line.split() for line in lines) == [
        ["@shop.example.org", "svc-shop"], ["shop@example.org", "svc-shop"]]


def test_a_value_that_would_break_a_line_is_left_out_and_flagged(pending, approver):
    # given an active entry whose FQDN would inject a line (written around validation)
    RelayRequest.objects.filter(pk=pending.pk).update(state=S.ACTIVE,
                                                      fqdn="evil.example.org\n0.0.0.0/0")
    # when the config is built
    version = relay_config_rebuild(reason="test")
    # then the version exists without any line of it, and says why it was left out
    assert "0.0.0.0" not in version.files["client_access.cidr"]
    assert "evil" not in version.files["client_access.cidr"]
    [skipped] = version.skipped
    assert skipped["request"] == pending.pk
    assert "invalid FQDN 'evil.example.org\\n0.0.0.0/0'" in skipped["reason"]
    assert RelayRequest.objects.get(pk=pending.pk).provision_error == skipped["reason"]


def test_export_command_writes_atomically(pending, approver, tmp_path,
                                          django_capture_on_commit_callbacks):
    approve(pending, approver, django_capture_on_commit_callbacks)
    out = tmp_path / "relay"
    call_command("export_relay_config", "--out", str(out))
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["version"] == 1
    for name, meta in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == meta["sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name != "relay"]  # no temp dirs left


def test_pull_endpoint_token_etag_and_304(pending, approver, settings,
                                          django_capture_on_commit_callbacks):
    settings.RELAY_CONFIG_TOKEN = "s3cret-token"
    approve(pending, approver, django_capture_on_commit_callbacks)
    client = Client()
    url = "/relay-config/client_access.cidr"
    assert client.get(url).status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION="Token wrong").status_code == 401
    ok = client.get(url, HTTP_AUTHORIZATION="Token s3cret-token")
    assert ok.status_code == 200
    assert ok.content.decode() == RelayConfigVersion.objects.get().files["client_access.cidr"]
    assert ok["X-Relay-Config-Version"] == "1"
    cached = client.get(url, HTTP_AUTHORIZATION="Token s3cret-token",
                        HTTP_IF_NONE_MATCH=ok["ETag"])
    assert cached.status_code == 304 and cached.content == b""
    assert client.get("/relay-config/passwd", HTTP_AUTHORIZATION="Token s3cret-token"
                      ).status_code == 404


def test_pull_disabled_without_a_configured_token(pending, settings):
    settings.RELAY_CONFIG_TOKEN = ""
    assert Client().get("/relay-config/MANIFEST.json",
                        HTTP_AUTHORIZATION="Token ").status_code == 401


def test_history_and_diff_pages(pending, approver, requester,
                                django_capture_on_commit_callbacks):
    approve(pending, approver, django_capture_on_commit_callbacks)
    revoke(pending, approver, django_capture_on_commit_callbacks)
    client = Client()
    client.force_login(approver)
    assert "v2" in client.get(reverse("relay:versions")).content.decode()
    diff = client.get(reverse("relay:diff", args=[1, 2])).content.decode()
    assert "-81.2.69.10/32 OK" in diff
    assert f"#{pending.pk}" in diff
    client.force_login(requester)
    assert client.get(reverse("relay:diff", args=[1, 2])).status_code == 403


def test_snippets_on_active_request_pages(team, requester, settings):
    settings.RELAY_HOST = "smtp-relay.example.org"
    server = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE)
    smtps = RelayRequestFactory(team=team, created_by=requester, state=S.ACTIVE,
                                account=True, account_name="svc-ssl", tls_mode="smtps")
    client = Client()
    client.force_login(requester)
    server_page = client.get(server.get_absolute_url())
    keys = [s.key for s in server_page.context["snippets"]]
    assert keys == ["postfix", "django", "smtplib", "nodemailer", "test"]
    postfix = server_page.context["snippets"][0].text
    assert "relayhost = [smtp-relay.example.org]:587" in postfix
    account = {s.key: s.text for s in client.get(smtps.get_absolute_url()).context["snippets"]}
    assert "[smtp-relay.example.org]:465 svc-ssl:<password from the directory>" in \
        account["sasl_passwd"]
    assert "smtp_tls_wrappermode = yes" in account["postfix"]
    assert "EMAIL_USE_SSL = True" in account["django"]
    assert "SMTP_SSL" in account["smtplib"] and "secure: true" in account["nodemailer"]
    assert "Copy" in client.get(smtps.get_absolute_url()).content.decode()


# --- proven by Postfix -----------------------------------------------------------------


def _rcpt(pf: PostfixInstance, source: str) -> int:
    with smtplib.SMTP(pf.host, pf.port, source_address=(source, 0), timeout=15) as smtp:
        smtp.ehlo()
        smtp.mail("app@example.org")
        code, _ = smtp.rcpt("someone@remote.example")
        smtp.rset()
    return code


@pytest.mark.postfix
def test_postmap_answers_ok_only_for_active_addresses(team, requester, approver, tmp_path,
                                                      django_capture_on_commit_callbacks):
    postmap = require_tool("postmap")
    active = approved(team, requester, approver, django_capture_on_commit_callbacks)
    revoked = approved(team, requester, approver, django_capture_on_commit_callbacks,
                       fqdn="old.example.org", ipv4=["81.2.69.50"], ipv6=[])
    revoke(revoked, approver, django_capture_on_commit_callbacks)
    RelayRequestFactory(team=team, created_by=requester, state=S.EXPIRED,
                        ipv4=["81.2.69.60"], ipv6=[])
    RelayRequestFactory(team=team, created_by=requester, state=S.REJECTED,
                        ipv4=["81.2.69.70"], ipv6=[])
    relay_config_export(tmp_path / "out")
    conf = str(minimal_config_dir(tmp_path / "conf"))
    cidr = f"cidr:{tmp_path / 'out' / 'client_access.cidr'}"
    for address in active.addresses:
        result = run_tool(postmap, "-c", conf, "-q", address, cidr)
        assert (result.returncode, result.stdout.strip()) == (0, "OK"), result.stderr
    for address in ("81.2.69.50", "81.2.69.60", "81.2.69.70", "81.2.69.11"):
        result = run_tool(postmap, "-c", conf, "-q", address, cidr)
        assert (result.returncode, result.stdout) == (1, ""), address


@pytest.mark.postfix
def test_live_postfix_relays_for_approved_lab_client_until_revoked(
    team, requester, approver, settings, django_capture_on_commit_callbacks,
):
    require_tool("postfix")
    require_root()
    settings.RELAY_LAB_NETWORKS = ["127.0.0.0/8"]
    settings.RELAY_SENDER_MODE = "reject"  # no postsrsd here: rewrite mode would defer
    # given a request for a loopback lab client, checked for real and approved
    req = RelayRequestFactory(team=team, created_by=requester, fqdn="relay-client.lab.example.org",
                              ipv4=["127.0.0.2"], ipv6=[])
    with django_capture_on_commit_callbacks(execute=True):
        services.request_act(request_id=req.pk, action="submit", by=requester)
    req.refresh_from_db()
    assert (req.state, req.check_verdict) == (S.PENDING_APPROVAL, "pass"), list(
        req.checks.values_list("check_id", "status", "detail"))
    approve(req, approver, django_capture_on_commit_callbacks)
    with PostfixInstance(extra_main_cf=WITHOUT_POLICY_SERVICE) as pf:
        settings.RELAY_MAP_DIRECTORY = str(pf.map_dir)
        relay_config_rebuild(reason="map directory of this relay")
        relay_config_export(pf.map_dir)
        pf.start((pf.map_dir / "main.cf.fragment").read_text())
        # when the approved client and another loopback client try to relay
        assert _rcpt(pf, "127.0.0.2") == 250, pf.log()
        assert _rcpt(pf, "127.0.0.3") == 554
        # when the entry is revoked, exported again and Postfix reloads
        with django_capture_on_commit_callbacks(execute=True):
            services.request_act(request_id=req.pk, action="revoke", by=approver,
                                 comment="lab closed")
        _, changed = relay_config_export(pf.map_dir)
        assert changed
        pf.reload()
        deadline = time.monotonic() + 15
        while (code := _rcpt(pf, "127.0.0.2")) == 250 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert code == 554, pf.log()
        assert "Relay access denied" in pf.log()
