"""2AFC user studies: systems, rendered clips, trials, volunteers and their votes.

A researcher creates a ``Study`` over two or more ``System``s (the base backbone or experiment
checkpoints). A Celery task (``jobs.render``) renders every system's videos with paired seeds (same prompt and seed
for every system) plus degraded copies for gold trials, then builds the ``Trial``s and opens the
study. Volunteers arrive at an unguessable link; each becomes a ``Participant`` with a plan of
trials and, per trial, which clip is on the left (randomised, stored). One ``Vote`` per
(participant, trial), enforced by the database, with the trial page's timings (display onset,
reaction time, play-throughs, time hidden). A pilot link (``pilot_key``) makes pilot participants,
whose votes are kept apart: never counted, never balancing the plan, flagged in the CSV. The
researcher can exclude a participant by hand, with a reason, and take it back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import random
import secrets
from pathlib import Path

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime


def new_token() -> str:
    return secrets.token_urlsafe(18)  # 144 random bits: not guessable


def new_completion_code() -> str:
    return secrets.token_hex(4).upper()


class StudyStatus(models.TextChoices):
    RENDERING = "rendering"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


class StudyQuerySet(models.QuerySet):
    def visible_to(self, user):
        return self if user.is_staff else self.filter(owner=user)


class Study(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="studies")
    name = models.CharField(max_length=120)
    token = models.CharField(max_length=40, unique=True, default=new_token)
    status = models.CharField(max_length=10, choices=StudyStatus.choices, default=StudyStatus.RENDERING)
    error = models.TextField(blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)  # while its clips render (webapp/heartbeats.py)
    question = models.CharField(max_length=200, default="Which video looks better?")
    instructions = models.TextField(blank=True)
    prompts = models.TextField(help_text="one prompt per line")
    # image-to-video: the image prompt set (vpo.data.prompts.IMAGE_SETS) whose first frames the
    # systems are conditioned on, prompt i with scene i; "" for text-to-video
    image_set = models.CharField(max_length=40, blank=True)
    videos_per_prompt = models.PositiveIntegerField(default=1)
    seed = models.IntegerField(default=0)
    allow_tie = models.BooleanField(default=True, help_text='offer "Can\'t tell"')
    gold_rate = models.FloatField(default=0.1, help_text="share of each volunteer's trials that are gold trials")
    votes_per_trial = models.PositiveIntegerField(default=5, help_text="votes wanted per trial")
    trials_per_participant = models.PositiveIntegerField(default=10)
    completion_code = models.CharField(max_length=20, default=new_completion_code)
    completion_url = models.URLField(
        blank=True, help_text="e.g. Prolific's completion link; volunteers go there once their last vote is stored"
    )
    rendered = models.PositiveIntegerField(default=0)
    to_render = models.PositiveIntegerField(default=0)
    feedback = models.JSONField(null=True, blank=True)  # feedback-source analysis (MRR, Recall@k) of the votes
    created = models.DateTimeField(auto_now_add=True)

    objects = StudyQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("studies:detail", args=[self.pk])

    def public_url(self):
        return reverse("studies:welcome", args=[self.token])

    def pilot_key(self) -> str:
        """The key of the pilot link (a keyed hash of the token: nothing to store, not guessable)."""
        return hmac.new(settings.SECRET_KEY.encode(), f"pilot:{self.token}".encode(), hashlib.sha256).hexdigest()[:24]

    def pilot_url(self):
        return reverse("studies:pilot", args=[self.token, self.pilot_key()])

    @property
    def gold_per_participant(self) -> int:
        return gold_trials(self.trials_per_participant, self.gold_rate)

    @property
    def media_dir(self) -> Path:
        return Path(settings.MEDIA_ROOT) / "studies" / str(self.pk)

    @property
    def group(self) -> str:
        return f"study-{self.pk}"

    def prompt_list(self) -> list[str]:
        from vpo.data.prompts import parse_prompts

        return parse_prompts(self.prompts)

    def base_system(self) -> System:
        """The anchor of the ratings: the base model if it is one of the systems, else the first."""
        systems = list(self.systems.all())
        return next((s for s in systems if s.experiment_id is None), systems[0])

    def backbone_of(self, system) -> str:
        return system.experiment.config["backbone"] if system.experiment_id else system.backbone

    @transaction.atomic
    def build_trials(self) -> None:
        """Every pair of systems on every (prompt, first frame, seed), and gold trials: a clip
        against its degraded copy (the right answer is the clean one). An image-to-video study's
        two clips of a trial come from the same first frame (the same scene: one caption can
        describe several, ``scene`` tells them apart). Every clip file is first padded to one
        size, so that no request (Content-Length, a ``Range`` probe) tells the noisy, larger
        degraded copy from the clean one."""
        from vpo.video import pad_to_same_size

        pad_to_same_size([c.path for c in self.clips.all() if c.path.is_file()])
        clips = {}
        for clip in self.clips.all():
            clips[(clip.system_id, clip.pairing_key, clip.degraded)] = clip
        systems = list(self.systems.order_by("pk"))
        keys = sorted({key for (_, key, _) in clips}, key=lambda k: (k[0], -1 if k[1] is None else k[1], k[2]))
        trials = []
        for key in keys:
            for i, a in enumerate(systems):
                for b in systems[i + 1 :]:
                    trials.append(Trial(study=self, clip_a=clips[(a.pk, key, False)], clip_b=clips[(b.pk, key, False)]))
                trials.append(
                    Trial(
                        study=self,
                        clip_a=clips[(a.pk, key, False)],
                        clip_b=clips[(a.pk, key, True)],
                        is_gold=True,
                    )
                )
        Trial.objects.bulk_create(trials)

    # --- volunteers ----------------------------------------------------------------------------
    def plan_for(self, rng: random.Random) -> list[dict]:
        """A volunteer's trials: the regular trials with the fewest votes so far (balanced
        coverage), gold trials mixed in at ``gold_rate``, in random order, each with a random side."""
        n_gold = self.gold_per_participant
        regular = list(
            self.trials.filter(is_gold=False)
            .annotate(n=Count("votes", filter=Q(votes__participant__excluded=False, votes__participant__pilot=False)))
            .order_by("n", "?")
            .values_list("pk", "clip_a_id", "clip_b_id")[: self.trials_per_participant - n_gold]
        )
        gold = list(self.trials.filter(is_gold=True).order_by("?").values_list("pk", "clip_a_id", "clip_b_id")[:n_gold])
        plan = []
        for (t, a, b), is_gold in [(t, False) for t in regular] + [(t, True) for t in gold]:
            left, right = (a, b) if rng.random() < 0.5 else (b, a)
            # "good": the clean clip of a gold trial (clip_a); the plan never leaves the server
            plan.append({"trial": t, "left": left, "right": right, "gold": is_gold, "good": a if is_gold else None})
        rng.shuffle(plan)
        return plan

    def hashed(self, value: str) -> str:
        """IPs and user agents are kept only as keyed hashes, salted per study (tell repeats
        apart, never recover the value)."""
        key = f"{settings.SECRET_KEY}:study:{self.pk}".encode()
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def gold_trials(trials: int, rate: float) -> int:
    """Gold trials in a plan of ``trials`` at ``rate``: at least one when the rate is above 0 (4 x 0.1
    rounds to 0, and the welcome page promises attention checks), and at least one regular trial
    (the forms ask for two or more trials when the rate is above 0)."""
    if rate <= 0 or trials < 2:
        return 0
    # half rounds up, as the study form's script (studies/new.js) does it: Python's round() would
    # make 2.5 into 2
    return min(trials - 1, max(1, math.floor(trials * rate + 0.5)))


class System(models.Model):
    """One of the things compared: the base backbone, or an experiment's checkpoint."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="systems")
    label = models.CharField(max_length=80)
    backbone = models.CharField(max_length=40, default="tiny")
    experiment = models.ForeignKey("experiments.Experiment", null=True, blank=True, on_delete=models.PROTECT)
    checkpoint = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self):
        return self.label

    def checkpoint_path(self) -> Path | None:
        if self.experiment_id is None:
            return None
        return self.experiment.checkpoint_dir(self.checkpoint)


class Clip(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="clips")
    system = models.ForeignKey(System, on_delete=models.CASCADE, related_name="clips")
    prompt = models.TextField()
    seed = models.IntegerField()
    degraded = models.BooleanField(default=False)  # a gold trial's visibly damaged copy
    token = models.CharField(max_length=40, unique=True, default=new_token)  # the opaque file name
    # image-to-video: the index of its scene in the study's image set, and the opaque name of that
    # scene's first frame (``<frame>.png``, shared by every clip of the scene: it tells no system)
    scene = models.IntegerField(null=True, blank=True)
    frame = models.CharField(max_length=40, blank=True)
    duration = models.FloatField(default=0.0)  # seconds: the trial page's minimum watch time comes from it

    def save_video(self, video, fps: int) -> None:
        """The mp4 volunteers see and the native frames the reward sources score (never served)."""
        from vpo import video as video_io

        video_io.save_video(video, self.study.media_dir, self.token, fps)
        self.duration = len(video) / fps
        self.save()

    @property
    def path(self) -> Path:
        return self.study.media_dir / f"{self.token}.mp4"

    def frames(self):
        from vpo import video as video_io

        return video_io.load_frames(self.study.media_dir / f"{self.token}.npy")

    def url(self) -> str:
        return reverse("studies:clip", args=[self.study.token, self.token])

    @property
    def pairing_key(self) -> tuple[str, int | None, int]:
        """What the two clips of a trial share: prompt, scene (image-to-video) and seed."""
        return (self.prompt, self.scene, self.seed)

    @property
    def frame_path(self) -> Path:
        return self.study.media_dir / f"{self.frame}.png"

    def frame_url(self) -> str:
        """The first frame it was conditioned on ("" for text-to-video)."""
        return reverse("studies:frame", args=[self.study.token, self.frame]) if self.frame else ""


class Trial(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="trials")
    clip_a = models.ForeignKey(Clip, on_delete=models.CASCADE, related_name="+")
    clip_b = models.ForeignKey(Clip, on_delete=models.CASCADE, related_name="+")
    is_gold = models.BooleanField(default=False)  # clip_b is clip_a degraded: choosing it fails


def partly_loaded(model, **values):
    """A ``model`` instance as the database gave it, with only ``values`` loaded (the others are
    deferred: they load on access, and ``save()`` writes only the loaded ones)."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]  # from_db wants field order
    return model.from_db(connection.alias, names, [values[name] for name in names])


class Participant(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="participants")
    token = models.CharField(max_length=40, unique=True, default=new_token)
    plan = models.JSONField(default=list)  # [{"trial", "left", "right", "gold", "good"}, ...] in order
    prolific_pid = models.CharField(max_length=64, blank=True)
    prolific_study_id = models.CharField(max_length=64, blank=True)
    prolific_session_id = models.CharField(max_length=64, blank=True)
    ip_hash = models.CharField(max_length=64)
    ua_hash = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)
    completed = models.DateTimeField(null=True, blank=True)
    # left out of the results: failed a gold trial (exclusion_reason says which) or excluded by the
    # researcher (manual_reason says why; reversible); kept, never deleted
    excluded = models.BooleanField(default=False)
    exclusion_reason = models.CharField(max_length=200, blank=True)
    excluded_manually = models.BooleanField(default=False)
    manual_reason = models.CharField(max_length=200, blank=True)
    pilot = models.BooleanField(default=False)  # joined by the pilot link: votes kept apart from the data
    # the trial whose page was served last, and the earliest time a vote on it is accepted (the
    # clips' duration after the page was served, times VPO_MIN_WATCH_FRACTION): kept on the server
    watching = models.BigIntegerField(null=True, blank=True)
    vote_after = models.DateTimeField(null=True, blank=True)
    # issued with the last vote, never to an excluded participant; one per participant, so that a
    # code passed around proves nothing (the researcher matches codes against votes.csv)
    completion_code = models.CharField(max_length=20, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["study", "prolific_pid"], condition=~Q(prolific_pid=""), name="one_participant_per_prolific_pid"
            )
        ]

    def exclude(self, reason: str) -> None:
        """The researcher leaves this participant's votes out of the results (``reason`` shown there)."""
        Participant.objects.filter(pk=self.pk).update(excluded=True, excluded_manually=True, manual_reason=reason)

    def include(self) -> None:
        """Takes a manual exclusion back; a failed gold trial still excludes."""
        Participant.objects.filter(pk=self.pk).update(
            excluded=models.Case(models.When(exclusion_reason="", then=False), default=True),
            excluded_manually=False,
            manual_reason="",
        )

    @property
    def reasons(self) -> list[str]:
        """Why this participant is excluded (empty if not)."""
        return [
            r
            for r in (self.exclusion_reason, self.manual_reason and f"excluded by the researcher: {self.manual_reason}")
            if r
        ]

    def next_item(self, answered: set[int]) -> dict | None:
        return next((item for item in self.plan if item["trial"] not in answered), None)

    def mark_completed(self) -> None:
        """Completed now, with a completion code of their own unless they were excluded."""
        if self.completed is None:
            code = models.Case(
                models.When(excluded=True, then=models.Value("")), default=models.Value(new_completion_code())
            )
            Participant.objects.filter(pk=self.pk, completed__isnull=True).update(
                completed=timezone.now(), completion_code=code
            )

    def served(self, trial: int, clips: list[Clip]) -> None:
        """The page of ``trial`` was served now: votes on it count from the clips' duration on
        (times VPO_MIN_WATCH_FRACTION). A reload keeps the first time: it never shortens the wait."""
        wait = settings.VPO_MIN_WATCH_FRACTION * max(c.duration for c in clips)
        Participant.objects.filter(pk=self.pk).exclude(watching=trial).update(
            watching=trial, vote_after=timezone.now() + dt.timedelta(seconds=wait)
        )

    def watched(self, trial: int) -> bool:
        """Whether a vote on ``trial`` now comes after its minimum watch time (always, with
        VPO_MIN_WATCH_FRACTION = 0)."""
        if settings.VPO_MIN_WATCH_FRACTION <= 0:
            return True
        return self.watching == trial and self.vote_after is not None and timezone.now() >= self.vote_after

    @classmethod
    def for_vote(cls, token: str, ptoken: str) -> Participant | None:
        """The participant ``ptoken`` of study ``token`` with only what a vote needs loaded (the other
        fields load on access, as with ``.only()``). The vote endpoint is a study's hot path, so this
        is one written-out query: the same lookup through ``select_related`` costs several times the
        CPU (measured in docs/votes.md, benchmarks/vote_queries.py)."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT p.id, p.plan, p.completed, p.watching, p.vote_after, s.id, s.status, s.allow_tie"
                f" FROM {cls._meta.db_table} p JOIN {Study._meta.db_table} s ON s.id = p.study_id"
                " WHERE p.token = %s AND s.token = %s",
                [ptoken, token],
            )
            row = cursor.fetchone()
        if row is None:
            return None
        pk, plan, completed, watching, vote_after, study_pk, status, allow_tie = row
        if isinstance(plan, str):  # JSON arrives as text from both backends' raw cursors
            plan = json.loads(plan)
        if isinstance(vote_after, str):  # SQLite's raw cursor may give text...
            vote_after = parse_datetime(vote_after)
        if vote_after is not None and timezone.is_naive(vote_after):  # ...or a naive UTC time
            vote_after = timezone.make_aware(vote_after, dt.UTC)
        participant = partly_loaded(
            cls,
            id=pk,
            study_id=study_pk,
            token=ptoken,
            plan=plan,
            completed=completed,
            watching=watching,
            vote_after=vote_after,
        )
        participant.study = partly_loaded(Study, id=study_pk, token=token, status=status, allow_tie=allow_tie)
        return participant


class Choice(models.TextChoices):
    LEFT = "left"
    RIGHT = "right"
    TIE = "tie"


# the trial page's measurements a vote carries (Vote's fields of the same names)
TIMING = ("onset_ms", "reaction_ms", "plays", "hidden_count", "hidden_ms")


class Vote(models.Model):
    participant = models.ForeignKey(Participant, on_delete=models.CASCADE, related_name="votes")
    trial = models.ForeignKey(Trial, on_delete=models.CASCADE, related_name="votes")
    choice = models.CharField(max_length=5, choices=Choice.choices)
    left = models.ForeignKey(Clip, on_delete=models.CASCADE, related_name="+")  # what was shown on the left
    chosen = models.ForeignKey(Clip, null=True, on_delete=models.CASCADE, related_name="+")  # None for a tie
    created = models.DateTimeField(auto_now_add=True)
    # what the trial page measured (trial.js), null when it sent nothing: display onset (ms from the
    # page's start to both clips playing), reaction time (ms from that onset to the vote), how many
    # times both clips had played through, and how often and how long the page was hidden meanwhile
    onset_ms = models.PositiveIntegerField(null=True, blank=True)
    reaction_ms = models.PositiveIntegerField(null=True, blank=True)
    plays = models.PositiveIntegerField(null=True, blank=True)
    hidden_count = models.PositiveIntegerField(null=True, blank=True)
    hidden_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["participant", "trial"], name="one_vote_per_trial")]

    @classmethod
    def store(cls, participant_id: int, item: dict, choice: str, timing: dict | None = None) -> dict[int, int | None]:
        """Store a vote on plan ``item`` unless this participant has one on that trial, then return
        all their stored votes (trial id -> chosen clip id, None for a tie): the first vote wins.
        INSERT ... ON CONFLICT DO NOTHING: the constraint refuses a second vote without an error, so
        no transaction or savepoint is needed and the insert commits by itself (``bulk_create`` adds
        a transaction; with the ORM's query building this costs several times the CPU: docs/votes.md,
        benchmarks/vote_queries.py)."""
        chosen = {"left": item["left"], "right": item["right"], "tie": None}[choice]
        timing = timing or {}
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {cls._meta.db_table} (participant_id, trial_id, choice, left_id, chosen_id, created,"
                f" {', '.join(TIMING)}) VALUES (%s, %s, %s, %s, %s, %s, {', '.join(['%s'] * len(TIMING))})"
                " ON CONFLICT (participant_id, trial_id) DO NOTHING",
                [participant_id, item["trial"], choice, item["left"], chosen, timezone.now()]
                + [timing.get(name) for name in TIMING],
            )
            return cls.stored(participant_id, cursor)

    @classmethod
    def stored(cls, participant_id: int, cursor=None) -> dict[int, int | None]:
        """A participant's stored votes: trial id -> chosen clip id (None for a tie)."""
        if cursor is None:
            with connection.cursor() as cursor:
                return cls.stored(participant_id, cursor)
        cursor.execute(
            f"SELECT trial_id, chosen_id FROM {cls._meta.db_table} WHERE participant_id = %s", [participant_id]
        )
        return dict(cursor.fetchall())


class RewardModelStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class RewardModel(models.Model):
    """A reward model trained from a study's votes (``jobs.train_reward_model`` → ``vpo reward-model
    train``); once finished, its owner can launch runs with reward source ``learned`` on it."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reward_models")
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="reward_models")
    name = models.CharField(max_length=120)
    status = models.CharField(max_length=10, choices=RewardModelStatus.choices, default=RewardModelStatus.QUEUED)
    error = models.TextField(blank=True)
    heads = models.JSONField(default=list)  # its dimensions
    figures = models.JSONField(null=True, blank=True)  # held-out accuracy (learned and metrics), split sizes
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)  # while running (webapp/heartbeats.py)

    objects = StudyQuerySet.as_manager()  # visible_to: the owner's, or all for staff

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return f"#{self.pk} {self.name}"

    @property
    def directory(self) -> Path:
        return Path(settings.MEDIA_ROOT) / "reward_models" / str(self.pk)

    @property
    def download_name(self) -> str:
        """The folder its zip unpacks to, which a run exported from this server names as its reward_model."""
        return f"reward-model-{self.pk}"

    @property
    def label(self) -> str:
        """How the launch form lists it."""
        return f"#{self.pk} {self.name} ({', '.join(self.heads)})"


class GuidedSampling(models.Model):
    """Flow-NRG on the "Guided sampling" page: a few seeds of one prompt sampled without and with
    a reward model's guidance (same seeds), with the user's weight per dimension
    (``jobs.guided_sample`` → ``vpo.guidance``)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="guided_samplings")
    reward_model = models.ForeignKey(RewardModel, on_delete=models.CASCADE, related_name="samplings")
    prompt = models.CharField(max_length=300)
    seed = models.IntegerField(default=0)
    seeds = models.PositiveIntegerField(default=2)  # videos: seeds seed, seed + 1, ...
    steps = models.PositiveIntegerField(default=20)  # denoising steps (CFG 4)
    weights = models.JSONField(default=dict)  # {dimension: weight}
    status = models.CharField(max_length=10, choices=RewardModelStatus.choices, default=RewardModelStatus.QUEUED)
    error = models.TextField(blank=True)
    rewards = models.JSONField(null=True, blank=True)  # {"unguided": [...], "guided": [...]}: the guiding reward r
    created = models.DateTimeField(auto_now_add=True)
    heartbeat = models.DateTimeField(null=True, blank=True)  # while running (webapp/heartbeats.py)

    objects = StudyQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]

    @property
    def media_dir(self) -> Path:
        return Path(settings.MEDIA_ROOT) / "guided" / str(self.pk)

    def rows(self) -> list[dict]:
        """Per seed: its unguided and guided video and their rewards (for the page)."""
        rewards = self.rewards or {}
        return [
            {
                "seed": self.seed + i,
                **{
                    kind: {
                        "url": reverse("studies:guided_video", args=[self.pk, kind, i]),
                        "reward": (rewards.get(kind) or [None] * self.seeds)[i],
                    }
                    for kind in ("unguided", "guided")
                },
            }
            for i in range(self.seeds)
        ]
