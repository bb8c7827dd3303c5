"""``manage.py seed_demo``: a demo team, a requester and an approver (idempotent)."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from requests_app.models import APPROVERS_GROUP
from requests_app.models import AUDITORS_GROUP
from requests_app.models import Membership
from requests_app.models import Team


class Command(BaseCommand):
    help = "Create the demo team 'demo', user 'requester' in it and approver 'approver'."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(12)
        approvers, _ = Group.objects.get_or_create(name=APPROVERS_GROUP)
        Group.objects.get_or_create(name=AUDITORS_GROUP)
        team, _ = Team.objects.get_or_create(
            slug="demo", defaults={"name": "Demo team", "contact_email": "demo-team@example.org"}
        )
        User = get_user_model()
        requester, _ = User.objects.get_or_create(
            username="requester", defaults={"email": "requester@example.org"}
        )
        approver, _ = User.objects.get_or_create(
            username="approver", defaults={"email": "approver@example.org"}
        )
        for user in (requester, approver):
            user.set_password(password)
            user.save()
        Membership.objects.get_or_create(team=team, user=requester)
        approver.groups.add(approvers)
        self.stdout.write(
            f"demo team 'demo'; users 'requester' and 'approver'; password: {password}"
        )
