"""``manage.py rebuild_relay_config``: the same service the Celery task calls."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from requests_app.relay import relay_config_rebuild


class Command(BaseCommand):
    help = "Build a new relay config version if the active entries changed."

    def handle(self, *args: Any, **options: Any) -> None:
        version = relay_config_rebuild(reason="manage.py rebuild_relay_config")
        self.stdout.write(f"built v{version.number}" if version else "unchanged")
        # An operator running this by hand should see at once what the relay does not get.
        for entry in version.skipped if version else []:
            self.stderr.write(f"left out: request {entry['request']}: {entry['reason']}")
