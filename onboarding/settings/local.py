"""Local development: debug on by default, everything else from base."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
# A fixed, public development key for the one-time credential links (production refuses it).
RELAY_CREDENTIAL_KEY = RELAY_CREDENTIAL_KEY or DEV_CREDENTIAL_KEY  # noqa: F405
