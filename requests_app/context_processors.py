"""Template context: the user's roles, so the navigation shows only what they can use."""

from __future__ import annotations

from django.http import HttpRequest

from .models import is_approver
from .models import is_auditor


def roles(request: HttpRequest) -> dict[str, bool]:
    user = getattr(request, "user", None)
    return {
        "is_approver": is_approver(user),
        "is_auditor": is_auditor(user),
    }
