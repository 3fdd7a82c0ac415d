"""Django settings, all from the environment (defaults: SQLite, local Redis, DEBUG on).

The web process never imports torch: nothing here or in the apps imports ``vpo`` modules that do.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).lower() in ("1", "true", "yes", "on")


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-insecure-key" if DEBUG else "")
if not SECRET_KEY:
    raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Every Redis key this app writes (Celery queues, channel layer, rate limits) starts with this, so
# that two deployments, or a test session beside a running app, can share one Redis untouched.
REDIS_PREFIX = os.environ.get("VPO_REDIS_PREFIX", "vpo")
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))
MEDIA_URL = "/media/"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "webapp.experiments",
    "webapp.studies",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files from the ASGI process, also with DEBUG off
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "webapp.errors.JsonAuthMiddleware",  # 401 JSON, not the login page, for a data endpoint
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webapp.security.ContentSecurityPolicyMiddleware",
]
ROOT_URLCONF = "webapp.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webapp" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ASGI_APPLICATION = "webapp.asgi.application"
WSGI_APPLICATION = "webapp.wsgi.application"
DATABASES = {"default": dj_database_url.config(default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Daphne runs each request in a thread of a pool: persistent per-thread connections would pile
    # up to one per thread, so connections come from psycopg's pool instead (Django >= 5.1)
    # application_name tells the processes apart in pg_stat_activity (the tests' fault injection)
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": 2,
            "max_size": int(os.environ.get("VPO_DB_POOL_SIZE", 16)),
            "timeout": 30,
        },
        "application_name": os.environ.get("VPO_DB_APPLICATION_NAME", "vpo"),
    }
elif DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # a file, not SQLite's in-memory test default: the tests' Celery worker and Daphne processes
    # must see the same test database
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test-db.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {"timeout": 30}  # web, worker and tests write concurrently
# a connection the server dropped (restart, failover, pg_terminate_backend) is found dead when it is
# taken from the pool (Django passes psycopg_pool's check_connection) or reused, and replaced,
# instead of answering the next request with a 500
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_PREFIX}:asgi"},
    }
}
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "webapp" / "static"]
# Volunteer study limits: (requests, window in seconds). A person needs several seconds per trial;
# one address may be a lab or a campus behind NAT. Raise them (environment) for load tests.
STUDY_RATE_LIMITS = {
    "vote_participant": (int(os.environ.get("VPO_VOTES_PER_MINUTE_PER_PARTICIPANT", 30)), 60),
    "vote_ip": (int(os.environ.get("VPO_VOTES_PER_MINUTE_PER_IP", 600)), 60),
    "join_ip": (int(os.environ.get("VPO_JOINS_PER_HOUR_PER_IP", 120)), 3600),
}
# A vote on a trial counts only from this share of its clips' duration after the trial page was
# served (server time): both clips play at once, so a person cannot answer sooner. 0 turns the
# check off (load tests that vote without loading pages: benchmarks/votes.py).
VPO_MIN_WATCH_FRACTION = float(os.environ.get("VPO_MIN_WATCH_FRACTION", "1.0"))
# Reverse proxies in front of the app that append to X-Forwarded-For (docker-compose: nginx, so 1;
# add one per TLS terminator or load balancer before it). 0: the client connects directly.
VPO_PROXIES = int(os.environ.get("VPO_PROXIES", 0))
WHITENOISE_USE_FINDERS = DEBUG  # in development, serve webapp/static without collectstatic
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
# Failed logins allowed per account and per address in a window of 15 minutes (webapp/security.py);
# then every login for that account or from that address is refused until the window ends.
LOGIN_RATE_LIMITS = {
    "account": (int(os.environ.get("VPO_LOGIN_FAILURES_PER_ACCOUNT", "10")), 900),
    "ip": (int(os.environ.get("VPO_LOGIN_FAILURES_PER_IP", "50")), 900),
}
LOGIN_URL = "login"
CSRF_FAILURE_VIEW = "webapp.errors.csrf_failure"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # command A serves plain HTTP on loopback with DEBUG off: it sets these two to 0 (scripts/run.sh)
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 31536000))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
