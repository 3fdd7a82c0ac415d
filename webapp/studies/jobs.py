"""What a worker does for the studies app, as functions of ids (called by ``tasks.py``): render a
study's clips and open it; analyse the reward sources against the votes; train a reward model on
the votes; sample with and without a reward model's guidance. ``vpo`` is imported
inside the functions (the web process imports this module and stays torch-free)."""

from __future__ import annotations

import logging

from django.db import models
from django.utils import timezone

from webapp.heartbeats import Beating, fail_stalled
from webapp.studies.models import (
    Clip,
    GuidedSampling,
    RewardModel,
    RewardModelStatus,
    Study,
    StudyStatus,
    System,
    new_token,
)
from webapp.studies.results import human_groups, study_pairs

log = logging.getLogger(__name__)


def render(study_id: int) -> None:
    """Sample every system's clips with paired seeds, make the gold copies, build the trials, open
    the study. Progress is kept in ``rendered`` / ``to_render``; a failure is shown on the page."""
    study = Study.objects.filter(pk=study_id).first()
    # gone, or a redelivered copy of a task that started already (a render that beat once has a
    # heartbeat: it is rendering elsewhere, or the reaper failed it when its worker died)
    if study is None or not Study.objects.filter(
        pk=study.pk, status=StudyStatus.RENDERING, heartbeat__isnull=True
    ).update(heartbeat=timezone.now()):
        return
    systems = list(study.systems.all())
    prompts = study.prompt_list()
    # (prompt, seed, scene): an image-to-video study's prompt i is scene i of its image set
    scenes = [(p, i if study.image_set else None) for i, p in enumerate(prompts)]
    jobs = [(p, study.seed + k, scene) for p, scene in scenes for k in range(study.videos_per_prompt)]
    Study.objects.filter(pk=study.pk).update(to_render=len(jobs) * len(systems), rendered=0)
    study.media_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Beating(Study.objects.filter(pk=study.pk, status=StudyStatus.RENDERING)):
            render_clips(study, systems, prompts, jobs)
    except Exception as e:  # shown on the study page
        log.exception("study %s failed to render", study.pk)
        Study.objects.filter(pk=study.pk).update(status=StudyStatus.FAILED, error=f"{type(e).__name__}: {e}")
        return
    Study.objects.filter(pk=study.pk, status=StudyStatus.RENDERING).update(status=StudyStatus.OPEN)


def render_clips(study: Study, systems: list[System], prompts: list[str], jobs: list[tuple]) -> None:
    """Every system's clip of every (prompt, seed, scene) job and its gold copy, then the trials."""
    from vpo.studies import degrade, render_system

    images, frames = None, {}
    if study.image_set:
        images, frames = first_frames(study, len(prompts))
    for system in systems:

        def saved(job_index: int, video, fps: int, system: System = system) -> None:  # type: ignore[no-untyped-def]
            prompt, seed, scene = jobs[job_index]
            frame = frames.get(scene, "")
            clip = Clip(study=study, system=system, prompt=prompt, seed=seed, scene=scene, frame=frame)
            clip.save_video(video, fps)
            gold = Clip(study=study, system=system, prompt=prompt, seed=seed, scene=scene, frame=frame, degraded=True)
            gold.save_video(degrade(video, seed), fps)
            Study.objects.filter(pk=study.pk).update(rendered=models.F("rendered") + 1)

        render_system(
            study.backbone_of(system),
            system.checkpoint_path(),
            [(p, s) for p, s, _ in jobs],
            saved,
            images=None if images is None else images[[scene for _, _, scene in jobs]],
        )
    study.build_trials()


def first_frames(study: Study, count: int):
    """The first ``count`` first frames of the study's image set, uint8 (count, H, W, 3), each also
    written as ``<token>.png`` for the trial page; returns them and scene -> token."""
    from vpo import video as video_io
    from vpo.data.prompts import read_image_prompts

    _, images = read_image_prompts(study.image_set)
    frames = {}
    for scene, image in enumerate(images[:count]):
        frames[scene] = new_token()
        video_io.write_image(image, study.media_dir / f"{frames[scene]}.png")
    return images[:count], frames


def analyse_feedback(study_id: int) -> None:
    """OnlineVPO Table 2 on study ``study_id``: how often each reward source ranks first the clip
    people preferred (MRR, Recall@k), per dimension. Stored in ``Study.feedback``."""
    import numpy as np

    from vpo.feedback import Group, analyse
    from vpo.rewards import GLOBAL, available_sources, prompt_problem

    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return
    groups = [
        Group(prompt, np.stack([c.frames() for c in clips]), chosen) for prompt, clips, chosen in human_groups(study)
    ]
    sources, skipped = available_sources()
    rows = []
    if groups:
        for source in sources:
            if problem := prompt_problem(source.name, [g.prompt for g in groups]):
                skipped[source.name] = problem  # e.g. physics on prompts that are not physics captions
                continue
            for dimension in (*source.dimensions, GLOBAL):
                try:
                    row = analyse(source, dimension, groups)
                    rows.append({k.replace("@", "_at_"): v for k, v in row.items()})  # template-friendly keys
                except ValueError as e:  # e.g. alignment unavailable for a prompt outside the world
                    rows.append({"source": source.name, "dimension": dimension, "error": str(e)})
    study.feedback = {"groups": len(groups), "rows": rows, "skipped": skipped, "at": timezone.now().isoformat()}
    study.save(update_fields=["feedback"])


def train_reward_model(reward_model_id: int) -> None:
    """Export the study's votes as pairs into the model's folder and train a reward model on them
    (``vpo.reward_model.train``); the held-out figures go to the row, a failure's reason too."""
    from vpo.device import pick_device
    from vpo.pairs import write_pairs
    from vpo.reward_model.train import train_reward_model as train

    rm = RewardModel.objects.filter(pk=reward_model_id).select_related("study").first()
    # gone, or a redelivered copy of a task that already ran
    # the first heartbeat with the claim: a running row without one would look stalled to the reaper
    if rm is None or not RewardModel.objects.filter(pk=rm.pk, status=RewardModelStatus.QUEUED).update(
        status=RewardModelStatus.RUNNING, heartbeat=timezone.now()
    ):
        return
    try:
        if rm.study is None:
            raise ValueError("its study was deleted")
        pairs = study_pairs(rm.study)
        if not pairs:
            raise ValueError(f"study {rm.study.name!r} has no votes to learn from yet")
        path = write_pairs(pairs, rm.directory / "pairs.jsonl")
        with Beating(RewardModel.objects.filter(pk=rm.pk, status=RewardModelStatus.RUNNING)):
            trained = train(path, rm.directory, device=pick_device(), progress=False)
    except Exception as e:  # shown on the results page
        log.exception("reward model %s failed", rm.pk)
        RewardModel.objects.filter(pk=rm.pk).update(
            status=RewardModelStatus.FAILED, error=f"{type(e).__name__}: {e}", finished=timezone.now()
        )
        return
    RewardModel.objects.filter(pk=rm.pk).update(
        status=RewardModelStatus.FINISHED,
        heads=trained.meta["heads"],
        figures=trained.meta["figures"],
        finished=timezone.now(),
    )


def guided_sample(sampling_id: int) -> None:
    """Flow-NRG for the "Guided sampling" page: the same seeds of one prompt sampled from the base
    model without and with the reward model's guidance (``vpo.guidance``), both saved as mp4, and
    the guiding reward r = sum_k w_k r_k of each final video."""
    sampling = GuidedSampling.objects.filter(pk=sampling_id).select_related("reward_model").first()
    if sampling is None or not GuidedSampling.objects.filter(pk=sampling.pk, status=RewardModelStatus.QUEUED).update(
        status=RewardModelStatus.RUNNING, heartbeat=timezone.now()
    ):
        return
    try:
        with Beating(GuidedSampling.objects.filter(pk=sampling.pk, status=RewardModelStatus.RUNNING)):
            rewards = guided_videos(sampling)
    except Exception as e:  # shown on the page
        log.exception("guided sampling %s failed", sampling.pk)
        GuidedSampling.objects.filter(pk=sampling.pk).update(
            status=RewardModelStatus.FAILED, error=f"{type(e).__name__}: {e}"
        )
        return
    GuidedSampling.objects.filter(pk=sampling.pk).update(status=RewardModelStatus.FINISHED, rewards=rewards)


def guided_videos(sampling: GuidedSampling) -> dict[str, list[float]]:
    """Both kinds of video of every seed saved as mp4; returns the guiding reward of each."""
    import torch

    from vpo import video as video_io
    from vpo.backbones import load_backbone
    from vpo.device import pick_device
    from vpo.guidance import RewardGuide
    from vpo.reward_model.model import load_reward_model

    backbone = load_backbone("tiny", device=pick_device())
    guide = RewardGuide(load_reward_model(sampling.reward_model.directory, backbone=backbone), sampling.weights)
    prompts = [sampling.prompt] * sampling.seeds
    seeds = [sampling.seed + i for i in range(sampling.seeds)]
    rewards = {}
    for kind, g in (("unguided", None), ("guided", guide)):
        videos, latents = backbone.sample(prompts, seeds, steps=sampling.steps, return_latents=True, guide=g)
        with torch.no_grad():
            rewards[kind] = guide.reward(latents, torch.zeros(len(latents)), prompts).tolist()
        for i, video in enumerate(videos.numpy()):
            video_io.save_video(video, sampling.media_dir, f"{kind}-{i}", backbone.spec.fps)
    return rewards


def stalled_jobs() -> list[str]:
    """The reaper's sweep of the studies app's jobs: renders, reward-model trainings and guided
    samplings whose worker is gone (a stale heartbeat) are marked failed; returns what it marked."""
    # a study waiting for its render has no heartbeat yet: only started renders can stall
    marked = [
        f"study {pk}"
        for pk in fail_stalled(
            Study.objects.filter(status=StudyStatus.RENDERING, heartbeat__isnull=False), status=StudyStatus.FAILED
        )
    ]
    marked += [
        f"reward model {pk}"
        for pk in fail_stalled(
            RewardModel.objects.filter(status=RewardModelStatus.RUNNING),
            status=RewardModelStatus.FAILED,
            finished=timezone.now(),
        )
    ]
    marked += [
        f"guided sampling {pk}"
        for pk in fail_stalled(
            GuidedSampling.objects.filter(status=RewardModelStatus.RUNNING), status=RewardModelStatus.FAILED
        )
    ]
    return marked
