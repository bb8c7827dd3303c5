"""URLs of the request workflow: one route name per action (``requests:approve``...)."""

from django.urls import path

from . import comment_views
from . import credential_views
from . import directory_views
from . import live_views
from . import relay_test_views
from . import views
from .actions import USER_ACTIONS

app_name = "requests"

# Actions whose transition takes data of its own (``Action.data``) have their own form.
FORM_VIEWS = {"request_production": views.request_production}

urlpatterns = [
    path("", views.RequestListView.as_view(), name="list"),
    path("queue/", views.QueueView.as_view(), name="queue"),
    path("export.csv", views.request_list_csv, name="list_csv"),
    path("queue/export.csv", views.request_queue_csv, name="queue_csv"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("new/", views.request_choose, name="choose"),
    path("new/<str:kind>/", views.request_create, name="create"),
    path("audit.csv", views.request_events_csv, name="audit_csv"),
    path("directory/", directory_views.directory_todo, name="directory_todo"),
    path("directory/<int:pk>/done/", directory_views.directory_change_mark_done,
         name="directory_mark_done"),
    path("credentials/overdue/", credential_views.credential_overdue, name="credential_overdue"),
    path("credentials/link/<str:token>/", credential_views.credential_link,
         name="credential_link"),
    path("<int:pk>/password/rotate/", credential_views.credential_rotate,
         name="credential_rotate"),
    path("<int:pk>/password/rotated/", credential_views.credential_confirm,
         name="credential_confirm"),
    path("<int:pk>/", views.request_detail, name="detail"),
    path("<int:pk>/edit/", views.request_edit, name="edit"),
    path("<int:pk>/test-mail-tool/", relay_test_views.relay_test_script,
         name="relay_test_script"),
    path("<int:pk>/renew/", views.request_renew, name="renew"),
    path("<int:pk>/handover/", views.request_handover, name="handover"),
    path("<int:pk>/comments/", comment_views.comment_create, name="comment"),
    path("<int:pk>/status/", live_views.request_status, name="status"),
    path("<int:pk>/claim/", views.request_assign, {"claim": True}, name="claim"),
    path("<int:pk>/release/", views.request_assign, {"claim": False}, name="release"),
    path("<int:pk>/take-over/", views.request_take_over, name="take_over"),
    *[
        path(f"<int:pk>/{action}/", FORM_VIEWS.get(action, views.request_action),
             {"action": action}, name=action)
        for action in USER_ACTIONS
    ],
]
