"""The worker's sink: what a training run reports goes to the database first, then is announced on
the channel layer (at-most-once; it drops group messages when full), so the database stays the
source of truth and a websocket client that misses an event catches up from it."""

from __future__ import annotations

import logging
import math
import time
from typing import TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import FloatField, Value
from django.db.models.functions import Coalesce, Greatest

from webapp.experiments.models import Experiment, MetricPoint, Sample

log = logging.getLogger(__name__)


class MetricEvent(TypedDict):
    type: str  # "metric.event"
    step: int
    wall: float
    values: dict[str, float | None]


def push(group: str, event: dict) -> None:
    """Announce an event; a failure is logged, never raised: the data is already in the database."""
    try:
        async_to_sync(get_channel_layer().group_send)(group, event)
    except Exception:  # Redis down or the layer full: clients catch up from the database
        log.warning("could not push %s to %s", event.get("type"), group, exc_info=True)


def finite_or_none(value) -> float | None:
    """JSON (and PostgreSQL's jsonb) has no NaN: an unavailable value is stored as null, not dropped."""
    value = float(value)
    return value if math.isfinite(value) else None


class DatabaseSink:
    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.t0 = time.time()
        first = experiment.points.order_by("-step").first()
        if first is not None:  # a resumed run: wall time goes on from where it stopped
            self.t0 -= first.wall

    def metrics(self, step: int, values: dict[str, float]) -> None:
        clean = {k: finite_or_none(v) for k, v in values.items()}
        with transaction.atomic():
            # update_or_create: a run resumed from an earlier checkpoint re-reports the steps after it
            point, _ = MetricPoint.objects.update_or_create(
                experiment=self.experiment, step=step, defaults={"wall": time.time() - self.t0, "values": clean}
            )
            update = {"last_step": step}
            reward = clean.get("reward/mean")
            if reward is not None:
                best = Greatest(Coalesce("best_reward", Value(reward, FloatField())), Value(reward, FloatField()))
                update.update(last_reward=reward, best_reward=best)
            Experiment.objects.filter(pk=self.experiment.pk).update(**update)
        push(self.experiment.group, MetricEvent(type="metric.event", **point.as_event()))

    def samples(self, step, kind, videos, prompts, scores, labels, fps) -> None:
        from vpo import video as video_io

        folder = f"samples/step_{step:06d}_{kind}"
        rows = []
        for i, (video, prompt, score, label) in enumerate(zip(videos, prompts, scores, labels)):
            files = video_io.save_video(video, self.experiment.run_dir / folder, f"{i:02d}", fps)
            rows.append(
                Sample(
                    experiment=self.experiment,
                    step=step,
                    kind=kind,
                    index=i,
                    prompt=prompt,
                    score=finite_or_none(score),
                    label=label,
                    path=f"{folder}/{files['mp4']}",
                )
            )
        with transaction.atomic():
            Sample.objects.filter(experiment=self.experiment, step=step, kind=kind).delete()
            Sample.objects.bulk_create(rows)
        push(
            self.experiment.group,
            {"type": "samples.event", "step": step, "kind": kind, "samples": [r.as_event() for r in rows]},
        )
