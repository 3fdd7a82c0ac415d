"""The worker's sink (``vpo.train.sinks.Sink``): what a training run reports goes to the database
first, then is announced on the channel layer (``webapp.live.push``), so the database stays the
source of truth and a websocket client that misses an event catches up from it."""

from __future__ import annotations

import time
from typing import TypedDict

from django.db import transaction
from django.db.models import FloatField, Value
from django.db.models.functions import Coalesce, Greatest

from vpo.train.keys import REWARD_MEAN
from webapp.db import retry_once
from webapp.experiments.models import Experiment, MetricPoint, Sample
from webapp.live import finite_or_none, push


class MetricEvent(TypedDict):
    type: str  # "metric.event"
    step: int
    wall: float
    values: dict[str, float | None]


class PhaseEvent(TypedDict):
    type: str  # "phase.event"
    step: int
    name: str
    done: int | None
    total: int | None
    wall: float


# the least time between two database writes of the phase within one phase of one step: the
# denoising loop reports every step (many a second on a GPU), the dashboard needs about one a second
PHASE_EVERY_S = 1.0


class DatabaseSink:
    """``offset`` is added to every step reported and ``label`` goes before every phase: a PhysMaster
    run's stages share one step axis (``Experiment.stage_offsets``), each phase says its stage."""

    def __init__(self, experiment: Experiment, offset: int = 0, label: str = ""):
        self.experiment, self.offset, self.label = experiment, offset, label
        self.t0 = time.time()
        self.last_phase: tuple[int, str] | None = None
        self.last_phase_write = 0.0
        first = experiment.points.order_by("-step").first()
        if first is not None:  # a resumed run: wall time goes on from where it stopped
            self.t0 -= first.wall

    def metrics(self, step: int, values: dict[str, float]) -> None:
        step += self.offset
        clean = {k: finite_or_none(v) for k, v in values.items()}
        # the whole transaction again on a fresh connection if the database dropped this one
        # (webapp/db.py): update_or_create makes the second try write the step once
        point = retry_once(lambda: self._write_metrics(step, clean))
        push(self.experiment.group, MetricEvent(type="metric.event", **point.as_event()))

    def _write_metrics(self, step: int, clean: dict[str, float | None]) -> MetricPoint:
        with transaction.atomic():
            # update_or_create: a run resumed from an earlier checkpoint re-reports the steps after it
            point, _ = MetricPoint.objects.update_or_create(
                experiment=self.experiment, step=step, defaults={"wall": time.time() - self.t0, "values": clean}
            )
            update = {"last_step": step}
            reward = clean.get(REWARD_MEAN)
            if reward is not None:
                best = Greatest(Coalesce("best_reward", Value(reward, FloatField())), Value(reward, FloatField()))
                update.update(last_reward=reward, best_reward=best)
            Experiment.objects.filter(pk=self.experiment.pk).update(**update)
        return point

    def phase(self, step: int, name: str, done: int | None = None, total: int | None = None) -> None:
        """Written (then pushed) when the step or the phase changes, else at most every
        PHASE_EVERY_S: a new phase is never held back, so the page never shows a phase that ended."""
        step += self.offset
        name = f"{self.label}: {name}" if self.label else name
        now = time.monotonic()
        if (step, name) == self.last_phase and now - self.last_phase_write < PHASE_EVERY_S:
            return
        self.last_phase, self.last_phase_write = (step, name), now
        event = PhaseEvent(type="phase.event", step=step, name=name, done=done, total=total, wall=time.time() - self.t0)
        payload = {k: v for k, v in event.items() if k != "type"}
        retry_once(lambda: Experiment.objects.filter(pk=self.experiment.pk).update(phase=payload))
        push(self.experiment.group, event)

    def stopped(self, step: int, reason: str) -> None:
        """The held-out alarm stopped the run: the reason on the run's page (written, then pushed)."""
        self.experiment.stopped_reason = reason
        retry_once(lambda: Experiment.objects.filter(pk=self.experiment.pk).update(stopped_reason=reason))
        push(self.experiment.group, {"type": "status.event", **self.experiment.status_payload()})

    def samples(self, step, kind, videos, prompts, scores, labels, fps, images=None) -> None:
        """Each video (and an image-to-video run's first frame, as a PNG beside it) to the run's
        folder, then their rows, then the event (``images``: ``vpo.train.sinks.Sink.samples``)."""
        from vpo import video as video_io

        step += self.offset
        folder = f"samples/step_{step:06d}_{kind}"
        rows = []
        for i, (video, prompt, score, label) in enumerate(zip(videos, prompts, scores, labels)):
            files = video_io.save_video(video, self.experiment.run_dir / folder, f"{i:02d}", fps)
            image = ""
            if images is not None:  # lossless: the frame exactly as the backbone got it
                image = f"{folder}/{i:02d}.png"
                video_io.write_image(images[i], self.experiment.run_dir / image)
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
                    image=image,
                )
            )

        def write() -> None:
            with transaction.atomic():
                Sample.objects.filter(experiment=self.experiment, step=step, kind=kind).delete()
                Sample.objects.bulk_create(rows)

        retry_once(write)
        push(
            self.experiment.group,
            {"type": "samples.event", "step": step, "kind": kind, "samples": [r.as_event() for r in rows]},
        )
