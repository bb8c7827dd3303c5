"""The Celery application, configured from Django settings (namespace ``CELERY``)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "onboarding.settings.local")

app = Celery("onboarding")
app.config_from_object("django.conf:settings", namespace="CELERY")


@setup_logging.connect
def _config_loggers(*args: object, **kwargs: object) -> None:
    """Reuse Django's LOGGING so worker and web log the same way."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)


app.autodiscover_tasks()
