"""``manage.py relay_test <request-id> --to ADDR``: the request's test-mail tool, run here.

The relay-side admin's way to run the same checks the owners' downloaded script runs
(``relay_probe``, with the facts of ``relay_test.facts_for``): DNS, connection, TLS,
login (an account's password from ``RELAY_PASSWORD`` or a prompt, never an option),
sender, test mail. From the relay host a server request's mail is refused with 554
unless ``--source-address`` binds to one of the request's addresses on this host; an
account's test needs its password. Exits with the tool's status (docs/test-mail.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from django.core.management.base import CommandParser
from django.urls import reverse

from requests_app import relay_probe
from requests_app.models import RelayRequest
from requests_app.relay_test import facts_for


class Command(BaseCommand):
    help = ("Check the relay path of one request (DNS, connection, TLS, login, sender) "
            "and send a test mail, explaining any refusal.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("request_id", type=int, help="the request's number")
        relay_probe.add_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            request = RelayRequest.objects.get(pk=options["request_id"])
        except RelayRequest.DoesNotExist:
            raise CommandError(f"No request #{options['request_id']}.") from None
        page = settings.RELAYDESK_BASE_URL.rstrip("/") + reverse(
            "requests:detail", args=[request.pk])
        facts = facts_for(request, page_url=page)
        status = relay_probe.check(facts, argparse.Namespace(**options), out=self.stdout)
        if status:
            name = next(k for k, v in relay_probe.EXIT.items() if v == status)
            raise CommandError(f"relay test failed ({name}, exit status {status})",
                               returncode=status)
