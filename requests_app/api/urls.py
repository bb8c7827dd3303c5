"""API routes (the contract in README.md, "API")."""

from django.urls import path
from django.urls import re_path
from drf_spectacular.views import SpectacularRedocView
from drf_spectacular.views import SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import SimpleRouter

from .comments import RequestCommentsView
from .schema_view import SchemaView
from .views import RelayRequestViewSet
from .views import not_found
from .views import quick_check

app_name = "api"

router = SimpleRouter()
router.register("requests", RelayRequestViewSet, basename="request")

urlpatterns = [
    path("token/", obtain_auth_token, name="token"),
    path("schema/", SchemaView.as_view(), name="schema"),
    # The schema rendered for people: Swagger UI (try it out) and Redoc, their assets
    # from drf-spectacular-sidecar in our static files (SPECTACULAR_SETTINGS), no CDN.
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("docs/redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    path("quick-check/", quick_check, name="quick-check"),
    path("requests/<int:pk>/comments/", RequestCommentsView.as_view(), name="request-comments"),
    *router.urls,
    # Last: any other path under /api/ ending in a slash (an id that is not a number,
    # a misspelt action) is a JSON 404 like the others, not the web UI's HTML page.
    # Without the slash, CommonMiddleware still redirects to it first (APPEND_SLASH).
    re_path(r"^[\s\S]*/$", not_found, name="not-found"),
]
