"""Production settings pass Django's deployment checklist; compose.yaml stays honest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_check_deploy_passes_with_production_environment(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "onboarding.settings.production",
        "DJANGO_SECRET_KEY": "x" * 20 + "-production-secret-0123456789-abcdefghijklmnop",
        "DJANGO_ALLOWED_HOSTS": "relaydesk.example.org",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "RELAYDESK_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_secret_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env.update({"DJANGO_SETTINGS_MODULE": "onboarding.settings.production",
                "RELAYDESK_VAR_DIR": str(tmp_path)})
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_compose_defines_production_shape():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"web", "worker", "beat", "postgres", "redis", "mailpit"}
    assert "gunicorn" in " ".join(services["web"]["command"])
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
        assert env["DJANGO_SETTINGS_MODULE"] == "onboarding.settings.production"


def test_system_check_warns_when_own_mail_is_off_the_approved_domains(settings):
    from requests_app.system_checks import mail_addresses_on_approved_domains

    settings.RELAY_APPROVED_SENDER_DOMAINS = ["example.org"]
    settings.DEFAULT_FROM_EMAIL = "relaydesk@example.org"
    settings.RELAYDESK_RETURN_PATH = "bounces@mail.example.org"
    assert mail_addresses_on_approved_domains() == []
    settings.RELAYDESK_RETURN_PATH = "bounces@elsewhere.net"
    warnings = mail_addresses_on_approved_domains()
    assert [w.id for w in warnings] == ["relaydesk.W001"]
    assert "RELAYDESK_RETURN_PATH" in warnings[0].msg
