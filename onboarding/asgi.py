"""ASGI entry point (unused by default; kept for completeness of the project layout)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "onboarding.settings.production")

application = get_asgi_application()
