"""Experiments: a training config, its owner and status, and what its run reported.

Data flow (``shared/DESIGN.md``): the form creates an ``Experiment``; on commit a Celery task on
the ``gpu`` queue calls ``Experiment.run``, which runs ``vpo.train.train`` with a ``DatabaseSink``
(``sink.py``): every metric and sample is written here first, then announced on the channel layer;
the websocket consumer (``consumers.py``) backfills from these tables. Nothing here imports torch
at import time: ``vpo`` is imported inside the methods the worker calls.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

log = logging.getLogger(__name__)


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"  # its worker shut down mid-run; back in the queue, resumes from its checkpoint
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


DONE = (Status.FINISHED, Status.FAILED, Status.CANCELLED)


class ExperimentQuerySet(models.QuerySet):
    def visible_to(self, user):
        """What ``user`` may see and act on: their own experiments, or all of them for staff."""
        return self if user.is_staff else self.filter(owner=user)


class Experiment(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=120)
    # TrainConfig.to_dict() without "out" (the server decides where runs live); "prompts" is a
    # built-in set's name, or "uploaded" with the file's text in prompts_text
    config = models.JSONField()
    prompts_text = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    # kept current by the sink so that the list page needs no scan of the metric rows
    last_step = models.IntegerField(default=0)
    last_reward = models.FloatField(null=True, blank=True)
    best_reward = models.FloatField(null=True, blank=True)

    objects = ExperimentQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return f"{self.name} (#{self.pk})"

    def get_absolute_url(self):
        return reverse("experiments:detail", args=[self.pk])

    @property
    def run_dir(self) -> Path:
        return Path(settings.MEDIA_ROOT) / "experiments" / str(self.pk)

    @property
    def group(self) -> str:
        """Channel-layer group of this experiment's live events."""
        return f"experiment-{self.pk}"

    @property
    def is_done(self) -> bool:
        return self.status in DONE

    def train_config(self):
        """The ``vpo`` TrainConfig this experiment runs (its prompt file written into the run folder)."""
        from vpo.train.config import TrainConfig

        data = dict(self.config, out=str(self.run_dir / "run"))
        if self.prompts_text:
            path = self.run_dir / "prompts.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.prompts_text, encoding="utf-8")
            data["prompts"] = str(path)
        return TrainConfig.from_dict(data)

    def export_toml(self) -> str:
        """The config as the TOML ``vpo train --config`` reads."""
        from vpo.train.config import TrainConfig

        data = dict(self.config, out=f"runs/experiment-{self.pk}")
        if self.prompts_text:
            data["prompts"] = "prompts.txt"
        header = f"# {self.name}: exported from VPO Studio experiment #{self.pk}\n"
        if self.prompts_text:
            header += "# prompts.txt: download it from the experiment page, next to this file\n"
        return header + TrainConfig.from_dict(data).to_toml()

    # --- lifecycle ---------------------------------------------------------------------------
    def launch(self) -> None:
        """Queue the run once the current transaction commits (the worker must see the row)."""
        from worker.tasks import train_experiment

        train_experiment.delay_on_commit(self.pk)

    def request_cancel(self) -> None:
        """Cancel = a flag the training loop's stop callable reads every step (no revoke/terminate:
        the loop stops between steps and saves a final checkpoint). A run that has not started yet
        is cancelled at once."""
        if self.is_done:
            return
        if Experiment.objects.filter(pk=self.pk, status__in=(Status.QUEUED, Status.PAUSED)).update(
            status=Status.CANCELLED, cancel_requested=True, finished=timezone.now()
        ):
            self.refresh_from_db()
            from webapp.experiments.sink import push

            push(self.group, {"type": "status.event", **self.status_payload()})
        else:
            Experiment.objects.filter(pk=self.pk).update(cancel_requested=True)
            self.cancel_requested = True

    def stop_requested(self) -> bool:
        return Experiment.objects.filter(pk=self.pk, cancel_requested=True).exists()

    def status_payload(self) -> dict:
        return {"status": self.status, "error": self.error, "cancel_requested": self.cancel_requested}

    def set_status(self, status: str, error: str = "") -> None:
        from webapp.experiments.sink import push

        self.status, self.error = status, error
        if status == Status.RUNNING:
            self.started = self.started or timezone.now()
        if status in DONE:
            self.finished = timezone.now()
        self.save(update_fields=["status", "error", "started", "finished"])
        push(self.group, {"type": "status.event", **self.status_payload()})

    def run(self, worker_stopping=lambda: False) -> bool:
        """What the worker does for this experiment: train with a database sink until done,
        cancelled or failed. ``worker_stopping`` says whether the worker is shutting down: then the
        run stops at its next step with a checkpoint, is marked paused and this returns False, so
        that the task goes back to the queue. A task that comes back (after a pause, or after its
        worker died) finds the row paused or running and resumes from the run's last checkpoint."""
        from vpo.train import train
        from vpo.train.runner import latest_checkpoint
        from webapp.experiments.sink import DatabaseSink

        if self.is_done:
            return True
        if self.cancel_requested:
            self.set_status(Status.CANCELLED)
            return True
        redelivered = self.status in (Status.RUNNING, Status.PAUSED)
        self.set_status(Status.RUNNING)
        try:
            cfg = self.train_config()
            resume = redelivered and latest_checkpoint(cfg.out) is not None
            train(
                cfg,
                DatabaseSink(self),
                stop=lambda: self.stop_requested() or worker_stopping(),
                resume=resume,
                device=worker_device(),
            )
        except Exception as e:  # any failure ends the run with its message shown on the page...
            if not worker_stopping() or self.stop_requested():
                log.exception("experiment %s failed", self.pk)
                self.set_status(Status.FAILED, f"{type(e).__name__}: {e}")
                return True
            # ...unless the worker is going down (a cold shutdown cancels the task from inside): it
            # is paused below, the checkpoint kept; the next worker resumes it, or fails it for good
            log.warning("experiment %s interrupted by its worker's shutdown: %s", self.pk, e)
        if self.stop_requested():
            self.set_status(Status.CANCELLED)
        elif worker_stopping():
            self.set_status(Status.PAUSED)
            return False
        else:
            self.set_status(Status.FINISHED)
        return True

    def checkpoints(self) -> list[str]:
        folder = self.run_dir / "run" / "checkpoints"
        return (
            sorted(p.name for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
            if folder.is_dir()
            else []
        )


def worker_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class MetricPoint(models.Model):
    """Everything the loop reported for one step (``{"reward/mean": ..., "dpo/loss": ...}``)."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="points")
    step = models.IntegerField()
    wall = models.FloatField(help_text="seconds since the run started")
    values = models.JSONField()

    class Meta:
        ordering = ["step"]
        constraints = [models.UniqueConstraint(fields=["experiment", "step"], name="one_point_per_step")]

    def as_event(self) -> dict:
        return {"step": self.step, "wall": self.wall, "values": self.values}


class Sample(models.Model):
    """A logged video: a candidate (winner / loser marked) or a held-out sample (step 0 = base)."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="samples")
    step = models.IntegerField()
    kind = models.CharField(max_length=20)  # "candidates" | "heldout"
    index = models.IntegerField()
    prompt = models.TextField()
    score = models.FloatField(null=True)
    label = models.CharField(max_length=10, blank=True)  # "winner" | "loser" | ""
    path = models.CharField(max_length=300, help_text="mp4 path relative to the experiment's folder")

    class Meta:
        ordering = ["step", "kind", "index"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "step", "kind", "index"], name="one_sample_per_slot")
        ]

    def as_event(self) -> dict:
        return {
            "step": self.step,
            "kind": self.kind,
            "index": self.index,
            "prompt": self.prompt,
            "score": self.score,
            "label": self.label,
            "url": reverse("experiments:media", args=[self.experiment_id, self.path]),
        }


class Evaluation(models.Model):
    """``vpo eval`` of one checkpoint of an experiment: base and checkpoint side by side."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="evaluations")
    checkpoint = models.CharField(max_length=40)  # a folder name under the run's checkpoints/
    prompts = models.CharField(max_length=40, default="heldout64")
    # vpo.eval.SUITES: "builtin" (weight-free, labelled exact/proxy) or "vbench" (the official package, queue vbench)
    suite = models.CharField(max_length=10, default="builtin")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    @property
    def rows(self) -> list[tuple[str, list[str]]]:
        """(model, values in %) for the Table-3 layout."""
        if not self.result:
            return []
        return [
            (model, [f"{100 * v:.2f}" if v is not None else "–" for v in self.result[model]])
            for model in ("base", "checkpoint")
        ]

    @property
    def difference_rows(self) -> list[tuple[str, list[str]]]:
        """Checkpoint - base paired by video (``vpo.eval.paired_difference``): the mean in points,
        its 95% interval, and on how many videos the checkpoint is better. Empty for results
        stored before the difference was."""
        cells = (self.result or {}).get("difference")
        if not cells:
            return []

        def show(fmt) -> list[str]:
            return ["–" if c is None or c["mean"] is None else fmt(c) for c in cells]

        return [
            ("difference", show(lambda c: f"{100 * c['mean']:+.2f}")),
            (
                "95% CI",
                show(lambda c: "–" if None in c["ci95"] else f"{100 * c['ci95'][0]:+.2f} to {100 * c['ci95'][1]:+.2f}"),
            ),
            ("better on", show(lambda c: f"{c['better']}/{c['n']}")),
        ]

    @property
    def header(self) -> list[tuple[str, str]]:
        """(column, its label: exact / proxy (what it stands in for) / ...) in the stored order."""
        result = self.result or {}
        labels = result.get("labels", {})
        return [(c.replace("_", " "), labels.get(c, "")) for c in result.get("columns", [])]

    def launch(self) -> None:
        from worker.tasks import evaluate_checkpoint, evaluate_checkpoint_vbench

        # the official VBench runs on workers of queue "vbench" (its virtualenv and weights live there)
        (evaluate_checkpoint_vbench if self.suite == "vbench" else evaluate_checkpoint).delay_on_commit(self.pk)

    def run(self) -> None:
        from vpo.data.prompts import read_prompts
        from vpo.eval import columns_of, compare
        from webapp.experiments.sink import finite_or_none, push

        if self.status in DONE:
            return
        self.status = Status.RUNNING
        self.save(update_fields=["status"])
        try:
            cfg = self.experiment.config
            folder = self.experiment.run_dir / "run" / "checkpoints" / self.checkpoint
            rows = compare(
                cfg["backbone"],
                folder,
                read_prompts(self.prompts),
                steps=cfg["sampling_steps"],
                guidance=cfg["guidance"],
                device=worker_device(),
                suite=self.suite,
            )
            columns = columns_of(rows)
            # jsonb does not keep key order: store the columns' order with the values
            diff = rows["difference"]
            self.result = {
                "columns": list(columns),
                "labels": rows["labels"],
                "quality": rows["quality"],
                "suite": self.suite,
                **{m: [finite_or_none(rows[m][c]) for c in columns] for m in ("base", "checkpoint")},
                "static": {m: [rows[m].get("static_kept"), rows[m]["videos"]] for m in ("base", "checkpoint")},
                "difference": [_difference_cell(diff.get(c)) for c in columns],
            }
            self.status = Status.FINISHED
        except Exception as e:  # shown on the page next to the evaluation
            log.exception("evaluation %s failed", self.pk)
            self.status, self.error = Status.FAILED, f"{type(e).__name__}: {e}"
        self.save(update_fields=["status", "result", "error"])
        push(self.experiment.group, {"type": "evaluation.event", "id": self.pk, "status": self.status})


def _difference_cell(d: dict | None) -> dict | None:
    """One column of ``paired_difference`` as jsonb can hold it (no NaN); None where there is none
    (the quality score is a score of means, not of videos)."""
    from webapp.experiments.sink import finite_or_none

    if d is None:
        return None
    return {
        "mean": finite_or_none(d["mean"]),
        "ci95": [finite_or_none(x) for x in d["ci95"]],
        "better": d["better"],
        "worse": d["worse"],
        "n": d["n"],
    }
