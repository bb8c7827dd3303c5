"""The relay back-end seam: relay.py talks to an interface, Postfix implements it, and a
second back-end (``tests/support/plain_backend.py``) is one module plus a registry line."""

from __future__ import annotations

import ast
from datetime import UTC
from datetime import datetime
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from requests_app import relay_backend
from requests_app.artifacts_io import MANIFEST_NAME
from requests_app.directory import directory_change_enqueue
from requests_app.directory import directory_mark_done_manually
from requests_app.models import DirectoryChange
from requests_app.models import RelayConfigVersion
from requests_app.models import RelayRequest
from requests_app.models import RequestState as S
from requests_app.postfix import ACCESS_MAP_NAME
from requests_app.postfix import LOGIN_MAP_NAME
from requests_app.postfix import PostfixBackend
from requests_app.relay import relay_config_export
from requests_app.relay import relay_config_rebuild
from requests_app.relay import relay_config_stale
from requests_app.relay_backend import AccountEntry
from requests_app.relay_backend import RelaySettings
from requests_app.relay_backend import ServerEntry
from requests_app.relay_backend import load_backend
from requests_app.system_checks import relay_backend_configured
from tests.factories import ApproverFactory
from tests.factories import RelayRequestFactory

APP = Path(__file__).resolve().parent.parent / "requests_app"
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
TOKEN = "relay-pull-token"  # noqa: S105 - test-only


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative ones with their dots (``.postfix``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_relay_imports_no_back_end_implementation():
    # given the module that builds versions
    imported = _imported_modules(APP / "relay.py")
    # then it reaches the back-end only through the interface
    assert ".relay_backend" in imported
    assert not {".postfix", "requests_app.postfix"} & imported


@pytest.mark.parametrize("name", ["relay_backend.py", "artifacts_io.py", "postfix.py"])
def test_back_end_modules_stay_django_free(name):
    imported = _imported_modules(APP / name)
    assert not [m for m in imported if m.split(".")[0] == "django"]


def test_postfix_back_end_attributes_each_map_line_to_its_request():
    # given the Postfix back-end and a build with a server and two accounts sharing a sender
    backend = load_backend("postfix", "cidr")
    files = backend.build(
        [ServerEntry(7, "app.example.org", "payments", ("81.2.69.10", "2a02:898:0:20::10"))],
        [AccountEntry(5, "svc-billing", "payments", ("billing@example.org",)),
         AccountEntry(9, "svc-alerts", "ops", ("@example.org", "billing@example.org"))],
        RelaySettings(relay_host="relay.example.org"), version=1, generated_at=NOW)
    # when the lines of each map are attributed
    access = backend.attribute(ACCESS_MAP_NAME, files[ACCESS_MAP_NAME].decode(), {})
    logins = backend.attribute(LOGIN_MAP_NAME, files[LOGIN_MAP_NAME].decode(),
                               {"svc-alerts": 9, "svc-billing": 5})
    # then every address line names its request, every login line its first login's request
    assert access == {"81.2.69.10/32 OK": 7, "2a02:898:0:20::10/128 OK": 7}
    assert logins == {"@example.org  svc-alerts": 9,
                      "billing@example.org  svc-alerts,svc-billing": 9}
    assert backend.artifact_names == (ACCESS_MAP_NAME, LOGIN_MAP_NAME, "relay_policy",
                                      "main.cf.fragment", "master.cf.fragment",
                                      MANIFEST_NAME)


def test_postfix_back_end_knows_when_a_left_entry_is_still_served():
    backend = PostfixBackend()
    server = ServerEntry(7, "app.example.org", "payments", ("81.2.69.10",))
    account = AccountEntry(5, "svc-shop", "payments", ("Shop@example.org",))
    renewal = AccountEntry(8, "svc-shop", "payments", ("shop@example.org",))
    files = {name: data.decode() for name, data in backend.build(
        [server], [account], RelaySettings(relay_host="relay.example.org"), version=1,
        generated_at=NOW).items()}
    assert backend.stale(files, [server], []) is True
    assert backend.stale(files, [account], []) is True
    # a live renewal of the same account legitimately serves the same login-map line
    renewed = {name: data.decode() for name, data in backend.build(
        [server], [renewal], RelaySettings(relay_host="relay.example.org"), version=2,
        generated_at=NOW).items()}
    assert backend.stale(renewed, [account], [renewal]) is False
    # but the policy file's quota line names the request: the old one's is still served
    assert backend.stale(files, [account], [renewal]) is True
    empty = {name: "" for name in backend.attributed_names}
    assert backend.stale(empty, [server, account], []) is False


@pytest.mark.parametrize(("name", "map_type", "message"), [
    ("postfix", "btree",
     "RELAY_MAP_TYPE 'btree' is not supported by the postfix back-end "
     "(supported: cidr, hash, lmdb)"),
    ("exim", "cidr", "RELAY_BACKEND 'exim' is not a known relay back-end (known: postfix)"),
])
def test_an_unsupported_back_end_setting_is_refused_by_name(name, map_type, message):
    with pytest.raises(ValueError) as excinfo:
        load_backend(name, map_type)
    assert str(excinfo.value) == message


def test_the_system_check_names_a_bad_relay_back_end_setting(settings):
    # given a map type the back-end does not implement
    settings.RELAY_MAP_TYPE = "btree"
    # when Django's checks run
    errors = relay_backend_configured()
    # then one error names the setting and what is supported
    assert [e.id for e in errors] == ["relaydesk.E001"]
    assert "RELAY_MAP_TYPE 'btree'" in errors[0].msg and "cidr, hash, lmdb" in errors[0].msg
    settings.RELAY_MAP_TYPE = "cidr"
    assert relay_backend_configured() == []


@pytest.mark.django_db
def test_a_build_with_an_unsupported_map_type_changes_nothing(team, requester, settings):
    # given a request waiting in provisioning and a map type nobody implements
    waiting = RelayRequestFactory(team=team, created_by=requester, state=S.PROVISIONING,
                                  check_verdict="pass")
    settings.RELAY_MAP_TYPE = "btree"
    # when a build runs, then it fails naming the setting
    with pytest.raises(ValueError, match="RELAY_MAP_TYPE 'btree'"):
        relay_config_rebuild(reason="test")
    # and nothing was built or activated
    assert not RelayConfigVersion.objects.exists()
    waiting.refresh_from_db()
    assert waiting.state == S.PROVISIONING


@pytest.mark.django_db
def test_a_second_back_end_is_one_module(team, requester, settings, monkeypatch, tmp_path):
    # given a second back-end registered by one line and chosen by the settings
    monkeypatch.setitem(relay_backend.BACKENDS, "plain", "tests.support.plain_backend")
    settings.RELAY_BACKEND, settings.RELAY_MAP_TYPE = "plain", "text"
    settings.RELAY_CONFIG_TOKEN = TOKEN
    server = RelayRequestFactory(team=team, created_by=requester, state=S.PROVISIONING,
                                 check_verdict="pass")
    account = RelayRequestFactory(team=team, created_by=requester, state=S.PROVISIONING,
                                  check_verdict="pass", account=True, account_name="svc-shop")
    # (an account goes live once its directory change is done too)
    change = directory_change_enqueue(request=account, action=DirectoryChange.Action.ADD)
    directory_mark_done_manually(change_id=change.pk, by=ApproverFactory())
    # when the relay config is built
    version = relay_config_rebuild(reason="test")
    # then the version holds that back-end's files and history, and the requests are live
    assert set(version.files) == {"allow.txt", MANIFEST_NAME}
    assert (version.server_count, version.account_count) == (1, 1)
    assert {(c.line, c.request_id) for c in version.changes.all()} == {
        (f"81.2.69.10 request {server.pk}", server.pk),
        (f"2a02:898:0:20::10 request {server.pk}", server.pk),
        ("noreply@example.org login svc-shop", account.pk),
        ("@example.org login svc-shop", account.pk),
    }
    assert set(RelayRequest.objects.values_list("state", flat=True)) == {S.ACTIVE}
    # and the export and the pull endpoint serve exactly its files
    relay_config_export(tmp_path / "relay")
    assert sorted(p.name for p in (tmp_path / "relay").iterdir()) == [MANIFEST_NAME,
                                                                     "allow.txt"]
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Token {TOKEN}"}
    assert client.get("/relay-config/allow.txt", **auth).status_code == 200
    assert client.get(f"/relay-config/{ACCESS_MAP_NAME}", **auth).status_code == 404
    # and the sweep's staleness question is answered by the same back-end
    assert relay_config_stale() is False
    RelayRequest.objects.filter(pk=server.pk).update(state=S.REVOKED,
                                                     updated_at=timezone.now())
    assert relay_config_stale() is True
    relay_config_rebuild(reason="test")
    assert relay_config_stale() is False
