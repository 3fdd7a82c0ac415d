"""The live channel of one experiment's dashboard.

On connect the consumer checks that the user may see the experiment, joins its group *first* and
then backfills every point after the client's last step, the status and the phase stored last
from the database: a point written in
between is in the backfill or announced after it, and ``self.last`` drops what was already sent.
An announced point that does not follow the last one sent (the channel layer dropped some) is
filled in from the database, which every point reaches before it is announced.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from webapp.experiments.models import Experiment
from webapp.security import ClosedOnLogout

CHUNK = 2000  # points per backfill message


@database_sync_to_async
def visible_experiment(user, pk):
    if not user.is_authenticated:
        return None
    return Experiment.objects.visible_to(user).filter(pk=pk).first()


@database_sync_to_async
def points_between(experiment, after: int, until: int | None) -> list[dict]:
    rows = experiment.points.filter(step__gt=after)
    if until is not None:
        rows = rows.filter(step__lte=until)
    return [p.as_event() for p in rows.order_by("step")]


@database_sync_to_async
def status_of(experiment) -> dict:
    experiment.refresh_from_db()
    return experiment.status_payload()


@database_sync_to_async
def phase_of(experiment) -> dict | None:
    return Experiment.objects.filter(pk=experiment.pk).values_list("phase", flat=True).first()


class ExperimentConsumer(ClosedOnLogout, AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.experiment = await visible_experiment(self.scope["user"], self.scope["url_route"]["kwargs"]["pk"])
        if self.experiment is None:
            await self.close(code=4403)  # not logged in, not theirs, or no such experiment: all look alike
            return
        query = parse_qs(self.scope["query_string"].decode())
        try:
            self.last = int(query.get("after", ["-1"])[0])
        except ValueError:
            self.last = -1
        await self.channel_layer.group_add(self.experiment.group, self.channel_name)
        await self.follow_session()
        await self.accept()
        await self.send_points(await points_between(self.experiment, self.last, None))
        await self.send_json({"type": "status", **(await status_of(self.experiment))})
        phase = await phase_of(self.experiment)  # the phase stored last (a newer one is pushed after it)
        if phase:
            await self.send_json({"type": "phase", **phase})

    async def disconnect(self, code):
        if getattr(self, "experiment", None) is not None:
            await self.channel_layer.group_discard(self.experiment.group, self.channel_name)
        await self.unfollow_session()

    async def send_points(self, points: list[dict]) -> None:
        points = [p for p in points if p["step"] > self.last]
        for i in range(0, len(points), CHUNK):
            await self.send_json({"type": "points", "points": points[i : i + CHUNK]})
        if points:
            self.last = points[-1]["step"]

    # --- group events (the worker's sink sends them after writing the database) ------------
    async def metric_event(self, event):
        if event["step"] <= self.last:
            return
        if event["step"] == self.last + 1:
            point = {k: event[k] for k in ("step", "wall", "values")}
            await self.send_points([point])
        else:  # a gap: events were dropped, or steps were skipped; the database has them all
            await self.send_points(await points_between(self.experiment, self.last, event["step"]))

    async def samples_event(self, event):
        await self.send_json(
            {"type": "samples", "step": event["step"], "kind": event["kind"], "samples": event["samples"]}
        )

    async def status_event(self, event):
        keys = ("status", "error", "cancel_requested", "stopped_reason")  # Experiment.status_payload
        await self.send_json({"type": "status", **{k: event.get(k, "") for k in keys}})

    async def phase_event(self, event):
        await self.send_json({"type": "phase", **{k: event[k] for k in ("step", "name", "done", "total", "wall")}})

    async def evaluation_event(self, event):
        await self.send_json({"type": "evaluation", "id": event["id"], "status": event["status"]})
