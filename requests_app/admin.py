"""Admin: manage teams, memberships and relay settings; inspect requests read-only.

State changes only happen through services: the request admin shows state
and the audit trail read-only and offers no FSM transition buttons.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from . import relay_store
from .models import ApprovedSenderDomain
from .models import CheckResult
from .models import Membership
from .models import Notification
from .models import RelayConfigVersion
from .models import RelayEndpoint
from .models import RelayRequest
from .models import RequestEvent
from .models import Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ("user",)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "contact_email")
    search_fields = ("slug", "name")
    prepopulated_fields = {"slug": ("name",)}
    inlines = (MembershipInline,)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("team", "user", "created_at")
    list_filter = ("team",)
    search_fields = ("user__username", "team__slug")
    autocomplete_fields = ("user", "team")


@admin.register(ApprovedSenderDomain)
class ApprovedSenderDomainAdmin(admin.ModelAdmin):
    list_display = ("domain", "note", "created_at")
    search_fields = ("domain",)


@admin.register(RelayEndpoint)
class RelayEndpointAdmin(admin.ModelAdmin):
    list_display = ("name", "host", "submission_port", "smtps_port", "is_default")


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RequestEventInline(_ReadOnlyInline):
    model = RequestEvent
    fields = ("created_at", "actor_name", "source_ip", "type", "from_state", "to_state",
              "comment")
    readonly_fields = fields


class CheckResultInline(_ReadOnlyInline):
    model = CheckResult
    fields = ("check_id", "subject", "status", "detail")
    readonly_fields = fields


@admin.register(RelayRequest)
class RelayRequestAdmin(admin.ModelAdmin):
    list_display = ("pk", "kind", "subject", "team", "state", "check_verdict", "created_at")
    list_filter = ("state", "kind", "check_verdict", "team")
    search_fields = ("fqdn", "account_name", "search_text")
    list_select_related = ("team",)
    inlines = (CheckResultInline, RequestEventInline)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Requests are edited by their team through the app (audited), not here.
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("pk", "kind", "request", "status", "attempts", "sent_at", "last_error")
    list_filter = ("status", "kind")
    readonly_fields = [f.name for f in Notification._meta.fields]


@admin.register(RelayConfigVersion)
class RelayConfigVersionAdmin(admin.ModelAdmin):
    """Versions as metadata: the list and the page name each file with its size and
    hash (``relay_store.file_meta``) and never read a body (the version page and its
    file pages show and download them)."""

    list_display = ("number", "created_at", "server_count", "account_count", "reason",
                    "files_pruned_at")
    readonly_fields = ("number", "created_at", "digest", "server_count", "account_count",
                       "reason", "history", "files_pruned_at", "file_list")
    exclude = ("skipped",)

    @admin.display(description="files")
    def file_list(self, obj: RelayConfigVersion) -> str:
        if obj.pk is None:
            return "-"
        return format_html_join(
            mark_safe("<br>"), '<a href="{}">{}</a> {} bytes, {} lines, sha256 {}',
            ((reverse("relay:version_file", args=[obj.number, m.name]), m.name, m.size,
              m.lines, m.sha256) for m in relay_store.file_meta(obj).values()),
        ) or "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
