"""``/relay-config/``: artefacts for config management, history for approvers."""

from django.urls import path

from . import relay_views

app_name = "relay"

urlpatterns = [
    path("", relay_views.version_list, name="versions"),
    path("diff/<int:old>/<int:new>/", relay_views.version_diff, name="diff"),
    path("<str:name>", relay_views.relay_config_file, name="file"),
]
