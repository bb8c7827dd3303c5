"""Map types cidr, hash and lmdb: the same entries give the same answers from Postfix.

``postmap -q`` asks Postfix's own table code: the cidr file as rendered, and the hash
and lmdb files built by ``postmap`` from the rendered source, exactly as the relay does
after installing. For every address the answer is the same across the three types:
``OK`` for an active address, nothing for a revoked or unlisted one, IPv4 and IPv6, in
the form smtpd looks it up (compressed IPv6; smtpd turns an IPv4-mapped client into its
IPv4 address before any look-up) and in the forms it never uses.

Why IPv6 stays in a cidr file for hash and lmdb: an indexed access table is also
searched with the client's address cut at its last ``:`` again and again (access(5),
"IPv6 address patterns"), so the key ``2001:db8::a`` would match the client
``2001:db8::a:1``. The live test shows that with a real smtpd (XCLIENT sets the client
address from loopback): a naive hash file lets the neighbour relay, the generated
configuration does not.
"""

from __future__ import annotations

import json
import smtplib
from datetime import UTC
from datetime import datetime
from pathlib import Path

import pytest

from requests_app.artifacts_io import write_artifacts_atomically
from requests_app.postfix import FRAGMENT_NAME
from requests_app.postfix import INDEXED_ACCESS_MAP_NAME
from requests_app.postfix import IPV6_ACCESS_MAP_NAME
from requests_app.postfix import LOGIN_MAP_NAME
from requests_app.postfix import MANIFEST_NAME
from requests_app.postfix import MAP_TYPES
from requests_app.postfix import AccountEntry
from requests_app.postfix import PostfixBackend
from requests_app.postfix import RelaySettings
from requests_app.postfix import ServerEntry
from requests_app.postfix import access_map_names
from requests_app.postfix import build_artifacts
from requests_app.relay_backend import load_backend
from tests.support.postfix import PostfixInstance
from tests.support.postfix import minimal_config_dir
from tests.support.postfix import require_root
from tests.support.postfix import require_tool
from tests.support.postfix import run_tool

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SETTINGS = RelaySettings(relay_host="relay.example.org", sender_mode="reject",
                         lab_networks=("192.0.2.0/24", "2001:db8::/32", "127.0.0.0/8"))
ACTIVE = (
    ServerEntry(1, "a.example.org", "ops", ("192.0.2.10", "2001:db8::a")),
    ServerEntry(2, "b.example.org", "ops", ("192.0.2.200", "2001:db8:1:2:3:4:5:6")),
    ServerEntry(3, "c.example.org", "ops", ("2001:db8::",)),
)
REVOKED = ServerEntry(4, "gone.example.org", "ops", ("192.0.2.44", "2001:db8::44"))
ACCOUNTS = (AccountEntry(5, "svc-app", "ops", ("app@example.org", "@app.example.org")),
            AccountEntry(6, "svc-two", "ops", ("app@example.org",)))

# (what is asked, the answer smtpd would act on). smtpd asks with the compressed form.
ANSWERS = [
    ("192.0.2.10", "OK"), ("192.0.2.200", "OK"), ("2001:db8::a", "OK"),
    ("2001:db8:1:2:3:4:5:6", "OK"), ("2001:db8::", "OK"),
    ("192.0.2.44", None), ("2001:db8::44", None),  # revoked
    ("192.0.2.11", None), ("192.0.2.1", None), ("2001:db8::b", None),  # unlisted
    ("192.0.2", None), ("2001:db8:", None),  # what a truncated look-up would ask
]
# Forms smtpd never asks with: still the same answer for every type (IPv6 is matched by
# the cidr file, which parses the address; a mapped address is not an IPv4 pattern).
NEVER_ASKED = [("::ffff:192.0.2.10", None), ("2001:0db8:0000:0000:0000:0000:0000:000a", "OK"),
               ("2001:DB8::A", "OK")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Each map type's files as the relay has them after install and ``postmap``."""
    require_tool("postmap")
    conf = str(minimal_config_dir(tmp_path_factory.mktemp("conf")))
    out = {}
    for map_type in MAP_TYPES:
        directory = tmp_path_factory.mktemp(map_type) / "relay"
        artifacts = build_artifacts(ACTIVE, ACCOUNTS, SETTINGS, version=1,
                                    generated_at=NOW, map_type=map_type)
        write_artifacts_atomically(directory, artifacts)
        for target in json.loads(artifacts[MANIFEST_NAME])["postmap"]:
            kind, _, name = target.partition(":")
            run_tool("postmap", "-c", conf, f"{kind}:{directory / name}", check=True)
        out[map_type] = directory
    out["conf"] = Path(conf)
    return out


def _access_answer(installed: dict[str, Path], map_type: str, key: str) -> str | None:
    """What the access restriction list decides: each access map in its order."""
    directory = installed[map_type]
    for name in access_map_names(map_type):
        kind = "cidr" if name.endswith(".cidr") else map_type
        result = run_tool("postmap", "-c", str(installed["conf"]), "-q", key,
                          f"{kind}:{directory / name}")
        assert result.stderr == "", result.stderr
        if result.returncode == 0:
            return result.stdout.strip()
        assert result.returncode == 1
    return None


@pytest.mark.postfix
@pytest.mark.parametrize(("key", "expected"), ANSWERS + NEVER_ASKED)
def test_every_map_type_answers_the_same_for_every_address(installed, key, expected):
    answers = {map_type: _access_answer(installed, map_type, key) for map_type in MAP_TYPES}
    assert answers == dict.fromkeys(MAP_TYPES, expected)


@pytest.mark.postfix
@pytest.mark.parametrize("key", ["app@example.org", "@app.example.org", "APP@example.org",
                                 "nobody@example.org"])
def test_the_login_map_answers_the_same_for_every_map_type(installed, key):
    answers = set()
    for map_type in MAP_TYPES:
        kind = "texthash" if map_type == "cidr" else map_type
        result = run_tool("postmap", "-c", str(installed["conf"]), "-q", key,
                          f"{kind}:{installed[map_type] / LOGIN_MAP_NAME}")
        answers.add((result.returncode, result.stdout))
    assert len(answers) == 1, answers


def test_indexed_types_keep_ipv4_bare_and_ipv6_in_cidr():
    artifacts = build_artifacts(ACTIVE, ACCOUNTS, SETTINGS, version=1, generated_at=NOW,
                                map_type="lmdb")
    assert artifacts[INDEXED_ACCESS_MAP_NAME].decode() == (
        "# generated by Relaydesk, DO NOT EDIT\n"
        "# request 1 a.example.org team ops\n192.0.2.10 OK\n"
        "# request 2 b.example.org team ops\n192.0.2.200 OK\n"
    )
    assert artifacts[IPV6_ACCESS_MAP_NAME].decode() == (
        "# request 3 c.example.org team ops\n2001:db8::/128 OK\n"
        "# request 1 a.example.org team ops\n2001:db8::a/128 OK\n"
        "# request 2 b.example.org team ops\n2001:db8:1:2:3:4:5:6/128 OK\n"
    )
    assert json.loads(artifacts[MANIFEST_NAME])["postmap"] == [
        "lmdb:client_access", "lmdb:sender_login_maps"]


@pytest.mark.parametrize("map_type", MAP_TYPES)
def test_each_map_type_is_a_back_end_with_its_own_artefact_names(map_type):
    backend = load_backend("postfix", map_type)
    assert backend.map_type == map_type
    names = backend.artifact_names
    assert names[: len(access_map_names(map_type))] == access_map_names(map_type)
    assert set(names) >= {LOGIN_MAP_NAME, "relay_policy", FRAGMENT_NAME,
                          "master.cf.fragment", MANIFEST_NAME}
    built = backend.build(ACTIVE, ACCOUNTS, SETTINGS, version=1, generated_at=NOW)
    assert tuple(built) == names
    # every address line is attributed to its request, in whichever access file it is
    owners = {}
    for name in access_map_names(map_type):
        owners.update(backend.attribute(name, built[name].decode(), {}))
    assert sorted(owners.values()) == [1, 1, 2, 2, 3]
    assert backend.stale({n: built[n].decode() for n in backend.attributed_names},
                         [ACTIVE[2]], []) is True


def _relay_as(pf: PostfixInstance, address: str) -> int:
    """RCPT to a remote domain with the client address set by XCLIENT."""
    with smtplib.SMTP(pf.host, pf.port, timeout=15) as client:
        client.ehlo()
        code, message = client.docmd("XCLIENT", f"ADDR=IPV6:{address}")
        assert code == 220, message
        client.ehlo()
        assert client.mail("app@example.org")[0] == 250
        return client.rcpt("x@remote.example")[0]


# The access map alone (no policy service here), and loopback may set the client address.
_LIVE_EXTRA = ("smtpd_recipient_restrictions =\nsmtpd_end_of_data_restrictions =\n"
               "smtpd_authorized_xclient_hosts = 127.0.0.1\n"
               # XCLIENT takes an IPv6 address only when the protocol is enabled
               "inet_protocols = ipv4, ipv6\n")


@pytest.mark.postfix
def test_live_smtpd_lets_an_ipv6_neighbour_relay_through_a_naive_hash_key_but_not_ours():
    require_tool("postfix")
    require_root()
    neighbour = "2001:db8::a:1"  # compressed, cut at the last ':' it is 2001:db8::a
    # given the generated hash configuration, installed and postmapped
    with PostfixInstance(extra_main_cf=_LIVE_EXTRA) as pf:
        relay = RelaySettings(relay_host="relay.example.org", sender_mode="reject",
                              map_directory=str(pf.map_dir), lab_networks=SETTINGS.lab_networks)
        artifacts = build_artifacts(ACTIVE, ACCOUNTS, relay, version=1, generated_at=NOW,
                                    map_type="hash")
        write_artifacts_atomically(pf.map_dir, artifacts)
        conf = str(minimal_config_dir(pf.root / "postmap-conf"))
        for target in json.loads(artifacts[MANIFEST_NAME])["postmap"]:
            kind, _, name = target.partition(":")
            run_tool("postmap", "-c", conf, f"{kind}:{pf.map_dir / name}", check=True)
        pf.start(artifacts[FRAGMENT_NAME].decode())
        # then the listed address relays and its neighbour is refused
        assert _relay_as(pf, "2001:db8::a") == 250, pf.log()
        assert _relay_as(pf, neighbour) == 554, pf.log()
    # given the naive layout: the same IPv6 address as a bare key of the hash file
    with PostfixInstance(extra_main_cf=_LIVE_EXTRA) as pf:
        pf.map_dir.mkdir(parents=True)
        (pf.map_dir / "naive").write_text("2001:db8::a OK\n")
        conf = str(minimal_config_dir(pf.root / "postmap-conf"))
        run_tool("postmap", "-c", conf, f"hash:{pf.map_dir / 'naive'}", check=True)
        pf.start("smtpd_relay_restrictions = permit_mynetworks, check_client_access "
                 f"hash:{pf.map_dir / 'naive'}, reject_unauth_destination\n")
        # then the neighbour relays too: this is why IPv6 stays in the cidr file
        assert _relay_as(pf, "2001:db8::a") == 250, pf.log()
        assert _relay_as(pf, neighbour) == 250, pf.log()


def test_the_backend_refuses_an_unknown_map_type_by_name():
    with pytest.raises(ValueError, match="RELAY_MAP_TYPE 'btree' .*cidr, hash, lmdb"):
        PostfixBackend("btree")
