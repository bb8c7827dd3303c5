"""API routes (the contract in README.md, "API")."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import SimpleRouter

from .comments import RequestCommentsView
from .views import RelayRequestViewSet
from .views import quick_check

app_name = "api"

router = SimpleRouter()
router.register("requests", RelayRequestViewSet, basename="request")

urlpatterns = [
    path("token/", obtain_auth_token, name="token"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("quick-check/", quick_check, name="quick-check"),
    path("requests/<int:pk>/comments/", RequestCommentsView.as_view(), name="request-comments"),
    *router.urls,
]
