"""ASGI entry point (Daphne): HTTP through Django, websockets through Channels with the session
user attached and the Origin header checked on scheme, host and port (webapp/security.py); a
websocket to an unknown path is refused (HTTP 403), not an error."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django_asgi = get_asgi_application()  # sets Django up before the consumers import models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402
from django.urls import re_path  # noqa: E402

from webapp.experiments.routing import websocket_urlpatterns as experiment_routes  # noqa: E402
from webapp.security import OriginValidator  # noqa: E402
from webapp.studies.routing import websocket_urlpatterns as study_routes  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi,
        "websocket": OriginValidator(
            AuthMiddlewareStack(URLRouter(experiment_routes + study_routes + [re_path(r"", WebsocketDenier.as_asgi())]))
        ),
    }
)
