"""Routes: ``/`` (work), ``/admin/ping`` (exempt from shedding); the middleware adds
``/health`` and ``/metrics``."""

from django.http import HttpRequest, JsonResponse
from django.urls import path
from leaky import handle


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse(handle(request.path))


def admin_ping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path("", index), path("admin/ping", admin_ping)]
