"""ASGI entry point (Daphne): HTTP through Django, websockets through Channels with the session
user attached and the Origin header checked against ALLOWED_HOSTS."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django_asgi = get_asgi_application()  # sets Django up before the consumers import models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from webapp.experiments.routing import websocket_urlpatterns as experiment_routes  # noqa: E402
from webapp.studies.routing import websocket_urlpatterns as study_routes  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(experiment_routes + study_routes))),
    }
)
