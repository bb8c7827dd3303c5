"""App config for the relay onboarding domain."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class RequestsAppConfig(AppConfig):
    name = "requests_app"
    verbose_name = _("Relay onboarding")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks and the Celery tasks once the models are loaded.

        ``dispatch.dispatch_on_commit`` looks tasks up by name in the Celery app, so
        every process (web, worker, command) must have imported ``tasks.py``.
        """
        # deferred: tasks.py imports the models, importable only once the apps are loaded
        from . import system_checks  # noqa: F401 - registers the system checks
        from . import tasks  # noqa: F401 - registers the tasks dispatch sends by name
