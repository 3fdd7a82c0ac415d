"""What guards the web app beyond Django's defaults: a Content-Security-Policy header, login
throttling, the websocket origin check, and websockets that close when their session logs out."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth import user_logged_out
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import ValidationError
from django.dispatch import receiver
from django.http.request import split_domain_port, validate_host

from webapp import ratelimit

# Scripts and styles only from the app's own files (no inline script, so an injected <script> or
# on* attribute does not run), media and websockets from the same origin, no framing, forms that
# post only back here. Pages put their data in <script type="application/json"> (json_script),
# which is not executed.
CSP_DIRECTIVES = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "media-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
CSP = "; ".join(CSP_DIRECTIVES)


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response


# --- login throttling --------------------------------------------------------------------------
def _key(value: str) -> str:
    return hashlib.sha256(f"{settings.SECRET_KEY}:{value}".encode()).hexdigest()[:32]


def login_rules(request, username: str) -> list[tuple[str, int, int]]:
    """Failed logins counted per account (a password guessed from many addresses) and per address
    (many accounts tried from one); (Redis key, limit, window seconds) as in ``webapp.ratelimit``."""
    from webapp.studies.volunteer import client_ip

    limits = settings.LOGIN_RATE_LIMITS
    return [
        (f"login:account:{_key(username)}", *limits["account"]),
        (f"login:ip:{_key(client_ip(request))}", *limits["ip"]),
    ]


class ThrottledAuthenticationForm(AuthenticationForm):
    """Once an account or an address has had too many failed logins in the window, every login
    for it is refused, right password or not, until the window ends."""

    throttled = False

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        rules = login_rules(self.request, username)
        if ratelimit.over(rules):
            self.throttled = True
            minutes = max(window for _, _, window in rules) // 60
            raise ValidationError(f"Too many failed logins. Try again in up to {minutes} minutes.", code="throttled")
        try:
            return super().clean()
        except ValidationError:
            ratelimit.exceeded(rules)  # counts this failure
            raise


class ThrottledLoginView(LoginView):
    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled:
            response.status_code = 429
        return response


# --- websockets ----------------------------------------------------------------------------------
def origin_allowed(scope) -> bool:
    """A websocket handshake only from this app's own pages: the Origin header must be the scheme,
    host and port the browser connected to (its Host header, whose host must be in ALLOWED_HOSTS;
    https when the connection, or the proxy in front, says it was secure), or one of
    CSRF_TRUSTED_ORIGINS. Django's CSRF check compares a POST's Origin the same way."""
    headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    origin, host = headers.get(b"origin", "").lower(), headers.get(b"host", "").lower()
    if not origin or not host or not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
        return False
    secure = scope.get("scheme") == "wss"
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, value = proxy_header
        name = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        secure = secure or headers.get(name, "") == value
    return origin == f"{'https' if secure else 'http'}://{host}" or origin in settings.CSRF_TRUSTED_ORIGINS


class OriginValidator:
    """ASGI middleware: websockets whose origin ``origin_allowed`` refuses are denied (HTTP 403)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            from channels.security.websocket import WebsocketDenier

            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def session_group(session_key: str) -> str:
    return f"session-{_key(session_key)}"  # a group name that does not reveal the session key


class ClosedOnLogout:
    """Mixin for the app's websocket consumers: a stream ends when the session that opened it logs
    out (otherwise it would go on pushing a researcher's data to a browser that logged out)."""

    async def follow_session(self) -> None:
        session = self.scope.get("session")
        self.session_group = session_group(session.session_key) if session and session.session_key else None
        if self.session_group:
            await self.channel_layer.group_add(self.session_group, self.channel_name)

    async def unfollow_session(self) -> None:
        if getattr(self, "session_group", None):
            await self.channel_layer.group_discard(self.session_group, self.channel_name)

    async def logout_event(self, event):
        await self.close(code=4401)


@receiver(user_logged_out)
def close_streams_of_session(sender, request, user, **kwargs):
    """Sent before the session is flushed: its key still names the streams to close."""
    from webapp.experiments.sink import push

    if request is not None and request.session.session_key:
        push(session_group(request.session.session_key), {"type": "logout.event"})
