"""The ``check_server`` CLI contract, run as config management runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, nameserver: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "onboarding.settings.test",
        "DNS_NAMESERVERS": nameserver,
        "RELAY_SPF_INCLUDE": "_spf.example.org",
        "RELAY_APPROVED_SENDER_DOMAINS": "example.org",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'none.sqlite3'}",
    }
    return subprocess.run([sys.executable, "manage.py", "check_server", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_passing_server_prints_contract_json_and_exits_0(dns_server, tmp_path):
    result = run_cli("App.Example.org.", "--ipv4", "81.2.69.10", "--ipv6",
                     "2a02:0898:0:20:0:0:0:0010", "--sender-domain", "example.org", "--json",
                     nameserver=dns_server.nameserver, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data) == ["verdict", "checks"]
    assert data["verdict"] == "pass"
    ids = sorted({(c["id"], c["subject"]) for c in data["checks"]})
    assert ids == [
        ("address_policy", "2a02:898:0:20::10"), ("address_policy", "81.2.69.10"),
        ("forward", "app.example.org"),
        ("reverse", "2a02:898:0:20::10"), ("reverse", "81.2.69.10"),
        ("sender_dmarc", "example.org"), ("sender_domain_policy", "example.org"),
        ("sender_spf", "example.org"),
    ]
    assert all(set(c) == {"id", "subject", "status", "detail", "evidence"}
               for c in data["checks"])
    assert result.stderr == ""


def test_failing_server_exits_1(dns_server, tmp_path):
    result = run_cli("app.example.org", "--ipv4", "81.2.69.11", "--json",
                     nameserver=dns_server.nameserver, tmp_path=tmp_path)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["verdict"] == "fail"
    forward = next(c for c in data["checks"] if c["id"] == "forward")
    assert forward["status"] == "fail"


def test_unanswered_dns_exits_2_within_timeout(tmp_path):
    import socket
    import time

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # receives, never answers
    try:
        start = time.monotonic()
        result = run_cli("app.example.org", "--ipv4", "81.2.69.10", "--timeout", "1",
                         "--json", nameserver=f"127.0.0.1:{silent.getsockname()[1]}",
                         tmp_path=tmp_path)
        elapsed = time.monotonic() - start
    finally:
        silent.close()
    assert result.returncode == 2
    assert json.loads(result.stdout)["verdict"] == "error"
    assert elapsed < 15  # interpreter start-up included; the checks themselves take ~1 s


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad..name", "--json"], "empty label"),
        (["app.example.org", "--ipv4", "1.2.3", "--json"], "not an IP address"),
        (["app.example.org", "--ipv4", "2a02:898::1", "--json"], "not an IPv4"),
        (["app.example.org", "--nameserver", "dns.example:53", "--json"], "not an IP"),
        (["app.example.org", "--timeout", "-1", "--json"], "--timeout"),
        (["--json"], "required"),
        (["app.example.org", "--bogus"], "unrecognized arguments"),
        # the selector rule of the request forms, not a looser one of its own
        (["app.example.org", "--dkim-selector", "sel_1", "--json"], "one DNS label"),
        (["app.example.org", "--dkim-selector", "", "--json"], "one DNS label"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, dns_server, tmp_path):
    result = run_cli(*args, nameserver=dns_server.nameserver, tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
