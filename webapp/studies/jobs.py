"""What a worker does for the studies app, as functions of ids (called by ``tasks.py``): render a
study's clips and open it; analyse the reward sources against the votes. ``vpo`` is imported
inside the functions (the web process imports this module and stays torch-free)."""

from __future__ import annotations

import logging

from django.db import models
from django.utils import timezone

from webapp.studies.models import Clip, Study, StudyStatus, System
from webapp.studies.results import human_groups

log = logging.getLogger(__name__)


def render(study_id: int) -> None:
    """Sample every system's clips with paired seeds, make the gold copies, build the trials, open
    the study. Progress is kept in ``rendered`` / ``to_render``; a failure is shown on the page."""
    from vpo.studies import degrade, render_system

    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return
    systems = list(study.systems.all())
    prompts = study.prompt_list()
    jobs = [(p, study.seed + k) for p in prompts for k in range(study.videos_per_prompt)]
    Study.objects.filter(pk=study.pk).update(to_render=len(jobs) * len(systems), rendered=0)
    study.media_dir.mkdir(parents=True, exist_ok=True)
    try:
        for system in systems:

            def saved(job_index: int, video, fps: int, system: System = system) -> None:  # type: ignore[no-untyped-def]
                prompt, seed = jobs[job_index]
                clip = Clip(study=study, system=system, prompt=prompt, seed=seed)
                clip.save_video(video, fps)
                gold = Clip(study=study, system=system, prompt=prompt, seed=seed, degraded=True)
                gold.save_video(degrade(video, seed), fps)
                Study.objects.filter(pk=study.pk).update(rendered=models.F("rendered") + 1)

            render_system(study.backbone_of(system), system.checkpoint_path(), jobs, saved)
        study.build_trials()
    except Exception as e:  # shown on the study page
        log.exception("study %s failed to render", study.pk)
        Study.objects.filter(pk=study.pk).update(status=StudyStatus.FAILED, error=f"{type(e).__name__}: {e}")
        return
    Study.objects.filter(pk=study.pk).update(status=StudyStatus.OPEN)


def analyse_feedback(study_id: int) -> None:
    """OnlineVPO Table 2 on study ``study_id``: how often each reward source ranks first the clip
    people preferred (MRR, Recall@k), per dimension. Stored in ``Study.feedback``."""
    import numpy as np

    from vpo.feedback import Group, analyse
    from vpo.rewards import GLOBAL, available_sources

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
            for dimension in (*source.dimensions, GLOBAL):
                try:
                    row = analyse(source, dimension, groups)
                    rows.append({k.replace("@", "_at_"): v for k, v in row.items()})  # template-friendly keys
                except ValueError as e:  # e.g. alignment unavailable for a prompt outside the world
                    rows.append({"source": source.name, "dimension": dimension, "error": str(e)})
    study.feedback = {"groups": len(groups), "rows": rows, "skipped": skipped, "at": timezone.now().isoformat()}
    study.save(update_fields=["feedback"])
