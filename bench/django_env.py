"""Shared set-up of the Django-backed benchmarks: a throw-away database, migrated."""

from __future__ import annotations

import os
import tempfile
from typing import Any

__all__ = ["setup_django"]


def setup_django(database_url: str = "", prefix: str = "relaydesk-bench-") -> tuple[str, Any]:
    """Point Django at a fresh SQLite file (or ``database_url``), migrate, make an owner.

    Returns the temporary directory and a ``(team, user)`` pair to own bench entries.
    """
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.environ["RELAYDESK_VAR_DIR"] = tmp
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{tmp}/bench.sqlite3"
    os.environ["DJANGO_SETTINGS_MODULE"] = "onboarding.settings.local"
    os.environ["DJANGO_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from requests_app.models import Team

    call_command("migrate", verbosity=0)
    # get_or_create: a bench may run again on a database an earlier run filled
    team, _ = Team.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    user, _ = get_user_model().objects.get_or_create(username="bench")
    return tmp, (team, user)
