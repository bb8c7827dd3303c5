"""``/relay-config/``: artefacts for config management, history for approvers."""

from django.urls import path

from . import relay_views

app_name = "relay"

urlpatterns = [
    path("", relay_views.version_list, name="versions"),
    path("diff/<int:old>/<int:new>/", relay_views.version_diff, name="diff"),
    path("compare/", relay_views.version_compare, name="compare"),
    path("v<int:number>/", relay_views.version_detail, name="version"),
    path("v<int:number>/<str:name>", relay_views.version_file, name="version_file"),
    path("<str:name>", relay_views.relay_config_file, name="file"),
]
