"""Experiments: a training config, its owner and status, and what its run reported.

Data flow (``docs/architecture.md``): the form creates an ``Experiment``; on commit the view queues
``tasks.train_experiment`` (``gpu`` queue), whose job (``jobs.train``) runs ``vpo.train.train`` with
a ``DatabaseSink`` (``sink.py``): every metric and sample is written here first, then announced on
the channel layer; the websocket consumer (``consumers.py``) backfills from these tables. Nothing
here imports torch: ``vpo`` is imported inside the methods that need it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from webapp.db import retry_once
from webapp.live import push

# A running task writes its heartbeat every HEARTBEAT_S (webapp/experiments/jobs.py); one that has
# not for HEARTBEAT_TIMEOUT_S has lost its worker (SIGKILL, out of memory, the machine gone): the
# reaper (worker/celery.py) puts the run back on the queue and Cancel ends it at once.
HEARTBEAT_S = float(os.environ.get("VPO_HEARTBEAT_S", 10))
HEARTBEAT_TIMEOUT_S = float(os.environ.get("VPO_HEARTBEAT_TIMEOUT_S", 60))


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"  # its worker shut down mid-run; back in the queue, resumes from its checkpoint
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


DONE = (Status.FINISHED, Status.FAILED, Status.CANCELLED)


def stale_heartbeat() -> Q:
    """Rows whose worker has not said it is alive for HEARTBEAT_TIMEOUT_S (or never did)."""
    cutoff = timezone.now() - timedelta(seconds=HEARTBEAT_TIMEOUT_S)
    return Q(heartbeat__isnull=True) | Q(heartbeat__lt=cutoff)


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
    # why the run stopped before its last step by itself: the held-out alarm (TrainConfig.stop_heldout)
    stopped_reason = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    # kept current by the sink so that the list page needs no scan of the metric rows
    last_step = models.IntegerField(default=0)
    last_reward = models.FloatField(null=True, blank=True)
    best_reward = models.FloatField(null=True, blank=True)
    # who runs it and when it last said so (a run whose heartbeat is stale has lost its worker),
    # and the Celery queue its task goes to (the reaper puts a lost run back on the same queue)
    worker = models.CharField(max_length=255, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    queue = models.CharField(max_length=120, default="gpu")
    # what the step in progress is doing (DatabaseSink.phase, at most once a second): {"step", "name",
    # "done", "total", "wall"}; kept so that a reload shows it before the next event
    phase = models.JSONField(null=True, blank=True)
    # run management (the list's search, filters and grouping): the owner's words about the run
    tags = models.JSONField(default=list, blank=True)  # short labels, lower case, no commas
    notes = models.TextField(blank=True)
    run_group = models.CharField(max_length=120, blank=True)  # e.g. the seeds of one setting
    archived = models.BooleanField(default=False)  # off the list unless asked for; files kept
    # PhysMaster's three stages as one run (``vpo.physmaster``): its PhysMasterConfig without "out";
    # ``config`` then holds stage II's TrainConfig (what the table, compare and export show). None:
    # a plain training run
    physmaster = models.JSONField(null=True, blank=True)

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
        """The config as the TOML ``vpo train --config`` reads; a PhysMaster chain's settings as
        ``vpo physmaster --config`` reads them (its ``config`` is stage II's alone)."""
        from vpo.train.config import TrainConfig

        name = "".join(c if c.isprintable() else " " for c in self.name)  # a newline would end the comment
        header = f"# {name}: exported from VPO Studio experiment #{self.pk}\n"
        if self.physmaster is not None:
            from vpo.physmaster import PhysMasterConfig

            header += (
                f"# PhysMaster's three stages, one after the other: vpo physmaster --config experiment-{self.pk}.toml\n"
            )
            return header + PhysMasterConfig(**self.physmaster, out=f"runs/experiment-{self.pk}").to_toml()
        data = dict(self.config, out=f"runs/experiment-{self.pk}")
        if self.prompts_text:
            data["prompts"] = "prompts.txt"
        if self.prompts_text:
            header += "# prompts.txt: download it from the experiment page, next to this file\n"
        reward_model = self.server_reward_model()
        if reward_model is not None:  # a folder on this server: the zip the studies page offers, unpacked here
            data["reward_model"] = reward_model.download_name
            url = reverse("studies:reward_model_download", args=[reward_model.pk])
            header += f"# {reward_model.download_name}/: download {url} from this server, unzip it next to this file\n"
        return header + TrainConfig.toml_of(data)

    def server_reward_model(self):
        """The reward model of this server (``webapp.studies.models.RewardModel``) the run's
        ``reward_model`` is the folder of, or None (no learned reward, or a folder of the worker's)."""
        from webapp.studies.models import RewardModel

        folder = self.config.get("reward_model") or ""
        root = Path(settings.MEDIA_ROOT) / "reward_models"
        if self.config.get("reward") != "learned" or Path(folder).parent != root or not Path(folder).name.isdigit():
            return None
        return RewardModel.objects.filter(pk=int(Path(folder).name)).first()

    # --- lifecycle ---------------------------------------------------------------------------
    def request_cancel(self) -> None:
        """Cancel = a flag the training loop's stop callable reads every step (no revoke/terminate:
        the loop stops between steps and saves a final checkpoint). A run that has not started yet,
        or whose worker is gone (a stale heartbeat), is cancelled at once."""
        if self.is_done:
            return
        not_running = Q(status__in=(Status.QUEUED, Status.PAUSED)) | Q(status=Status.RUNNING) & stale_heartbeat()
        if Experiment.objects.filter(not_running, pk=self.pk).update(
            status=Status.CANCELLED, cancel_requested=True, finished=timezone.now()
        ):
            self.refresh_from_db()
            push(self.group, {"type": "status.event", **self.status_payload()})
        else:
            Experiment.objects.filter(pk=self.pk).update(cancel_requested=True)
            self.cancel_requested = True

    def stop_requested(self) -> bool:
        return retry_once(lambda: Experiment.objects.filter(pk=self.pk, cancel_requested=True).exists())

    def status_payload(self) -> dict:
        return {
            "status": self.status,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "stopped_reason": self.stopped_reason,
        }

    def set_status(self, status: str, error: str = "") -> None:
        self.status, self.error = status, error
        if status == Status.RUNNING:
            self.started = self.started or timezone.now()
        if status in DONE:
            self.finished = timezone.now()
        # the failure path too: never on the connection that just failed (webapp/db.py)
        retry_once(lambda: self.save(update_fields=["status", "error", "started", "finished"]))
        push(self.group, {"type": "status.event", **self.status_payload()})

    def checkpoints(self) -> list[str]:
        """Its checkpoints' names, oldest first: ``step_000010``; a PhysMaster run's
        ``<stage>/step_000010``, stage by stage."""
        from vpo.physmaster import STAGES

        prefixes = [f"{stage}/" for stage in STAGES] if self.physmaster is not None else [""]
        names = []
        for prefix in prefixes:
            folder = self.checkpoint_dir(prefix + "x").parent
            if folder.is_dir():
                names += [
                    prefix + p.name for p in sorted(folder.glob("step_*")) if p.is_dir() and not p.name.endswith(".tmp")
                ]
        return names

    def checkpoint_dir(self, name: str) -> Path:
        """The folder of checkpoint ``name`` (one of ``checkpoints()``)."""
        stage, _, step = name.rpartition("/")  # stage "" for a plain run: run/checkpoints/step_...
        return self.run_dir / "run" / stage / "checkpoints" / step

    @property
    def total_steps(self) -> int:
        """The dashboard's x range: a PhysMaster run's stages one after the other (``stage_offsets``)."""
        if self.physmaster is None:
            return self.config["steps"]
        return self.physmaster["steps_sft"] + 2 * (self.physmaster["steps_dpo"] + 1)

    def stage_offsets(self) -> dict[str, int]:
        """Where each PhysMaster stage's steps go on the run's one step axis: stage I's steps 1..S,
        stage II's 0..D after it (0: its held-out check of where it starts), then stage III's."""
        sft, dpo = self.physmaster["steps_sft"], self.physmaster["steps_dpo"]
        return {"stage1-sft": 0, "stage2-dpo-lora": sft + 1, "stage3-dpo-physencoder": sft + dpo + 2}


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
    """A logged video: a candidate (winner / loser marked) or a held-out sample (step 0 = base), and
    an image-to-video run's first frame it was conditioned on."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="samples")
    step = models.IntegerField()
    kind = models.CharField(max_length=20)  # "candidates" | "heldout"
    index = models.IntegerField()
    prompt = models.TextField()
    score = models.FloatField(null=True)
    # "winner" | "loser" | "best" (RWR) | "", then " vetoed" where the subject veto moved it (vpo/train/online_dpo.py)
    label = models.CharField(max_length=20, blank=True)
    path = models.CharField(max_length=300, help_text="mp4 path relative to the experiment's folder")
    # image-to-video: the PNG of the first frame the video was conditioned on, as ``path``; "" otherwise
    image = models.CharField(max_length=300, blank=True)

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
            "image": reverse("experiments:media", args=[self.experiment_id, self.image]) if self.image else None,
        }


class Evaluation(models.Model):
    """``vpo eval`` of one checkpoint of an experiment: base and checkpoint side by side."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="evaluations")
    checkpoint = models.CharField(max_length=40)  # a folder name under the run's checkpoints/
    prompts = models.CharField(max_length=40, default="heldout64")
    # vpo.eval.SUITES: "builtin" (weight-free, labelled exact/proxy) or "vbench" (the official package, queue vbench)
    suite = models.CharField(max_length=10, default="builtin")
    # how base and checkpoint are sampled (Euler on the run's schedule, the same seeds): the form's
    # default is the backbone's standard (TrainConfig's, e.g. 20 steps and CFG 4 for tiny), whatever steps
    # the run's candidates took: a run tuned on 6-step candidates is still judged on standard videos
    sampling_steps = models.PositiveSmallIntegerField(default=20)
    guidance = models.FloatField(default=4.0)
    # the sampling schedule's shift for base and checkpoint: null = the run's, 0 = the backbone's default;
    # a shift chosen here judges runs trained on different schedules on one
    flow_shift = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    heartbeat = models.DateTimeField(null=True, blank=True)  # while running (webapp/heartbeats.py)

    class Meta:
        ordering = ["-created"]

    @property
    def column_names(self) -> list[str]:
        """The table's headers, from the columns stored with the result (``vpo.eval.COLUMNS``)."""
        short = {"imaging_quality": "imaging*", "quality_score": "quality"}  # * = the proxy, see the note
        return [short.get(c, c.replace("_", " ")) for c in (self.result or {}).get("columns", [])]

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
