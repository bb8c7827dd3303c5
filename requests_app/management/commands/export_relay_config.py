"""``manage.py export_relay_config --out DIR``: write the current relay artefacts atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandParser

from requests_app.relay import relay_config_export


class Command(BaseCommand):
    help = ("Write the relay config files of RELAY_MAP_TYPE (the maps, relay_policy, "
            "main.cf.fragment, master.cf.fragment) and MANIFEST.json.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, type=Path, help="target directory")

    def handle(self, *args: Any, out: Path, **options: Any) -> None:
        version, changed = relay_config_export(out)
        number = version.number if version else 0
        state = "written" if changed else "unchanged"
        self.stdout.write(f"relay config v{number} {state} in {out}")
