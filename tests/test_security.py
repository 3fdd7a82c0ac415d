"""The web app's guards beyond Django's defaults, on the real database, Redis and servers: login
throttling and password rules, the websocket origin check and streams closed on logout, malformed
input answered 4xx, /healthz (quick, detail to staff only), the CSP header, the TOML export."""

import socket
import time
import tomllib

import pytest
import redis
import test_web_live
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from conftest import BIN, Process, free_port
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from test_web_live import session_cookie

from vpo.train.config import TrainConfig
from webapp.asgi import application
from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment
from webapp.security import CSP

LOGIN = "/accounts/login/"


def log_in(client, username, password):
    return client.post(LOGIN, {"username": username, "password": password})


# --- logins ------------------------------------------------------------------------------------
def test_wrong_passwords_then_the_right_one_is_refused_per_account(db, settings):
    settings.LOGIN_RATE_LIMITS = {"account": (5, 900), "ip": (1000, 900)}
    get_user_model().objects.create_user("target", password="the-right-passphrase")
    for i in range(30):  # from 30 addresses: only the per-account limit can stop this
        r = log_in(Client(REMOTE_ADDR=f"10.7.0.{i}"), "target", f"guess-{i}")
        assert r.status_code == (200 if i < 5 else 429), i  # 200: the form again, with its error
    client = Client(REMOTE_ADDR="10.7.1.1")
    r = log_in(client, "target", "the-right-passphrase")
    assert r.status_code == 429 and "Too many failed logins" in r.content.decode()
    assert "_auth_user_id" not in client.session
    get_user_model().objects.create_user("bystander", password="another-passphrase")
    assert log_in(Client(REMOTE_ADDR="10.7.1.1"), "bystander", "another-passphrase").status_code == 302


def test_many_accounts_tried_from_one_address_are_refused_per_address(db, settings):
    settings.LOGIN_RATE_LIMITS = {"account": (1000, 900), "ip": (5, 900)}
    get_user_model().objects.create_user("carol", password="carols-passphrase")
    for i in range(6):
        log_in(Client(REMOTE_ADDR="10.8.0.1"), f"user-{i}", "password")
    assert log_in(Client(REMOTE_ADDR="10.8.0.1"), "carol", "carols-passphrase").status_code == 429
    assert log_in(Client(REMOTE_ADDR="10.8.0.2"), "carol", "carols-passphrase").status_code == 302


def test_a_successful_login_is_not_counted(db, settings):
    settings.LOGIN_RATE_LIMITS = {"account": (2, 900), "ip": (2, 900)}
    get_user_model().objects.create_user("dave", password="daves-passphrase")
    for _ in range(5):
        assert log_in(Client(REMOTE_ADDR="10.9.0.1"), "dave", "daves-passphrase").status_code == 302


def test_passwords_are_checked_by_djangos_validators(db):
    user = get_user_model()(username="erin")
    for weak in ("password", "12345678901", "short", "qwertyuiop"):
        with pytest.raises(ValidationError):
            password_validation.validate_password(weak, user)
    password_validation.validate_password("a-long-unusual-passphrase", user)


# --- websockets -----------------------------------------------------------------------------------
owner, experiment = test_web_live.owner, test_web_live.experiment  # fixtures: a user and their experiment


def handshake(path, headers) -> tuple[bool, object]:
    async def attempt():
        comm = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await comm.connect()
        await comm.disconnect()
        return connected, code

    return async_to_sync(attempt)()


def test_the_websocket_origin_must_match_scheme_host_and_port(owner, experiment, settings):
    cookie = (b"cookie", session_cookie(owner).encode())
    path = f"/ws/experiments/{experiment.pk}/"

    def ok(origin, host=b"127.0.0.1:8000", *extra):
        return handshake(path, [(b"host", host), (b"origin", origin), cookie, *extra])[0]

    assert ok(b"http://127.0.0.1:8000")
    assert not ok(b"http://127.0.0.1:9000")  # another port: another origin (any local app)
    assert not ok(b"https://127.0.0.1:8000")  # another scheme
    assert not ok(b"http://127.0.0.1")  # no port is port 80
    assert not ok(b"http://evil.example:8000")
    assert not ok(b"http://evil.example:8000", b"evil.example:8000")  # a host not in ALLOWED_HOSTS
    assert not handshake(path, [(b"host", b"127.0.0.1:8000"), cookie])[0]  # no Origin at all
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")  # behind a TLS proxy
    assert ok(b"https://127.0.0.1:8000", b"127.0.0.1:8000", (b"x-forwarded-proto", b"https"))
    assert not ok(b"http://127.0.0.1:8000", b"127.0.0.1:8000", (b"x-forwarded-proto", b"https"))
    settings.CSRF_TRUSTED_ORIGINS = ["https://vpo.example"]
    assert ok(b"https://vpo.example")


def test_an_unknown_websocket_path_is_refused_not_an_error(owner):
    headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1"), (b"cookie", session_cookie(owner).encode())]
    for path in ("/ws/nope/", "/ws/experiments/abc/", "/"):
        assert handshake(path, headers)[0] is False, path  # was a ValueError inside the router


def test_logging_out_closes_the_sessions_streams(owner, experiment):
    client = Client()
    client.force_login(owner)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    other_session = session_cookie(owner)  # the same user in another browser stays connected

    async def scenario():
        headers = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]
        mine = WebsocketCommunicator(
            application, f"/ws/experiments/{experiment.pk}/", headers=[*headers, (b"cookie", cookie.encode())]
        )
        theirs = WebsocketCommunicator(
            application, f"/ws/experiments/{experiment.pk}/", headers=[*headers, (b"cookie", other_session.encode())]
        )
        assert (await mine.connect())[0] and (await theirs.connect())[0]
        for comm in (mine, theirs):
            while await comm.receive_nothing(timeout=0.3) is False:
                await comm.receive_output()  # the backfill and the status
        r = await sync_to_async(client.post)(reverse("logout"))
        assert r.status_code == 302
        closed = await mine.receive_output(timeout=5)
        still_open = await theirs.receive_nothing(timeout=1)
        await theirs.disconnect()
        return closed, still_open

    closed, still_open = async_to_sync(scenario)()
    assert closed == {"type": "websocket.close", "code": 4401}
    assert still_open


# --- malformed input ------------------------------------------------------------------------------
@pytest.fixture
def run_with_video(db, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    user = get_user_model().objects.create_user("frank")
    e = Experiment.objects.create(owner=user, name="a run", config=validated_config({"steps": 3}))
    (e.run_dir / "samples").mkdir(parents=True)
    (e.run_dir / "samples" / "v.mp4").write_bytes(b"\x00" * 1000)
    client = Client()
    client.force_login(user)
    return client, e


def test_malformed_requests_are_answered_4xx(run_with_video):
    client, e = run_with_video
    media = reverse("experiments:media", args=[e.pk, "samples/v.mp4"])
    assert client.get(media, HTTP_RANGE="bytes=" + "9" * 4300 + "-").status_code == 416
    assert client.get(media, HTTP_RANGE="bytes=-" + "9" * 4300).status_code == 206  # a suffix past the start: all
    whole = client.get(media, HTTP_RANGE="bytes=0-" + "9" * 4300)
    assert whole.status_code == 206 and whole["Content-Range"] == "bytes 0-999/1000"
    assert client.get(f"/experiments/{e.pk}/media/samples/v%00.mp4").status_code == 404
    assert client.get(reverse("experiments:new") + "?clone=abc").status_code == 404
    assert client.get(reverse("experiments:new") + "?clone=%00").status_code == 404
    assert client.get(reverse("experiments:new") + f"?clone={e.pk}").status_code == 200


def test_a_newline_in_a_run_name_does_not_break_the_toml_export(run_with_video, tmp_path):
    client, e = run_with_video
    Experiment.objects.filter(pk=e.pk).update(name='x\nsteps = 99999\n[evil]\r\n"\x07')
    toml = client.get(reverse("experiments:export", args=[e.pk])).content.decode()
    data = tomllib.loads(toml)
    assert data["steps"] == 3 and "evil" not in data
    assert TrainConfig.from_dict(data).steps == 3


# --- headers, health --------------------------------------------------------------------------------
def test_pages_carry_a_content_security_policy(db, client):
    for url in (LOGIN, "/healthz"):
        assert client.get(url)["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP


def test_healthz_shows_what_is_down_to_staff_only(db, client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "error"}  # no host, port or driver message
    staff = get_user_model().objects.create_user("ops", is_staff=True)
    client.force_login(staff)
    body = client.get("/healthz").json()
    assert body["redis"].startswith("error") and body["database"] == "ok"


def blackhole() -> socket.socket:
    """A port that accepts connections (the kernel completes the handshake) and never answers:
    a database or Redis that hangs, the worst case for a health check."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    return s


@pytest.mark.timeout(120)
def test_healthz_answers_within_2_s_when_the_database_and_redis_hang(db):
    import os

    db_hole, redis_hole = blackhole(), blackhole()
    port = free_port()
    env = {
        **os.environ,
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{db_hole.getsockname()[1]}/nowhere",
        "REDIS_URL": f"redis://127.0.0.1:{redis_hole.getsockname()[1]}/0",
    }
    server = Process(
        "gunicorn",
        [
            str(BIN / "gunicorn"),
            "--preload",
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{port}",
            "webapp.wsgi:application",
        ],
        env,
        ready="Booting worker",
    )
    try:
        import http.client

        for _ in range(2):
            t = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            body, seconds = r.read(), time.monotonic() - t
            assert r.status == 503 and seconds < 2.0, (r.status, seconds, body)
            assert body == b'{"status": "error"}'
    finally:
        server.stop()
        db_hole.close()
        redis_hole.close()


def test_the_rate_limiter_peek_does_not_count(settings):
    from webapp import ratelimit

    key = f"peek-{time.time()}"
    rules = [(key, 2, 60)]
    assert ratelimit.over(rules) is None
    ratelimit.exceeded(rules)
    ratelimit.exceeded(rules)
    assert ratelimit.over(rules) == key and ratelimit.over(rules) == key
    redis.Redis.from_url(settings.REDIS_URL).delete(*redis.Redis.from_url(settings.REDIS_URL).keys(f"*{key}*"))
