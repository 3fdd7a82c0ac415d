"""What a person or a script sees when something is wrong: the friendly 404/500 pages (DEBUG off,
as command A serves), and JSON instead of HTML where JSON was asked for — a data endpoint
(``*.json``, or ``Accept: application/json``) answers 401 JSON to a visitor who is not logged in,
not the login page with status 200 after a redirect, and 403/404/500 as JSON too."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.shortcuts import resolve_url
from django.template import loader


def wants_json(request) -> bool:
    return request.path.endswith(".json") or "application/json" in request.headers.get("Accept", "")


class JsonAuthMiddleware:
    """A login redirect (``@login_required``) on a JSON request becomes 401 JSON: a script or the
    dashboard's fetch would otherwise follow it and parse the login page."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.login = resolve_url(settings.LOGIN_URL)

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code == 302 and wants_json(request) and response["Location"].startswith(self.login):
            return JsonResponse({"error": "log in first", "login": self.login}, status=401)
        return response


def _page(request, template: str, status: int, message: str, context: dict | None = None) -> HttpResponse:
    if wants_json(request):
        return JsonResponse({"error": message}, status=status)
    return HttpResponse(loader.render_to_string(template, context or {}, request), status=status)


def not_found(request, exception=None):
    return _page(request, "404.html", 404, "not found")


def permission_denied(request, exception=None):
    return _page(request, "403.html", 403, "forbidden")


def csrf_failure(request, reason=""):
    return _page(request, "403.html", 403, f"forbidden: {reason}" if reason else "forbidden", {"csrf": True})


def server_error(request):
    # no request context: the fault may be in what a context processor reads (the database)
    if wants_json(request):
        return JsonResponse({"error": "server error"}, status=500)
    return HttpResponse(loader.render_to_string("500.html"), status=500)
