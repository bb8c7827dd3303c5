"""WSGI entry point for gunicorn: production settings unless DJANGO_SETTINGS_MODULE says.

The package is imported before this module runs (``onboarding/__init__.py`` loads the
Celery app), so the package's default is production too: nothing picks ``local`` first.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "onboarding.settings.production")

application = get_wsgi_application()
