"""Experiment pages: list, new / clone / demo, dashboard, data endpoints, cancel, export, compare,
evaluate, and the run's media. Every view goes through ``visible_or_404``: another user's
experiment is indistinguishable from one that does not exist."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import FileResponse, Http404, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from vpo.backbones import I2V_BACKBONES
from vpo.train.keys import DASHBOARD, REWARD_MEAN
from webapp.experiments.forms import PRESETS, EvaluationForm, ExperimentForm, PhysMasterForm, validated_config
from webapp.experiments.leaderboard import leaderboard, leaderboard_csv, studies_of
from webapp.experiments.models import Evaluation, Experiment, Status
from webapp.experiments.runs import RunDetailsForm, delete_with_files, download_name, filtered, sort_links, zip_folder
from webapp.experiments.tasks import enqueue, evaluate_checkpoint, evaluate_checkpoint_vbench
from webapp.media import ranged_file_response

# the demo on the list page: small enough to finish in a few minutes on a 2-core CPU
DEMO_CONFIG = {
    "backbone": "tiny",
    "reward": "metrics",
    "dimension": "temporal",
    "algorithm": "online-dpo",
    "prompts": "train",
    "steps": 30,
    "num_candidates": 6,
    "heldout_every": 5,
    "checkpoint_every": 10,
}


def enqueue_on_commit(experiment: Experiment) -> bool:
    """Sends the run's task once its row is committed (at once under autocommit, as a view runs);
    False if the broker refused it (the row is then failed with the reason, ``tasks.enqueue``)."""
    sent: list[bool] = []
    transaction.on_commit(lambda: sent.append(enqueue(experiment)))
    return sent != [False]


def visible_or_404(request, pk) -> Experiment:
    if not str(pk).isdecimal():  # ?clone=abc: no such experiment, not a 500
        raise Http404("no such experiment")
    return get_object_or_404(Experiment.objects.visible_to(request.user), pk=pk)


@login_required
def experiment_list(request):
    """The runs table: search, filters and sort from the query string (``runs.filtered``)."""
    mine = Experiment.objects.visible_to(request.user)
    experiments, applied = filtered(mine.select_related("owner"), request.GET)
    return render(
        request,
        "experiments/list.html",
        {
            "experiments": experiments[:500],
            "applied": applied,
            "sort_links": sort_links(applied),
            "statuses": Status.values,
            "groups": sorted(set(mine.exclude(run_group="").values_list("run_group", flat=True))),
            "any": mine.exists(),
        },
    )


@login_required
@require_POST
def edit(request, pk):
    """Rename a run, set its tags, group and notes (the detail page's form)."""
    experiment = visible_or_404(request, pk)
    form = RunDetailsForm(request.POST, instance=experiment)
    if form.is_valid():
        form.save()
        return redirect(experiment)
    return render(request, "experiments/edit.html", {"experiment": experiment, "form": form}, status=400)


@login_required
@require_POST
def archive(request, pk):
    experiment = visible_or_404(request, pk)
    experiment.archived = request.POST.get("archived", "1") == "1"
    experiment.save(update_fields=["archived"])
    return redirect(experiment)


BULK_ACTIONS = ("compare", "archive", "unarchive", "group", "delete")


@login_required
@require_POST
def bulk(request):
    """What the runs table does to the runs ticked in it: compare, archive, unarchive, set their
    group, or delete them with their files. A mistake (nothing ticked, no confirmation, a run
    still going) is said above the table and nothing is changed."""
    try:
        ids = sorted({int(i) for i in request.POST.getlist("ids")})
    except ValueError:
        return HttpResponse("ids must be experiment numbers", status=400)
    action = request.POST.get("action")
    if action not in BULK_ACTIONS:
        return HttpResponse(f"action must be one of {', '.join(BULK_ACTIONS)}", status=400)
    # back to the table as it was filtered and sorted (re-encoded: only a query string comes back)
    back = redirect(f"{reverse('experiments:list')}?{QueryDict(request.POST.get('query', '')).urlencode()}")
    if not ids:
        messages.error(request, f"Tick one or more runs to {action} them.")
        return back
    experiments = list(Experiment.objects.visible_to(request.user).filter(pk__in=ids))
    if len(experiments) != len(ids):
        raise Http404("no such experiment")
    if action == "compare":
        return redirect(f"{reverse('experiments:compare')}?{urlencode([('ids', i) for i in ids])}")
    names = ", ".join(f"#{e.pk}" for e in experiments)
    if action in ("archive", "unarchive"):
        Experiment.objects.filter(pk__in=ids).update(archived=action == "archive")
        messages.success(request, f"{action.capitalize()}d {names}.")
    elif action == "group":
        group = request.POST.get("group", "").strip()
        longest = Experiment._meta.get_field("run_group").max_length
        if len(group) > longest:
            messages.error(request, f"A group name has at most {longest} characters.")
            return back
        Experiment.objects.filter(pk__in=ids).update(run_group=group)
        messages.success(
            request, f"Group of {names} set to {group!r}." if group else f"{names} taken out of their group."
        )
    else:  # delete
        going = [f"#{e.pk} ({e.status})" for e in experiments if not e.is_done]
        if going:
            messages.error(request, f"Nothing deleted: cancel {', '.join(going)} first.")
        elif request.POST.get("confirm") != "delete":
            messages.error(request, "Nothing deleted: tick the box to confirm (runs and their files go for good).")
        else:
            for experiment in experiments:
                delete_with_files(experiment)
            messages.success(request, f"Deleted {names} and their files.")
    return back


@login_required
@require_POST
def delete(request, pk):
    """The run and its files, once it has ended (a queued or running one is cancelled first)."""
    experiment = visible_or_404(request, pk)
    if not experiment.is_done:
        return HttpResponse(f"run #{experiment.pk} is {experiment.status}: cancel it first, then delete it", status=409)
    if request.POST.get("confirm") != "delete":
        return HttpResponse("tick the box to confirm: the run and its files are deleted for good", status=400)
    delete_with_files(experiment)
    return redirect("experiments:list")


@login_required
def download(request, pk):
    """The run folder (metrics, videos, checkpoints) as a zip, or one checkpoint (``?checkpoint=``)."""
    experiment = visible_or_404(request, pk)
    checkpoint = request.GET.get("checkpoint")
    if checkpoint is not None:
        if checkpoint not in experiment.checkpoints():
            raise Http404("no such checkpoint")
        folder, what = experiment.checkpoint_dir(checkpoint), checkpoint.replace("/", "-")
    else:
        folder, what = experiment.run_dir, "run"
    if not folder.is_dir():
        raise Http404("this run has no files yet")
    name = download_name(experiment, what)
    return FileResponse(zip_folder(folder, name.removesuffix(".zip")), as_attachment=True, filename=name)


@login_required
def experiment_new(request):
    source = None
    if "clone" in request.GET:
        source = visible_or_404(request, request.GET["clone"])
    preset = request.GET.get("preset")
    if preset is not None and preset not in PRESETS:
        raise Http404(f"no preset {preset!r}; presets: {', '.join(PRESETS)}")
    if request.method == "POST":
        form = ExperimentForm(request.POST, request.FILES, user=request.user)
        if form.is_valid():
            # committed first (the worker must find the row), then sent; a send that fails marks
            # the row failed with the reason, so no "queued" row is ever left without its message
            experiment = Experiment.objects.create(
                owner=request.user, name=form.cleaned_data["name"], config=form.config, prompts_text=form.prompts_text
            )
            if enqueue_on_commit(experiment):
                return redirect(experiment)
            form.add_error(None, f"The run could not be queued: {experiment.error}. Try again in a moment.")
            return render(request, "experiments/new.html", page(form, source, None), status=503)
    elif preset is not None:
        name, config = PRESETS[preset]
        form = ExperimentForm(initial={"name": name}, config=config(), user=request.user)
    else:
        initial = {"name": f"{source.name} (copy)"} if source else {}
        form = ExperimentForm(initial=initial, config=source.config if source else None, user=request.user)
    return render(request, "experiments/new.html", page(form, source, preset), status=400 if form.errors else 200)


def page(form: ExperimentForm, source: Experiment | None, preset: str | None) -> dict:
    """The new-experiment page's context: the form, the run it was cloned from, the preset it holds."""
    return {"form": form, "source": source, "preset": preset, "presets": {k: v[0] for k, v in PRESETS.items()}}


@login_required
def experiment_new_physmaster(request):
    """PhysMaster's three stages as one run: SFT, online DPO of the LoRA, online DPO of the head,
    each from the one before (``vpo physmaster``), streamed to one page."""
    initial = {"name": "PhysMaster: three stages (tiny-i2v)"}
    if "clone" in request.GET:  # another PhysMaster run's settings
        source = visible_or_404(request, request.GET["clone"])
        initial = {"name": f"{source.name} (copy)", **(source.physmaster or {})}
    form = PhysMasterForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        experiment = Experiment.objects.create(
            owner=request.user, name=form.cleaned_data["name"], config=form.stage_two, physmaster=form.config
        )
        if enqueue_on_commit(experiment):
            return redirect(experiment)
        form.add_error(None, f"The run could not be queued: {experiment.error}. Try again in a moment.")
        return render(request, "experiments/physmaster.html", {"form": form}, status=503)
    return render(request, "experiments/physmaster.html", {"form": form}, status=400 if form.errors else 200)


@login_required
@require_POST
def demo(request):
    experiment = Experiment.objects.create(
        owner=request.user, name="Demo: online DPO on temporal (tiny)", config=validated_config(DEMO_CONFIG)
    )
    if not enqueue_on_commit(experiment):
        return HttpResponse(f"The demo could not be queued: {experiment.error}", status=503, content_type="text/plain")
    return redirect(experiment)


@login_required
def experiment_detail(request, pk):
    experiment = visible_or_404(request, pk)
    checkpoints = experiment.checkpoints()
    i2v = experiment.config["backbone"] in I2V_BACKBONES  # vpo eval samples text prompts only
    return render(
        request,
        "experiments/detail.html",
        {
            "experiment": experiment,
            "details_form": RunDetailsForm(instance=experiment),
            "checkpoints": checkpoints,
            "config_rows": sorted(experiment.config.items()),
            "evaluations": experiment.evaluations.all(),
            "evaluation_form": (
                EvaluationForm(checkpoints=checkpoints, backbone=experiment.config["backbone"])
                if checkpoints and not i2v
                else None
            ),
            "image_to_video": i2v,
            "physmaster_rows": sorted((experiment.physmaster or {}).items()),
            "report": report.read_text() if (report := experiment.run_dir / "run" / "report.md").is_file() else "",
            "studies": studies_of(experiment),
            "charts": DASHBOARD,  # the dashboard's charts and the metric names they draw (vpo.train.keys)
        },
    )


@login_required
def leaderboard_view(request):
    """Every evaluated run the user sees, as OnlineVPO's Table 3 (``webapp/experiments/leaderboard.py``);
    ``?format=csv`` downloads it."""
    tables = leaderboard(request.user)
    if request.GET.get("format") == "csv":
        response = HttpResponse(leaderboard_csv(tables), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="leaderboard.csv"'
        return response
    if request.GET.get("format") not in (None, "html"):
        return HttpResponse("format must be csv or html", status=400)
    return render(request, "experiments/leaderboard.html", {"tables": tables})


@login_required
def metrics_json(request, pk):
    """Columnar metric points after ``?after=STEP``: {steps, wall, series: {name: [...]}}."""
    experiment = visible_or_404(request, pk)
    try:
        after = int(request.GET.get("after", -1))
    except ValueError:
        return JsonResponse({"error": "after must be an integer step"}, status=400)
    points = list(experiment.points.filter(step__gt=after).values_list("step", "wall", "values"))
    names = sorted({k for _, _, values in points for k in values})
    return JsonResponse(
        {
            "steps": [p[0] for p in points],
            "wall": [round(p[1], 3) for p in points],
            "series": {name: [p[2].get(name) for p in points] for name in names},
        }
    )


@login_required
def samples_json(request, pk):
    experiment = visible_or_404(request, pk)
    return JsonResponse({"samples": [s.as_event() for s in experiment.samples.all()]})


@login_required
@require_POST
def cancel(request, pk):
    experiment = visible_or_404(request, pk)
    experiment.request_cancel()
    if request.headers.get("Accept") == "application/json":  # the dashboard's fetch: stay on the page
        return JsonResponse(experiment.status_payload())
    return redirect(experiment)


@login_required
@require_POST
def continue_run(request, pk):
    """Go on with a run its held-out alarm stopped, the alarm switched off (``stop_heldout`` is among
    what a resumed run may change, ``RESUME_MAY_CHANGE``): the run goes back to the queue as paused and
    resumes from its last checkpoint to its planned steps. Anything else is refused with a 400."""
    experiment = visible_or_404(request, pk)
    if experiment.physmaster is not None:
        return HttpResponse("a PhysMaster chain has no held-out alarm to switch off", status=400)
    # one conditional update: two clicks (or two tabs) send the run once
    config = {**experiment.config, "stop_heldout": "none"}
    taken = (
        Experiment.objects.filter(pk=experiment.pk, status=Status.FINISHED)
        .exclude(stopped_reason="")
        .update(config=config, stopped_reason="", finished=None)
    )
    if not taken:
        return HttpResponse("only a finished run that its held-out alarm stopped can continue", status=400)
    experiment.refresh_from_db()
    experiment.set_status(Status.PAUSED)  # saved and pushed: the page shows it waiting for a worker
    enqueue_on_commit(experiment)
    return redirect(experiment)


@login_required
def export_config(request, pk):
    experiment = visible_or_404(request, pk)
    response = HttpResponse(experiment.export_toml(), content_type="application/toml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="experiment-{experiment.pk}.toml"'
    return response


@login_required
def export_prompts(request, pk):
    experiment = visible_or_404(request, pk)
    if not experiment.prompts_text:
        raise Http404("this experiment uses a built-in prompt set")
    response = HttpResponse(experiment.prompts_text, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="prompts.txt"'
    return response


@login_required
def compare(request):
    try:
        ids = sorted({int(i) for i in request.GET.getlist("ids")})
    except ValueError:
        return HttpResponse("ids must be experiment numbers", status=400)
    experiments = list(Experiment.objects.visible_to(request.user).filter(pk__in=ids))
    if len(experiments) != len(ids):
        raise Http404("no such experiment")
    if len(experiments) < 2:
        return render(
            request, "experiments/compare.html", {"error": "pick two or more experiments to compare"}, status=400
        )
    keys = sorted({k for e in experiments for k in e.config})
    differing = [
        (k, [e.config.get(k) for e in experiments])
        for k in keys
        if len({repr(e.config.get(k)) for e in experiments}) > 1
    ]
    return render(
        request,
        "experiments/compare.html",
        {
            "experiments": experiments,
            "differing": differing,
            "ids": [e.pk for e in experiments],
            "names": [e.name for e in experiments],
            "groups": [e.run_group for e in experiments],
            "has_groups": any(e.run_group for e in experiments),
            "default_metric": REWARD_MEAN,
        },
    )


@login_required
@require_POST
def evaluate(request, pk):
    experiment = visible_or_404(request, pk)
    if experiment.config["backbone"] in I2V_BACKBONES:
        return HttpResponse(
            f"cannot evaluate: vpo eval samples text prompts, and backbone {experiment.config['backbone']!r} is "
            "image-to-video (it needs a first frame per prompt)",
            status=400,
        )
    form = EvaluationForm(request.POST, checkpoints=experiment.checkpoints(), backbone=experiment.config["backbone"])
    if not form.is_valid():
        return HttpResponse(f"cannot evaluate: {form.errors.as_text()}", status=400)
    evaluation = Evaluation.objects.create(experiment=experiment, **form.cleaned_data)
    # the official VBench runs on workers of queue "vbench" (its virtualenv and weights live there)
    (evaluate_checkpoint_vbench if evaluation.suite == "vbench" else evaluate_checkpoint).delay_on_commit(evaluation.pk)
    return redirect(experiment)


@login_required
def media(request, pk, path):
    """A file of the run (a sample's mp4), to its owner only, with HTTP Range for seeking."""
    experiment = visible_or_404(request, pk)
    if "\x00" in path:  # no file name holds one; pathlib would raise
        raise Http404("no such file")
    root = experiment.run_dir.resolve()
    file = (root / path).resolve()
    if not file.is_relative_to(root) or not file.is_file():
        raise Http404("no such file")
    return ranged_file_response(request, file)
