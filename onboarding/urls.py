"""Top-level URLs: the web UI, the JSON API, the relay-config pull endpoint, admin."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import include
from django.urls import path


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


# A bad query parameter or form field names itself (JSON under /api/): see params.py.
handler400 = "requests_app.views.bad_request"

urlpatterns = [
    path("", lambda request: redirect("requests:list")),
    path("healthz", healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # the language switch: POST /i18n/setlang/ (Django's set_language, a cookie)
    path("i18n/", include("django.conf.urls.i18n")),
    path("requests/", include("requests_app.urls")),
    path("relay-config/", include("requests_app.relay_urls")),
    path("api/", include("requests_app.api.urls")),
]
