"""Live updates end to end: the database sink, the channels-redis layer, the websocket consumer,
and a real Celery worker process training the tiny backbone behind a real Daphne server."""

import json
import time
from html import escape

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from webapp.asgi import application
from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment, MetricPoint
from webapp.experiments.sink import DatabaseSink, MetricEvent, push

ORIGIN = (b"origin", b"http://127.0.0.1")
HOST = (b"host", b"127.0.0.1")  # what a browser sends: the origin check compares Origin with it


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def communicator(experiment, cookie: str | None, origin=ORIGIN, after: int = -1):
    headers = [HOST, origin] + ([(b"cookie", cookie.encode())] if cookie else [])
    return WebsocketCommunicator(application, f"/ws/experiments/{experiment.pk}/?after={after}", headers=headers)


async def receive_steps(comm, until_step: int, timeout: float = 10) -> list[list[int]]:
    """The steps of each "points" message until ``until_step`` has arrived."""
    batches = []
    while not batches or batches[-1][-1] < until_step:
        msg = await comm.receive_json_from(timeout=timeout)
        if msg["type"] == "points":
            batches.append([p["step"] for p in msg["points"]])
    return batches


@pytest.fixture
def owner(transactional_db):
    return get_user_model().objects.create_user("alice")


@pytest.fixture
def experiment(owner, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    return Experiment.objects.create(owner=owner, name="live", config=validated_config({}))


def test_the_consumer_backfills_then_pushes_in_order_without_gaps_or_duplicates(owner, experiment):
    sink = DatabaseSink(experiment)
    for step in range(3):  # written before anyone listens: backfill
        sink.metrics(step, {"reward/mean": step / 10})
    cookie = session_cookie(owner)

    async def scenario():
        comm = communicator(experiment, cookie)
        connected, _ = await comm.connect()
        assert connected
        received = await receive_steps(comm, 2)
        for step in range(3, 6):  # live
            await sync_to_async(sink.metrics)(step, {"reward/mean": step / 10})
        received += await receive_steps(comm, 5)
        # the channel layer dropped step 6's announcement: step 7's brings it from the database
        await sync_to_async(MetricPoint.objects.create)(
            experiment=experiment, step=6, wall=6.0, values={"reward/mean": 0.6}
        )
        await sync_to_async(sink.metrics)(7, {"reward/mean": 0.7, "heldout/alignment": float("nan")})
        received += await receive_steps(comm, 7)
        # an announcement repeated (a replay) is not sent again
        await sync_to_async(push)(experiment.group, MetricEvent(type="metric.event", step=5, wall=5.0, values={}))
        assert await comm.receive_nothing(timeout=0.5)
        await comm.disconnect()
        return received

    received = async_to_sync(scenario)()
    assert received[0] == [0, 1, 2]  # one backfill message
    assert sum(received, []) == list(range(8))  # noqa: RUF017  # then live, in order, nothing missing or twice
    row = MetricPoint.objects.get(experiment=experiment, step=7)
    assert row.values == {"reward/mean": 0.7, "heldout/alignment": None}  # NaN kept as null, not dropped


def test_reconnecting_with_the_last_step_resumes_without_duplicates(owner, experiment):
    sink = DatabaseSink(experiment)
    for step in range(5):
        sink.metrics(step, {"reward/mean": 0.0})
    cookie = session_cookie(owner)

    async def scenario():
        comm = communicator(experiment, cookie, after=2)
        assert (await comm.connect())[0]
        steps = await receive_steps(comm, 4)
        await comm.disconnect()
        return steps

    assert async_to_sync(scenario)() == [[3, 4]]


def test_the_websocket_refuses_strangers_anonymous_users_and_foreign_origins(owner, experiment):
    stranger = get_user_model().objects.create_user("mallory")

    async def attempt(cookie, origin=ORIGIN):
        comm = communicator(experiment, cookie, origin)
        connected, code = await comm.connect()
        await comm.disconnect()
        return connected, code

    assert async_to_sync(attempt)(session_cookie(stranger)) == (False, 4403)
    assert async_to_sync(attempt)(None) == (False, 4403)
    assert async_to_sync(attempt)(session_cookie(owner), (b"origin", b"http://evil.example"))[0] is False
    assert async_to_sync(attempt)(session_cookie(owner))[0] is True


@pytest.mark.timeout(600)
def test_launching_through_the_view_trains_on_a_worker_and_streams_over_the_websocket(live_stack, owner):
    from websockets.sync.client import connect

    client = Client()
    client.force_login(owner)
    form = {
        "name": "3 steps",
        **validated_config(
            {
                "steps": 3,
                "num_candidates": 3,
                "sampling_steps": 8,
                "heldout_every": 1,
                "heldout_count": 2,
                "checkpoint_every": 3,
                "prompts": "demo",
            }
        ),
    }
    r = client.post("/experiments/new/", form)
    assert r.status_code == 302, r.content.decode()[:2000]
    experiment = Experiment.objects.get()
    deadline = time.time() + 300
    while not MetricPoint.objects.filter(experiment=experiment, step__gte=1).exists():
        experiment.refresh_from_db()
        assert experiment.status in ("queued", "running"), experiment.error
        assert time.time() < deadline, "the worker wrote no metric"
        time.sleep(0.1)

    headers = {"Cookie": session_cookie(owner), "Origin": live_stack.url}
    batches, status = [], None
    with connect(
        f"ws://127.0.0.1:{live_stack.port}/ws/experiments/{experiment.pk}/?after=-1",
        additional_headers=headers,
        open_timeout=10,
    ) as ws:
        while status not in ("finished", "failed", "cancelled"):
            msg = json.loads(ws.recv(timeout=120))
            if msg["type"] == "points":
                batches.append([p["step"] for p in msg["points"]])
            elif msg["type"] == "status":
                status = msg["status"]
    experiment.refresh_from_db()
    assert status == "finished", experiment.error
    rows = list(MetricPoint.objects.filter(experiment=experiment).values_list("step", flat=True))
    assert rows == [0, 1, 2, 3]  # step 0: the base model's held-out check
    assert sum(batches, []) == rows  # noqa: RUF017  # in order, none missing, none twice
    assert batches[0][0] == 0 and 1 in batches[0]  # the backfill came first...
    assert len(batches) > 1  # ...then live points
    assert experiment.samples.filter(step=0, kind="heldout").count() == 2
    assert experiment.checkpoints() == ["step_000003"]


def test_the_phase_is_stored_then_pushed_at_most_once_a_second_within_a_phase_and_backfilled_on_connect(
    owner, experiment
):
    sink = DatabaseSink(experiment)
    cookie = session_cookie(owner)

    async def scenario():
        comm = communicator(experiment, cookie)
        assert (await comm.connect(timeout=10))[0]
        assert (await comm.receive_json_from(timeout=10))["type"] == "status"  # no phase stored yet: none sent
        t0 = time.monotonic()
        for k in range(50):  # a fast denoising loop: one write, then at most one a second
            await sync_to_async(sink.phase)(1, "sampling candidates", k + 1, 50)
        elapsed = time.monotonic() - t0
        await sync_to_async(sink.phase)(1, "scoring")  # a new phase is never held back
        got = []
        while not got or got[-1]["name"] != "scoring":
            got.append(await comm.receive_json_from(timeout=10))
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()
        return got, elapsed

    got, elapsed = async_to_sync(scenario)()
    sampling = [m for m in got if m["name"] == "sampling candidates"]
    assert {m["type"] for m in got} == {"phase"} and got[-1]["done"] is None
    assert sampling[0]["done"] == 1 and len(sampling) <= 1 + elapsed  # not 50
    experiment.refresh_from_db()
    assert experiment.phase["name"] == "scoring" and experiment.phase["step"] == 1

    async def reconnect():
        comm = communicator(experiment, cookie)
        assert (await comm.connect(timeout=10))[0]
        messages = [await comm.receive_json_from(timeout=10), await comm.receive_json_from(timeout=10)]
        await comm.disconnect()
        return messages

    status, phase = async_to_sync(reconnect)()
    assert status["type"] == "status" and (phase["type"], phase["name"]) == ("phase", "scoring")


def test_the_held_out_alarm_s_reason_is_stored_then_pushed_and_shown_on_the_page(owner, experiment):
    reason = "held-out alarm at step 20 of 60: presence 0.3100 fell more than 0.1 below the base's 0.6200"
    sink = DatabaseSink(experiment)
    cookie = session_cookie(owner)

    async def scenario():
        comm = communicator(experiment, cookie)
        assert (await comm.connect(timeout=10))[0]
        first = await comm.receive_json_from(timeout=10)
        await sync_to_async(sink.stopped)(20, reason)
        pushed = await comm.receive_json_from(timeout=10)
        await comm.disconnect()
        return first, pushed

    first, pushed = async_to_sync(scenario)()
    assert first["type"] == "status" and first["stopped_reason"] == ""
    assert pushed["type"] == "status" and pushed["stopped_reason"] == reason
    experiment.refresh_from_db()
    assert experiment.stopped_reason == reason
    client = Client()
    client.force_login(owner)
    html = client.get(f"/experiments/{experiment.pk}/").content.decode()
    assert f'<p id="stopped" class="note alarm" >{escape(reason)}</p>' in html
