"""Researcher pages of studies: create, watch rendering, manage, results (live), CSV, preference
pairs, feedback analysis, reward models trained on the votes.
Another researcher's study is indistinguishable from one that does not exist."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from webapp.experiments.models import Experiment
from webapp.media import ranged_file_response
from webapp.studies.forms import BASE, ExclusionForm, GuidedSamplingForm, ManageForm, StudyForm
from webapp.studies.models import (
    GuidedSampling,
    Participant,
    RewardModel,
    RewardModelStatus,
    Study,
    StudyStatus,
    System,
)
from webapp.studies.results import folder_zip, pairs_zip, summarise, votes_csv
from webapp.studies.tasks import analyse_study_feedback, guided_sample, render_study, train_reward_model


def visible_or_404(request, pk) -> Study:
    return get_object_or_404(Study.objects.visible_to(request.user), pk=pk)


@login_required
def study_list(request):
    return render(request, "studies/list.html", {"studies": Study.objects.visible_to(request.user)})


@login_required
def study_new(request):
    form = StudyForm(request.POST or None, request.FILES or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        with transaction.atomic():
            study = Study.objects.create(
                owner=request.user,
                name=d["name"],
                prompts="\n".join(d["prompts"]),
                image_set=d["image_set"],
                videos_per_prompt=d["videos_per_prompt"],
                seed=d["seed"],
                question=d["question"],
                instructions=d["instructions"],
                allow_tie=d["allow_tie"],
                gold_rate=d["gold_rate"],
                votes_per_trial=d["votes_per_trial"],
                trials_per_participant=d["trials_per_participant"],
                completion_url=d["completion_url"],
            )
            for choice in d["systems"]:
                if choice == BASE:
                    System.objects.create(study=study, label="base", backbone=d["base_backbone"])
                else:
                    pk, checkpoint = choice.split(":")
                    experiment = Experiment.objects.visible_to(request.user).get(pk=pk)
                    System.objects.create(
                        study=study,
                        label=f"#{pk} {checkpoint}",
                        experiment=experiment,
                        backbone=experiment.config["backbone"],
                        checkpoint=checkpoint,
                    )
            render_study.delay_on_commit(study.pk)
        return redirect(study)
    return render(request, "studies/new.html", {"form": form}, status=400 if form.errors else 200)


@login_required
def study_detail(request, pk):
    study = visible_or_404(request, pk)
    link = request.build_absolute_uri(study.public_url())
    return render(
        request,
        "studies/detail.html",
        {
            "study": study,
            "link": link,
            # Prolific fills these placeholders in with each volunteer's ids
            "prolific_link": link
            + "?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}",
            "pilot_link": request.build_absolute_uri(study.pilot_url()),
            "trials": study.trials.filter(is_gold=False).count(),
            "systems": study.systems.all(),
            "manage": ManageForm(
                initial={
                    "votes_per_trial": study.votes_per_trial,
                    "trials_per_participant": study.trials_per_participant,
                }
            ),
        },
    )


@login_required
def progress(request, pk):
    study = visible_or_404(request, pk)
    return JsonResponse(
        {"status": study.status, "rendered": study.rendered, "to_render": study.to_render, "error": study.error}
    )


@login_required
@require_POST
def manage(request, pk):
    study = visible_or_404(request, pk)
    form = ManageForm(request.POST)
    if not form.is_valid():
        return HttpResponse(f"bad request: {form.errors.as_text()}", status=400)
    action = form.cleaned_data["action"]
    if action in ("close", "reopen"):
        if study.status not in (StudyStatus.OPEN, StudyStatus.CLOSED):
            return HttpResponse(f"a {study.status} study cannot be {action}d", status=409)
        study.status = StudyStatus.CLOSED if action == "close" else StudyStatus.OPEN
        study.save(update_fields=["status"])
    else:
        trials = form.cleaned_data["trials_per_participant"]
        if trials is not None and trials < 2 and study.gold_rate > 0:
            return HttpResponse("with gold trials each volunteer needs two or more trials (one is gold)", status=400)
        for field in ("votes_per_trial", "trials_per_participant"):
            if form.cleaned_data[field]:
                setattr(study, field, form.cleaned_data[field])
        study.save(update_fields=["votes_per_trial", "trials_per_participant"])
    return redirect(study)


@login_required
def results(request, pk):
    study = visible_or_404(request, pk)
    reward_models = RewardModel.objects.visible_to(request.user).filter(study=study)
    return render(
        request, "studies/results.html", {"study": study, "summary": summarise(study), "reward_models": reward_models}
    )


@login_required
@require_POST
def exclusion(request, pk, ptoken):
    """Exclude a participant by hand (with a reason) or take it back; the results follow at once."""
    study = visible_or_404(request, pk)
    participant = get_object_or_404(Participant, study=study, token=ptoken)
    form = ExclusionForm(request.POST)
    if not form.is_valid():
        return HttpResponse(f"bad request: {form.errors.as_text()}", status=400)
    if form.cleaned_data["action"] == "exclude":
        participant.exclude(form.cleaned_data["reason"])
    else:
        participant.include()
    return redirect(reverse("studies:results", args=[study.pk]) + "#participants")


@login_required
def results_json(request, pk):
    return JsonResponse(summarise(visible_or_404(request, pk)))


@login_required
def export_csv(request, pk):
    study = visible_or_404(request, pk)
    response = HttpResponse(votes_csv(study), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="study-{study.pk}-votes.csv"'
    return response


@login_required
@require_POST
def feedback(request, pk):
    study = visible_or_404(request, pk)
    analyse_study_feedback.delay(study.pk)
    return redirect("studies:results", pk=study.pk)


@login_required
def export_pairs(request, pk):
    study = visible_or_404(request, pk)
    response = HttpResponse(pairs_zip(study), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="study-{study.pk}-pairs.zip"'
    return response


@login_required
def reward_model_download(request, pk):
    """A finished reward model's folder as a zip (``reward-model-<pk>/``): what ``reward_model`` of
    a run exported from this server names (``Experiment.export_toml``), and ``vpo`` loads once unzipped."""
    rm = get_object_or_404(RewardModel.objects.visible_to(request.user), pk=pk, status=RewardModelStatus.FINISHED)
    response = HttpResponse(folder_zip(rm.directory, rm.download_name), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{rm.download_name}.zip"'
    return response


@login_required
@require_POST
def reward_model_new(request, pk):
    """Train a reward model on the study's votes (a job on the ``gpu`` queue)."""
    study = visible_or_404(request, pk)
    if not study.trials.filter(is_gold=False, votes__participant__excluded=False).exists():
        return HttpResponse("this study has no votes to learn from yet", status=409)
    with transaction.atomic():
        rm = RewardModel.objects.create(owner=request.user, study=study, name=f"votes of {study.name}"[:120])
        train_reward_model.delay_on_commit(rm.pk)
    return redirect("studies:results", pk=study.pk)


@login_required
def guided_new(request, pk):
    """The "Guided sampling" page of a finished reward model: a slider per dimension."""
    rm = get_object_or_404(RewardModel.objects.visible_to(request.user), pk=pk, status=RewardModelStatus.FINISHED)
    form = GuidedSamplingForm(request.POST or None, heads=rm.heads)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        with transaction.atomic():
            sampling = GuidedSampling.objects.create(
                owner=request.user,
                reward_model=rm,
                prompt=d["prompt"],
                seed=d["seed"],
                seeds=d["seeds"],
                steps=d["steps"],
                weights=form.weights(),
            )
            guided_sample.delay_on_commit(sampling.pk)
        return redirect("studies:guided", pk=sampling.pk)
    samplings = GuidedSampling.objects.visible_to(request.user).filter(reward_model=rm)[:20]
    return render(
        request,
        "studies/guided_new.html",
        {"rm": rm, "form": form, "samplings": samplings},
        status=400 if form.errors else 200,
    )


@login_required
def guided_detail(request, pk):
    sampling = get_object_or_404(GuidedSampling.objects.visible_to(request.user), pk=pk)
    return render(request, "studies/guided.html", {"sampling": sampling, "rm": sampling.reward_model})


@login_required
def guided_video(request, pk, kind, index):
    sampling = get_object_or_404(GuidedSampling.objects.visible_to(request.user), pk=pk)
    file = sampling.media_dir / f"{kind}-{index}.mp4"
    if kind not in ("unguided", "guided") or not file.is_file():
        raise Http404("no such video")
    return ranged_file_response(request, file)
