"""WSGI entry point: production HTTP (gunicorn's sync workers behind nginx, docker-compose.yml);
Daphne serves the websockets. Why two servers: docs/votes.md."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
application = get_wsgi_application()

# The URLconf (with the views, and scipy under the results page) is imported now instead of on
# each worker's first request: with gunicorn --preload the workers fork with it loaded rather than
# each spending seconds of CPU on it while volunteers wait.
import webapp.urls  # noqa: E402, F401
