"""Test settings: fast hashing, in-memory mail, eager Celery for unit tests.

Integration tests that need a real worker start one in a subprocess with
the same settings and CELERY_TASK_ALWAYS_EAGER=0 (see tests/support/worker.py).
"""

from .base import *  # noqa: F403
from .base import env

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In-memory mail unless a test's worker subprocess asks for real SMTP (DJANGO_EMAIL_BACKEND).
EMAIL_BACKEND = env.str(  # noqa: F405
    "DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend"
)
# A real worker process started by a test sets CELERY_TASK_ALWAYS_EAGER=0.
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
CELERY_TASK_EAGER_PROPAGATES = True
RELAY_CHECK_MAX_RETRIES = 0
# A fixed, public development key for the one-time credential links (production refuses it).
RELAY_CREDENTIAL_KEY = RELAY_CREDENTIAL_KEY or DEV_CREDENTIAL_KEY  # noqa: F405
