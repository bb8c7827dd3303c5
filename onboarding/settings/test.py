"""Test settings: fast hashing, in-memory mail, eager Celery for unit tests.

Integration tests that need a real worker start one in a subprocess with
``onboarding.settings.local`` semantics (see tests/support/worker.py).
"""

from .base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In-memory mail unless a test's worker subprocess asks for real SMTP (DJANGO_EMAIL_BACKEND).
EMAIL_BACKEND = env.str(  # noqa: F405
    "DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend"
)
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
RELAY_CHECK_MAX_RETRIES = 0
