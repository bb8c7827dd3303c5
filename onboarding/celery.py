"""The Celery application, configured from Django settings (namespace ``CELERY``)."""

from __future__ import annotations

import os
from logging.config import dictConfig

from celery import Celery
from celery.signals import setup_logging
from django.conf import settings

# Importing the package (``onboarding/__init__.py`` imports this module) must not pick
# the settings of a web process: gunicorn imports ``onboarding.wsgi`` and only then would
# that module set its default, too late if this one had already chosen. So the default
# here is the same as wsgi.py's and asgi.py's, production; ``manage.py``, ``dev.py`` and
# the tests name their settings explicitly (docs/architecture.md, "Runtime and
# concurrency").
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "onboarding.settings.production")

app = Celery("onboarding")
app.config_from_object("django.conf:settings", namespace="CELERY")


@setup_logging.connect
def _config_loggers(*args: object, **kwargs: object) -> None:
    """Reuse Django's LOGGING so worker and web log the same way."""
    dictConfig(settings.LOGGING)


app.autodiscover_tasks()
