"""docker-compose's front door, run for real: deploy/nginx.conf in Debian's nginx (upstream
addresses swapped for local ports by deploy/local_nginx.py) in front of gunicorn (HTTP, sync
workers, --preload, as compose starts it) and Daphne (websockets), on the test database and Redis.
A volunteer votes through nginx; the researcher's results page hears about it over a websocket
through nginx; the address kept for the volunteer is the one nginx saw, not what the client claimed."""

import http.client
import json
import os
import re
import time
from urllib.parse import urlencode

import pytest
from conftest import BIN, Process, free_port, subprocess_database_url
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from test_web_studies import make_study

from deploy import local_nginx
from webapp.studies.models import Participant, Vote

pytestmark = pytest.mark.skipif(
    not os.path.exists(local_nginx.NGINX),
    reason="nginx is not installed (scripts/setup.sh installs it for the tests: apt-get install nginx)",
)


@pytest.fixture
def front_door(transactional_db, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "DEBUG": "0",
        "SECRET_KEY": settings.SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "VPO_PROXIES": "1",
        "PYTHONUNBUFFERED": "1",
    }
    port, web, ws = free_port(), free_port(), free_port()
    procs = [
        Process(
            "gunicorn",
            [
                str(BIN / "gunicorn"),
                "--preload",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{web}",
                "webapp.wsgi:application",
            ],
            env,
            ready="Booting worker",
        ),
        Process(
            "daphne",
            [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(ws), "webapp.asgi:application"],
            env,
            ready="Listening on",
        ),
    ]
    nginx = local_nginx.start(tmp_path, port, web, ws)
    try:
        deadline = time.time() + 30
        while True:  # nginx and both servers behind it answer
            try:
                if request(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if nginx.poll() is not None or time.time() > deadline:
                raise RuntimeError("nginx did not answer:\n" + (tmp_path / "nginx.log").read_text())
            time.sleep(0.2)
        yield port
    finally:
        nginx.terminate()
        nginx.wait(10)
        for p in procs:
            p.stop()


def request(port, method, path, body=None, headers=None, source="127.0.0.1", cookies=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    headers = {**(headers or {}), **({"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {})}
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if cookies is not None:
        for header, value in r.getheaders():
            if header.lower() == "set-cookie":
                name, val = value.split(";", 1)[0].split("=", 1)
                cookies[name] = val
    return r.status, r.getheader("Location"), data


def test_nginx_sends_http_to_gunicorn_and_websockets_to_daphne(front_door, tmp_path, settings):
    from websockets.sync.client import connect

    port = front_door
    settings.MEDIA_ROOT = tmp_path  # the clips make_study writes (the servers never read them for votes)
    owner = get_user_model().objects.create_user("researcher")
    study = make_study(owner, None)
    client = Client()
    client.force_login(owner)
    cookie = f"sessionid={client.cookies['sessionid'].value}"

    # the researcher's results page listens through nginx (Daphne behind it)
    with connect(
        f"ws://127.0.0.1:{port}/ws/studies/{study.pk}/",
        origin=f"http://127.0.0.1:{port}",
        additional_headers={"Cookie": cookie},
        open_timeout=10,
    ) as ws:
        # a volunteer, from 127.0.0.3, claiming another address in X-Forwarded-For
        cookies, forged = {}, {"X-Forwarded-For": "6.6.6.6"}
        request(port, "GET", f"/s/{study.token}/", headers=forged, source="127.0.0.3", cookies=cookies)
        status, location, _ = request(
            port,
            "POST",
            f"/s/{study.token}/",
            urlencode({"consent": "1", "csrfmiddlewaretoken": cookies["csrftoken"]}),
            {**forged, "Content-Type": "application/x-www-form-urlencoded"},
            source="127.0.0.3",
            cookies=cookies,
        )
        assert status == 302, status
        p = Participant.objects.get(token=re.search(r"/p/([^/]+)/", location).group(1))
        # the address nginx saw: neither gunicorn's peer (127.0.0.1, nginx) nor the client's claim
        assert p.ip_hash == study.hashed("127.0.0.3")
        assert p.ip_hash not in (study.hashed("127.0.0.1"), study.hashed("6.6.6.6"))

        item = p.plan[0]
        status, _, body = request(
            port,
            "POST",
            f"/s/{study.token}/p/{p.token}/vote",
            json.dumps({"trial": item["trial"], "choice": "left"}),
            {"Content-Type": "application/json", "X-CSRFToken": cookies["csrftoken"]},
            source="127.0.0.3",
            cookies=cookies,
        )
        assert status == 200 and json.loads(body)["stored"] is True
        assert json.loads(ws.recv(timeout=10)) == {"type": "vote"}
    assert Vote.objects.get(participant=p).chosen_id == item["left"]
