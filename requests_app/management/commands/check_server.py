"""``manage.py check_server FQDN [--ipv4 A]... [--ipv6 A]... [--sender-domain D]...
[--dkim-selector S] [--nameserver HOST[:PORT]] [--timeout SECONDS] --json``

The CLI contract (docs/dns-checks.md): one JSON object on stdout; exit 0 for pass/warn, 1 for
fail, 2 for error or bad arguments, with a one-line message on stderr (never a
traceback). Config management scripts call it before filing a request.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any
from typing import NoReturn

from django.conf import settings
from django.core.management.base import BaseCommand
from django.core.management.base import CommandParser
from django.db import connection
from django.db.utils import DatabaseError

from requests_app.checking import check_config
from requests_app.checks import CheckSpec
from requests_app.checks import CheckStatus
from requests_app.checks import normalise_address
from requests_app.checks import normalise_fqdn
from requests_app.checks import run_checks_sync
from requests_app.dns import parse_nameserver
from requests_app.models import ApprovedSenderDomain
from requests_app.rules import HOST_LABEL_RE

# The exit code of each verdict (the verdict itself: ``checks.worst_status``).
EXIT = {CheckStatus.PASS: 0, CheckStatus.WARN: 0, CheckStatus.FAIL: 1, CheckStatus.ERROR: 2}


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"check_server: error: {message}\n")
    raise SystemExit(2)


class Command(BaseCommand):
    help = "Run the DNS checks for a server (and sender domains) and print JSON."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.error = _fail  # type: ignore[method-assign]  # one line, not the usage
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("fqdn")
        parser.add_argument("--ipv4", action="append", default=[])
        parser.add_argument("--ipv6", action="append", default=[])
        parser.add_argument("--sender-domain", action="append", default=[], dest="domains")
        parser.add_argument("--dkim-selector", default=None)
        parser.add_argument("--nameserver", action="append", default=[],
                            help="HOST[:PORT]; default: DNS_NAMESERVERS or the system's")
        parser.add_argument("--timeout", type=float, default=None,
                            help="seconds for the whole run (default DNS_LIFETIME_SECONDS)")
        parser.add_argument("--json", action="store_true", help="print JSON (the contract)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            fqdn = normalise_fqdn(options["fqdn"])
        except ValueError as exc:
            _fail(f"FQDN {options['fqdn']!r}: {exc}")
        addresses = []
        for flag, version in (("ipv6", 6), ("ipv4", 4)):
            for raw in options[flag]:
                try:
                    address = normalise_address(raw)
                except ValueError:
                    _fail(f"--{flag} {raw!r} is not an IP address")
                if (":" in address) != (version == 6):
                    _fail(f"--{flag} {raw!r} is not an IPv{version} address")
                addresses.append(address)
        domains = []
        for raw in options["domains"]:
            try:
                domains.append(normalise_fqdn(raw))
            except ValueError as exc:
                _fail(f"--sender-domain {raw!r}: {exc}")
        selector = options["dkim_selector"]
        if selector is not None:
            # the forms' rule (validators.validate_dkim_selector): one host-name label
            raw, selector = selector, selector.strip().lower()
            if not HOST_LABEL_RE.fullmatch(selector):
                _fail(f"--dkim-selector {raw!r} must be one DNS label (letters, digits, '-')")
        nameservers = options["nameserver"] or list(settings.DNS_NAMESERVERS)
        for ns in nameservers:
            try:
                parse_nameserver(ns)
            except ValueError as exc:
                _fail(str(exc))
        timeout = options["timeout"]
        if timeout is not None and not 0 < timeout <= 300:
            _fail("--timeout must be between 0 and 300 seconds")
        config = check_config(include_db=_db_available())
        if timeout is not None:
            config = replace(config, lifetime=timeout)
        try:
            report = run_checks_sync(
                CheckSpec(fqdn=fqdn, addresses=tuple(addresses), sender_domains=tuple(domains),
                          dkim_selector=selector),
                config,
                nameservers,
            )
        except ValueError as exc:
            _fail(str(exc))
        data = report.as_dict()
        if options["json"]:
            self.stdout.write(json.dumps(data, sort_keys=False))
        else:
            for check in data["checks"]:
                self.stdout.write(
                    f"{check['status']:5}  {check['id']:20} {check['subject']}: {check['detail']}"
                )
            self.stdout.write(f"verdict: {data['verdict']}")
        raise SystemExit(EXIT[data["verdict"]])


def _db_available() -> bool:
    """Approved domains from the admin count too, but the CLI works without a database."""
    try:
        connection.ensure_connection()
        ApprovedSenderDomain.objects.exists()
    except DatabaseError:
        return False
    return True
