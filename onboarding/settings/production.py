"""Production: security switched on; every value still comes from the environment."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import DEV_SECRET_KEY
from .base import env

DEBUG = False
# https://docs.djangoproject.com/en/5.2/howto/deployment/checklist/
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECRET_KEY = env.str("DJANGO_SECRET_KEY")
# The development default is public (it is in this repository): a deployment that copied
# it signs sessions and password-reset links with a key anyone can read.
if SECRET_KEY == DEV_SECRET_KEY or SECRET_KEY.startswith(("insecure-", "django-insecure-")):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is the public development key (or another 'insecure-' key): "
        "set a long random value for production."
    )
# Issue mode keeps each new password encrypted until its one-time view: a missing key,
# or the public development one, would make that encryption worthless.
if RELAY_ACCOUNT_CREDENTIALS == "issue" and RELAY_CREDENTIAL_KEY in ("", DEV_CREDENTIAL_KEY):  # noqa: F405
    raise ImproperlyConfigured(
        "RELAY_ACCOUNT_CREDENTIALS=issue needs RELAY_CREDENTIAL_KEY: base64 of 32 random "
        "bytes (python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')."
    )
EMAIL_BACKEND = env.str(
    "DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend"
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
