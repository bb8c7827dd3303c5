"""Relaydesk settings: everything lives here and is switched by environment variables.

The thin ``local``, ``test`` and ``production`` modules only change defaults; nothing
exists only in production (HackSoft). Every setting named in the docs is read from
the environment variable of the same name, lists comma-separated.
"""

from __future__ import annotations

import os
from pathlib import Path

import environ
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(environ.Env().str("RELAYDESK_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()

# ---------------------------------------------------------------------------
# Core
# ---------------------------------------------------------------------------
# https://docs.djangoproject.com/en/5.2/ref/settings/#debug
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key
# The public development key; production refuses it (settings/production.py).
DEV_SECRET_KEY = "insecure-dev-key-change-me"  # noqa: S105 - public on purpose
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default=DEV_SECRET_KEY)
# https://docs.djangoproject.com/en/5.2/ref/settings/#allowed-hosts
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# https://docs.djangoproject.com/en/5.2/ref/settings/#csrf-trusted-origins
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
TIME_ZONE = "UTC"
USE_TZ = True
LANGUAGE_CODE = "en"
USE_I18N = True
# https://docs.djangoproject.com/en/5.2/topics/i18n/translation/#how-django-discovers-language-preference
# The language comes from the switch (a cookie set by /i18n/setlang/), else from the
# browser's Accept-Language, else English (docs/i18n.md). Norwegian Bokmål and German
# are the languages the organisations using such relays work in.
LANGUAGES = [("en", "English"), ("nb", "Norsk bokmål"), ("de", "Deutsch")]
# The .po sources live here; dev.py compiles them to .mo (build output, not committed).
LOCALE_PATHS = [BASE_DIR / "locale"]
# Mails are rendered by the worker, outside a browser's request: in this language.
RELAYDESK_MAIL_LANGUAGE = env.str("RELAYDESK_MAIL_LANGUAGE", default=LANGUAGE_CODE)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc assets for /api/docs/, no CDN
    "requests_app.apps.RequestsAppConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # after sessions, before common (Django's documented order): picks the language
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # 400 for a NUL character in any query parameter or form field (params.py)
    "requests_app.params.RefuseNulMiddleware",
]

ROOT_URLCONF = "onboarding.urls"
WSGI_APPLICATION = "onboarding.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "requests_app.context_processors.roles",
            ],
            # Human labels, JSON and IDN display (requests_app/display.py) and {% translate %}
            # in every template, pages and mails alike, without {% load %}.
            "builtins": ["requests_app.templatetags.relaydesk", "django.templatetags.i18n"],
        },
    },
]

# ---------------------------------------------------------------------------
# Database: SQLite embedded by default, PostgreSQL with DATABASE_URL
# ---------------------------------------------------------------------------
# https://django-environ.readthedocs.io/en/latest/types.html#environ-env-db-url
DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'relaydesk.sqlite3'}"
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent writers (web threads, gunicorn workers, the Celery worker) queue up
    # instead of failing with "database is locked" (docs/architecture.md, "Runtime and
    # concurrency"):
    # * IMMEDIATE: every transaction takes the write lock at BEGIN. A deferred one reads
    #   first and upgrades later; if another writer committed meanwhile, SQLite answers
    #   SQLITE_BUSY at once, without waiting (the busy timeout cannot help there).
    #   SQLite has no SELECT ... FOR UPDATE either: the immediate lock is what makes
    #   "lock the row, check the state, transition" race-free on it.
    # * timeout: the busy timeout, how long BEGIN IMMEDIATE waits for the lock (seconds).
    # * WAL: readers never wait for the writer and the writer never waits for readers.
    # * synchronous=FULL: a commit is on disk before the user is told it happened, even
    #   across a power cut (NORMAL would only protect against corruption); its cost per
    #   commit is in docs/architecture.md, "Measured choices".
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL",
    })
    # A file (not :memory:) so a real Celery worker process can share the test DB.
    # One file per test process, so parallel runs on one machine never share it.
    DATABASES["default"]["TEST"] = {
        "NAME": str(VAR_DIR / f"test-relaydesk-{os.getpid()}.sqlite3")
    }
# Transactions are explicit in services, so ATOMIC_REQUESTS stays off.
DATABASES["default"]["ATOMIC_REQUESTS"] = False

# ---------------------------------------------------------------------------
# Auth
# ---------------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "requests:list"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# ---------------------------------------------------------------------------
# Static files (served by the app through WhiteNoise: no CDN)
# ---------------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.str("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))

# ---------------------------------------------------------------------------
# E-mail: a local outbox folder by default, SMTP in production
# ---------------------------------------------------------------------------
# https://docs.djangoproject.com/en/5.2/topics/email/#email-backends
EMAIL_BACKEND = env.str(
    "DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.filebased.EmailBackend"
)
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(VAR_DIR / "outbox"))
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="relaydesk@example.org")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
RELAYDESK_RETURN_PATH = env.str("RELAYDESK_RETURN_PATH", default="bounces@example.org")
RELAYDESK_HELPDESK_EMAIL = env.str("RELAYDESK_HELPDESK_EMAIL", default="helpdesk@example.org")
RELAYDESK_BASE_URL = env.str("RELAYDESK_BASE_URL", default="http://127.0.0.1:8000")

# ---------------------------------------------------------------------------
# Celery: kombu's filesystem transport by default (no server), Redis in production
# ---------------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
_BROKER_DIR = Path(env.str("RELAYDESK_BROKER_DIR", default=str(VAR_DIR / "broker")))
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "out"),
        "data_folder_out": str(_BROKER_DIR / "out"),
        "control_folder": str(_BROKER_DIR / "control"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        "store_processed": False,
    }
    for _sub in ("out", "control", "processed"):
        (_BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)
else:
    # Countdowns (retry backoff) stay well below this, so Redis never re-delivers early.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=300)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=240)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
# Two different needs when the broker is down (docs/architecture.md, "Runtime and
# concurrency"):
# * the worker (and the beat embedded in it, or a separate beat) must outlive the
#   outage: it retries connecting for ever (2 s, 4 s, ... then every 30 s) and resumes
#   consuming when the broker is back. MAX_RETRIES applies only to those long-lived
#   connections (worker consumer, beat), not to publishing.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# * publishing from a web request must fail fast: the outbox in the database keeps the
#   work and the periodic sweep re-dispatches it. Each connection attempt gives up
#   after TIMEOUT seconds and a publish tries twice, so a request waits at most ~4.5 s
#   for an unreachable broker (a refused connection fails at once).
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5,
}
CELERY_BEAT_SCHEDULE = {
    # "*/1 * * * *": every minute, re-dispatch work whose message never reached the broker.
    "sweep-pending-work": {
        "task": "relaydesk.sweep_pending_work",
        # the fault tests run it every few seconds; production keeps the minute
        "schedule": env.float("RELAYDESK_SWEEP_EVERY_SECONDS", default=60.0),
    },
    # "17 2 * * *": nightly at 02:17, re-verify the DNS of every active entry (drift).
    "recheck-active-entries": {
        "task": "relaydesk.recheck_active_entries",
        "schedule": crontab(minute=17, hour=2),
    },
    # "5 6 * * *": daily at 06:05, recertification reminders and expiry.
    "recertification": {
        "task": "relaydesk.recertification_sweep",
        "schedule": crontab(minute=5, hour=6),
    },
    # every minute: wipe expired one-time links, end rotation overlaps, send due
    # rotation reminders (each once), re-dispatch password changes whose message was lost
    "credential-sweep": {
        "task": "relaydesk.credential_sweep",
        "schedule": env.float("RELAYDESK_CREDENTIAL_SWEEP_SECONDS", default=60.0),
    },
}

# ---------------------------------------------------------------------------
# DNS checks (the names are a contract, see docs/dns-checks.md)
# ---------------------------------------------------------------------------
DNS_NAMESERVERS = env.list("DNS_NAMESERVERS", default=[])
DNS_LIFETIME_SECONDS = env.float("DNS_LIFETIME_SECONDS", default=5.0)
RELAY_SPF_INCLUDE = env.str("RELAY_SPF_INCLUDE", default="_spf.example.org")
RELAY_ADDRESSES = env.list("RELAY_ADDRESSES", default=[])
RELAY_LAB_NETWORKS = env.list("RELAY_LAB_NETWORKS", default=[])
RELAY_ALLOW_PRIVATE = env.bool("RELAY_ALLOW_PRIVATE", default=False)
RELAY_APPROVED_SENDER_DOMAINS = env.list("RELAY_APPROVED_SENDER_DOMAINS", default=[])
RELAY_CHECK_MAX_RETRIES = env.int("RELAY_CHECK_MAX_RETRIES", default=5)
# First delay (seconds) before the checks run again when DNS did not answer; doubles
# with each retry, capped at 15 minutes.
RELAY_CHECK_RETRY_BACKOFF = env.float("RELAY_CHECK_RETRY_BACKOFF", default=30.0)
# Requests one check task runs together: its own plus those still waiting for their
# first run (a burst of submissions); 1 runs each in its own task (tasks.py).
RELAY_CHECK_BATCH_SIZE = env.int("RELAY_CHECK_BATCH_SIZE", default=50)
# Config builds an approved request may be left out of (a value the renderer refuses)
# before it moves to provisioning_failed, where approvers retry or reject it.
RELAY_PROVISION_MAX_ATTEMPTS = env.int("RELAY_PROVISION_MAX_ATTEMPTS", default=3)
# The form's as-you-type check runs on a web worker: at most this many per user and
# minute (0 = no limit; counted in the default cache, per process unless CACHES is
# shared), and its DNS work ends after this many seconds (or DNS_LIFETIME_SECONDS if
# that is shorter).
RELAYDESK_QUICK_CHECK_PER_MINUTE = env.int("RELAYDESK_QUICK_CHECK_PER_MINUTE", default=20)
RELAYDESK_QUICK_CHECK_SECONDS = env.float("RELAYDESK_QUICK_CHECK_SECONDS", default=2.0)
# The dashboard's median time to decision covers the decisions of the last N days (the
# page's ?days= overrides it): bounded, so the page's cost does not grow with history.
RELAYDESK_DASHBOARD_DAYS = env.int("RELAYDESK_DASHBOARD_DAYS", default=90)
# redis://host:6379/1 shares the quick-check counters between web processes.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}

# ---------------------------------------------------------------------------
# Lifecycle after approval
# ---------------------------------------------------------------------------
from datetime import timedelta  # noqa: E402

RELAY_RECERTIFY_AFTER = timedelta(days=env.int("RELAY_RECERTIFY_AFTER_DAYS", default=365))
RELAY_RECERTIFY_REMINDER_DAYS = [
    int(d) for d in env.list("RELAY_RECERTIFY_REMINDER_DAYS", default=["30", "7", "1"])
]
# Suspend a drifted entry (leave it out of the relay config) after this many hours;
# empty = flag only (the default).
RELAY_DRIFT_SUSPEND_AFTER_HOURS = env.int("RELAY_DRIFT_SUSPEND_AFTER_HOURS", default=None)
RELAY_RECHECK_BATCH_SIZE = env.int("RELAY_RECHECK_BATCH_SIZE", default=500)
RELAY_RECHECK_MAX_PER_RUN = env.int("RELAY_RECHECK_MAX_PER_RUN", default=20000)
RELAY_RECHECK_CONCURRENCY = env.int("RELAY_RECHECK_CONCURRENCY", default=200)
# Processes per recheck batch (the engine is CPU-bound); 1 inside Celery prefork children.
RELAY_RECHECK_PROCESSES = env.int("RELAY_RECHECK_PROCESSES", default=1)

# ---------------------------------------------------------------------------
# Directory (LDAP) provisioning of functional accounts; empty URL = manual to-do list
# ---------------------------------------------------------------------------
DIRECTORY_URL = env.str("DIRECTORY_URL", default="")
DIRECTORY_BIND_DN = env.str("DIRECTORY_BIND_DN", default="")
DIRECTORY_BIND_PASSWORD = env.str("DIRECTORY_BIND_PASSWORD", default="")
DIRECTORY_RELAY_GROUP_DN = env.str(
    "DIRECTORY_RELAY_GROUP_DN", default="cn=smtprelayallow,ou=groups,dc=example,dc=org"
)
DIRECTORY_ACCOUNT_DN_TEMPLATE = env.str(
    "DIRECTORY_ACCOUNT_DN_TEMPLATE", default="uid={account},ou=services,dc=example,dc=org"
)
DIRECTORY_TIMEOUT_SECONDS = env.float("DIRECTORY_TIMEOUT_SECONDS", default=5.0)

# ---------------------------------------------------------------------------
# Functional-account passwords (docs/credentials.md)
# ---------------------------------------------------------------------------
# directory: the directory owns the password (Relaydesk manages group membership and says
# where to set it); issue: Relaydesk sets a random password (LDAP Password Modify) and
# offers it once through a one-time link.
RELAY_ACCOUNT_CREDENTIALS = env.str("RELAY_ACCOUNT_CREDENTIALS", default="directory")
# Where owners set an account's password in directory mode (shown on the page, API, mail).
DIRECTORY_PASSWORD_HELP = env.str(
    "DIRECTORY_PASSWORD_HELP",
    default="Set the account's password in the organisation's directory: use the "
    "directory's self-service password page, or ask the directory administrators to set "
    "it. Relaydesk never sees it; it only adds the account to the relay-allow group.",
)
# The public development key (base64 of 32 bytes); production refuses it in issue mode.
DEV_CREDENTIAL_KEY = "cmVsYXlkZXNrLWRldi1jcmVkZW50aWFsLWtleS0wMDA="  # noqa: S105 - public
# base64 of 32 random bytes (AES-256-GCM for secrets held until their one-time view).
RELAY_CREDENTIAL_KEY = env.str("RELAY_CREDENTIAL_KEY", default="")
RELAY_CREDENTIAL_LINK_MINUTES = env.int("RELAY_CREDENTIAL_LINK_MINUTES", default=60)
RELAY_ACCOUNT_ROTATE_DAYS = env.int("RELAY_ACCOUNT_ROTATE_DAYS", default=90)
RELAY_ACCOUNT_ROTATE_REMINDER_DAYS = [
    int(d) for d in env.list("RELAY_ACCOUNT_ROTATE_REMINDER_DAYS", default=["14", "3"])
]
# 0 = the old password stops working at once; N = it keeps working N minutes after a
# rotation (the directory holds both values until then).
RELAY_ACCOUNT_ROTATE_OVERLAP_MINUTES = env.int(
    "RELAY_ACCOUNT_ROTATE_OVERLAP_MINUTES", default=0
)

# ---------------------------------------------------------------------------
# Relay (snippets and config)
# ---------------------------------------------------------------------------
RELAY_HOST = env.str("RELAY_HOST", default="smtp-relay.example.org")
RELAY_SUBMISSION_PORT = env.int("RELAY_SUBMISSION_PORT", default=587)
RELAY_SMTPS_PORT = env.int("RELAY_SMTPS_PORT", default=465)
RELAY_CONFIG_DIR = env.str("RELAY_CONFIG_DIR", default=str(VAR_DIR / "relay-config"))
RELAY_CONFIG_TOKEN = env.str("RELAY_CONFIG_TOKEN", default="")
# Retention of relay config versions' files (each build prunes): the N newest and all of
# the last D days are kept, and always the newest; older versions keep their row and line
# history (diffs), their files go, and file bodies no kept version uses are deleted.
RELAY_CONFIG_KEEP_VERSIONS = env.int("RELAY_CONFIG_KEEP_VERSIONS", default=50)
RELAY_CONFIG_KEEP_DAYS = env.float("RELAY_CONFIG_KEEP_DAYS", default=90.0)
# Where config management installs the maps on the relay (used in main.cf.fragment).
# (os.environ, not env: django-environ would treat the leading "$" as a variable reference)
RELAY_MAP_DIRECTORY = os.environ.get("RELAY_MAP_DIRECTORY", "$config_directory/relaydesk")
# Which relay back-end renders the config, and its map type (requests_app/relay_backend.py,
# docs/relay-config.md "Back-ends and map types"): only postfix with cidr exists so far.
RELAY_BACKEND = env.str("RELAY_BACKEND", default="postfix")
# cidr (read from the text file), hash or lmdb (indexed: the relay runs postmap on install).
RELAY_MAP_TYPE = env.str("RELAY_MAP_TYPE", default="cidr")

# What the relay enforces (docs/relay-enforcement.md). A server's sender that its entry
# did not declare, or that is not on an approved domain, is rewritten under
# RELAY_REWRITE_DOMAIN with SRS (bounces still reach the sender) or refused with 553.
RELAY_SENDER_MODE = env.str("RELAY_SENDER_MODE", default="rewrite")
RELAY_REWRITE_DOMAIN = env.str("RELAY_REWRITE_DOMAIN", default="") or f"srs.{RELAY_HOST}"
# true: allowlisted servers must STARTTLS too (plain MAIL gets 530 5.7.0).
RELAY_REQUIRE_TLS = env.bool("RELAY_REQUIRE_TLS", default=False)
# Every new entry starts in the sandbox; production gets the approved daily volume.
RELAY_SANDBOX_DAILY_LIMIT = env.int("RELAY_SANDBOX_DAILY_LIMIT", default=200)
RELAY_SANDBOX_PER_SECOND = env.int("RELAY_SANDBOX_PER_SECOND", default=1)
RELAY_PRODUCTION_PER_SECOND = env.int("RELAY_PRODUCTION_PER_SECOND", default=14)
# Relay-local services the generated main.cf/master.cf point at (host:port).
RELAY_POLICY_SERVICE = env.str("RELAY_POLICY_SERVICE", default="127.0.0.1:10040")
RELAY_SRS_FORWARD = env.str("RELAY_SRS_FORWARD", default="127.0.0.1:10001")
RELAY_SRS_REVERSE = env.str("RELAY_SRS_REVERSE", default="127.0.0.1:10002")
RELAY_REINJECT_PORT = env.int("RELAY_REINJECT_PORT", default=10026)
# The SASL server the relay's smtpd asks about account logins (docs/accounts.md):
# cyrus (saslauthd -a ldap with the relay-allow group check, docs/relay-sasl.md) or
# dovecot; the path is smtpd_sasl_path (cyrus: the smtpd.conf name; dovecot: the socket).
RELAY_SASL_TYPE = env.str("RELAY_SASL_TYPE", default="cyrus")
RELAY_SASL_PATH = env.str(
    "RELAY_SASL_PATH", default="private/auth" if RELAY_SASL_TYPE == "dovecot" else "smtpd"
)

# ---------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # drf-spectacular's, plus the error answers of each operation (api/schema.py)
    "DEFAULT_SCHEMA_CLASS": "requests_app.api.schema.RelaydeskAutoSchema",
    # limit/offset read as digits 0-9 within bounds: a bad value is a 400 naming it
    "DEFAULT_PAGINATION_CLASS": "requests_app.api.pagination.StrictLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "requests_app.api.exceptions.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Relaydesk API",
    "DESCRIPTION": "Self-service onboarding for the outbound SMTP relay.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"CheckStatusEnum": "requests_app.models.CHECK_STATUS_CHOICES"},
    # /api/docs/ serves Swagger UI and Redoc from our static files (drf-spectacular-sidecar)
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
}

# ---------------------------------------------------------------------------
# Outbox sweep: pending work older than this is re-dispatched by beat
# ---------------------------------------------------------------------------
RELAYDESK_SWEEP_AFTER_SECONDS = env.int("RELAYDESK_SWEEP_AFTER_SECONDS", default=120)

# ---------------------------------------------------------------------------
# Notifications: retry of mail the SMTP server did not take
# ---------------------------------------------------------------------------
# First retry after this many seconds, doubling per attempt, capped at 10 minutes
# (tasks.send_notification). Tests shorten it; operators rarely need to.
RELAYDESK_MAIL_RETRY_BACKOFF = env.float("RELAYDESK_MAIL_RETRY_BACKOFF", default=5.0)
