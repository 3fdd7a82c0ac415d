"""Image-to-video in the web app (issue 17, item 6): the launch form's image-to-video backbones and
image prompt sets, the PhysMaster preset, the first frame beside each video of a run, and studies
whose trials pair only clips of the same first frame. Real PostgreSQL, Redis, Celery worker, Daphne
and Chromium, the real tiny-i2v."""

import csv
import io
import json
import time
from collections import Counter

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from tests.test_web_browser import browser, log_in, page, wait_for  # noqa: F401 (fixtures)
from webapp.experiments.forms import UPLOADED, ExperimentForm, physmaster_preset, validated_config
from webapp.experiments.models import Experiment, Sample
from webapp.experiments.sink import DatabaseSink
from webapp.studies.models import Clip, Study, StudyStatus, System
from webapp.studies.results import votes_csv

I2V = {"backbone": "tiny-i2v", "prompts": "physics-train", "heldout_prompts": "physics-heldout"}
PHYSICS = {**I2V, "reward": "physics", "dimension": "trajectory"}


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_data(**fields) -> dict:
    return {"name": "a run", **validated_config({}), **fields}


def errors_of(data: dict, files: dict | None = None) -> dict[str, str]:
    form = ExperimentForm(data, files)
    form.is_valid()
    return {name: " ".join(messages) for name, messages in form.errors.items()}


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("ines", password="pw-ines-long")


# --- the launch form -------------------------------------------------------------------------
def test_the_form_lists_image_to_video_backbones_and_image_prompt_sets_apart_from_the_text_ones(owner):
    html = logged_in(owner).get(reverse("experiments:new")).content.decode()
    assert '<optgroup label="Image-to-video (a first frame + a prompt)">' in html
    assert '<option value="tiny-i2v">tiny-i2v</option>' in html
    # no weights for wan-i2v here: greyed out with why, as the text-to-video real backbones are
    assert 'value="wan-i2v" disabled title="backbone &#x27;wan-i2v&#x27; has no weights' in html
    assert html.count('<optgroup label="Image prompt sets') == 2  # training and held-out prompts
    assert html.count('<option value="physics-train">') == html.count('<option value="physics-heldout">') == 2


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"backbone": "tiny-i2v"}, {"prompts": "image prompt set", "heldout_prompts": "got 'heldout64'"}),
        ({"prompts": "physics-train"}, {"prompts": "backbone 'tiny' is text-to-video"}),
        ({"heldout_prompts": "physics-heldout"}, {"heldout_prompts": "backbone 'tiny' is text-to-video"}),
        ({**I2V, "algorithm": "refl"}, {"algorithm": "Refl does not take first frames"}),
        ({"trainable": "physencoder"}, {"trainable": "backbone 'tiny' has none"}),
        # a backbone without weights: said on the backbone, the prompts checked against it (not tiny)
        ({**I2V, "backbone": "wan-i2v"}, {"backbone": "no weights"}),
    ],
)
def test_a_backbone_and_prompts_of_different_kinds_are_an_error_on_the_field_at_fault(owner, fields, expected):
    errors = errors_of(form_data(**fields))
    assert set(errors) == set(expected), errors
    for name, words in expected.items():
        assert words in errors[name], errors[name]


def test_a_prompt_file_with_an_image_to_video_backbone_is_an_error_on_the_file_and_nothing_is_launched(owner):
    upload = SimpleUploadedFile("prompts.txt", b"a red ball moving right\n")
    r = logged_in(owner).post(
        reverse("experiments:new"), {**form_data(**I2V), "prompts": UPLOADED, "prompts_file": upload}
    )
    assert r.status_code == 400
    errors = r.context["form"].errors
    assert "a prompt file gives no first frames" in errors["prompts_file"][0]
    assert "must be an image prompt set" in errors["prompts"][0]
    assert not Experiment.objects.exists()


@pytest.mark.parametrize("trainable", ["lora", "physencoder", "both"])
def test_an_image_to_video_run_on_the_physics_reward_is_valid_with_each_trainable(owner, trainable):
    form = ExperimentForm(form_data(**PHYSICS, trainable=trainable))
    assert form.is_valid(), form.errors
    assert form.config["trainable"] == trainable and form.config["dimension"] == "trajectory"


def test_the_physmaster_preset_fills_the_form_with_stage_two_of_vpo_physmaster(owner):
    from vpo.physmaster import PhysMasterConfig

    r = logged_in(owner).get(reverse("experiments:new") + "?preset=physmaster")
    assert r.status_code == 200
    form = r.context["form"]
    stage = PhysMasterConfig(out="x").stage_config("stage2-dpo-lora").to_dict()
    for name in ("backbone", "prompts", "heldout_prompts", "reward", "dimension", "trainable", "algorithm"):
        assert form[name].value() == stage[name], name
    for name in ("num_candidates", "ref_update_every", "lr", "noise_draws", "tie_tolerance", "steps", "sampling_steps"):
        assert form[name].value() == stage[name], name
    assert (stage["trainable"], stage["dimension"], stage["num_candidates"]) == ("lora", "trajectory", 6)
    assert form["heldout_every"].value() == 5  # the dashboard's held-out videos (vpo physmaster: 0)
    assert form["name"].value().startswith("PhysMaster stage II")
    assert ExperimentForm(form_data(**physmaster_preset())).is_valid()  # launched as it is, it runs
    assert logged_in(owner).get(reverse("experiments:new") + "?preset=nope").status_code == 404


# --- the first frame beside each video --------------------------------------------------------
def test_the_sink_stores_each_first_frame_as_a_png_beside_its_video_and_the_page_gets_its_url(
    owner, tmp_path, settings
):
    from vpo import video as video_io
    from vpo.data.prompts import read_image_prompts

    settings.MEDIA_ROOT = tmp_path
    experiment = Experiment.objects.create(owner=owner, name="i2v", config=validated_config(PHYSICS))
    captions, frames = read_image_prompts("physics-heldout")
    videos = np.repeat(frames[:2, None], 16, axis=1)  # (2, F, H, W, 3): each frame held still
    DatabaseSink(experiment).samples(0, "heldout", videos, captions[:2], [0.5, 0.25], ["heldout"] * 2, 8, frames[:2])

    rows = list(experiment.samples.all())
    assert [r.image for r in rows] == ["samples/step_000000_heldout/00.png", "samples/step_000000_heldout/01.png"]
    for row, frame in zip(rows, frames):
        assert np.array_equal(video_io.read_image(experiment.run_dir / row.image), frame)  # lossless
    client = logged_in(owner)
    events = client.get(reverse("experiments:samples", args=[experiment.pk])).json()["samples"]
    assert events[0]["image"] == reverse("experiments:media", args=[experiment.pk, rows[0].image])
    r = client.get(events[0]["image"])
    assert r.status_code == 200 and r["Content-Type"] == "image/png"
    # vpo eval samples text prompts: no evaluation form for an image-to-video run, and a post is a 400
    (experiment.run_dir / "run" / "checkpoints" / "step_000001").mkdir(parents=True)
    detail = client.get(reverse("experiments:detail", args=[experiment.pk])).content.decode()
    assert 'id="no-evaluation"' in detail and 'action="/experiments/' not in detail.split('id="evaluations"')[1]
    r = client.post(reverse("experiments:evaluate", args=[experiment.pk]), {"checkpoint": "step_000001"})
    assert r.status_code == 400 and "image-to-video" in r.content.decode()
    # text-to-video: no first frame, no image
    text = Experiment.objects.create(owner=owner, name="t2v", config=validated_config({}))
    DatabaseSink(text).samples(0, "heldout", videos[:1], ["a red ball moving right"], [0.1], ["heldout"], 8)
    assert text.samples.get().image == "" and text.samples.get().as_event()["image"] is None


# --- studies: pairs from the same first frame -------------------------------------------------
def finished_experiment(owner, backbone: str, name: str) -> Experiment:
    """A finished run with a checkpoint folder (what the study form lists); no weights needed."""
    config = validated_config(PHYSICS if backbone == "tiny-i2v" else {})
    experiment = Experiment.objects.create(owner=owner, name=name, status="finished", config=config)
    (experiment.run_dir / "run" / "checkpoints" / "step_000001").mkdir(parents=True)
    return experiment


def study_form(systems: list[str], prompt_set: str) -> dict:
    return {
        "name": "physics",
        "systems": systems,
        "prompt_set": prompt_set,
        "prompt_limit": 4,
        "videos_per_prompt": 1,
        "seed": 0,
        "question": "Which video is more physical?",
        "gold_rate": 0.1,
        "votes_per_trial": 3,
        "trials_per_participant": 4,
    }


def test_the_study_form_compares_image_to_video_systems_only_from_first_frames_of_one_backbone(
    owner, tmp_path, settings
):
    settings.MEDIA_ROOT = tmp_path
    i2v = finished_experiment(owner, "tiny-i2v", "i2v")
    t2v = finished_experiment(owner, "tiny", "t2v")
    client = logged_in(owner)

    def errors(systems, prompt_set):
        r = client.post(reverse("studies:new"), study_form(systems, prompt_set))
        assert r.status_code == 400, r.status_code
        return {k: " ".join(v) for k, v in r.context["form"].errors.items()}

    assert "need a first frame per prompt" in errors(["base", f"{i2v.pk}:step_000001"], "heldout64")["prompt_set"]
    assert "same backbone" in errors([f"{t2v.pk}:step_000001", f"{i2v.pk}:step_000001"], "physics-heldout")["systems"]
    assert "choose a text prompt set" in errors(["base", f"{t2v.pk}:step_000001"], "physics-heldout")["prompt_set"]

    r = client.post(reverse("studies:new"), study_form(["base", f"{i2v.pk}:step_000001"], "physics-heldout"))
    assert r.status_code == 302, r.context["form"].errors
    study = Study.objects.get()
    assert study.image_set == "physics-heldout" and len(study.prompt_list()) == 4
    assert [(s.label, study.backbone_of(s)) for s in study.systems.all()] == [
        ("base", "tiny-i2v"),
        (f"#{i2v.pk} step_000001", "tiny-i2v"),
    ]


def test_an_image_to_video_study_pairs_clips_of_the_same_first_frame_and_the_trial_page_shows_it(
    owner, tmp_path, settings, quick_checkpoint
):
    """Rendered by the study's real job (tiny-i2v, a real checkpoint), on scenes whose captions
    repeat: a caption alone would pair clips of different first frames."""
    from vpo import video as video_io
    from vpo.data.prompts import read_image_prompts
    from webapp.studies.jobs import render

    settings.MEDIA_ROOT = tmp_path
    settings.VPO_MIN_WATCH_FRACTION = 0
    captions, frames = read_image_prompts("physics-train")
    # the first prompts, down to the earliest second scene of a repeated caption
    twice = min(
        (c for c, n in Counter(captions).items() if n > 1), key=lambda c: captions.index(c, captions.index(c) + 1)
    )
    count = captions.index(twice, captions.index(twice) + 1) + 1
    experiment = finished_experiment(owner, "tiny-i2v", "tuned")
    quick_checkpoint(experiment.run_dir / "run", **PHYSICS)
    study = Study.objects.create(
        owner=owner, name="s", prompts="\n".join(captions[:count]), image_set="physics-train", gold_rate=0.25
    )
    System.objects.create(study=study, label="base", backbone="tiny-i2v")
    System.objects.create(study=study, label="tuned", experiment=experiment, checkpoint="step_000001")
    render(study.pk)
    study.refresh_from_db()
    assert study.status == StudyStatus.OPEN, study.error

    clips = list(study.clips.filter(degraded=False))
    assert sorted(c.scene for c in clips) == sorted(list(range(count)) * 2)
    for clip in clips:  # the first frame written is the scene's, and the video starts from it
        assert np.array_equal(video_io.read_image(clip.frame_path), frames[clip.scene])
        assert np.abs(clip.frames()[0].astype(int) - frames[clip.scene]).mean() < 1.0
    regular = list(study.trials.filter(is_gold=False).select_related("clip_a", "clip_b"))
    assert len(regular) == count  # one pair of systems per scene
    assert all(t.clip_a.scene == t.clip_b.scene and t.clip_a.frame == t.clip_b.frame for t in regular)
    assert sorted(t.clip_a.scene for t in regular) == list(range(count))  # the repeated caption: twice
    assert [t.clip_a.prompt for t in regular].count(twice) == 2

    volunteer = Client()
    volunteer.get(reverse("studies:welcome", args=[study.token]))
    r = volunteer.post(reverse("studies:welcome", args=[study.token]), {"consent": "1"})
    html = volunteer.get(r["Location"]).content.decode()
    frame_url = next(c.frame_url() for c in clips if c.frame_url() in html)
    assert 'id="first-frame"' in html
    r = volunteer.get(frame_url)
    assert r.status_code == 200 and r["Content-Type"] == "image/png"
    assert volunteer.get(frame_url.replace(".png", "x.png")).status_code == 404
    participant = study.participants.get()
    item = participant.plan[0]
    r = volunteer.post(
        reverse("studies:vote", args=[study.token, participant.token]),
        json.dumps({"trial": item["trial"], "choice": "left"}),
        content_type="application/json",
    )
    assert r.status_code == 200, r.content
    row = next(csv.DictReader(io.StringIO(votes_csv(study))))
    assert int(row["scene"]) == Clip.objects.get(pk=item["left"]).scene  # which first frame, not the caption alone
    detail = logged_in(owner).get(reverse("studies:detail", args=[study.pk])).content.decode()
    assert "first frame from <code>physics-train</code>" in detail
    Study.objects.filter(pk=study.pk).update(status=StudyStatus.CLOSED)
    assert volunteer.get(frame_url).status_code == 404  # a closed study's frames go with its clips


# --- end to end: the form, the worker, the dashboard ------------------------------------------
TINY_RUN = {
    "steps": 2,
    "num_candidates": 2,
    "noise_draws": 1,
    "sampling_steps": 4,
    "heldout_every": 1,
    "heldout_count": 2,
    "checkpoint_every": 2,
}


@pytest.mark.timeout(600)
def test_a_tiny_i2v_run_on_the_physics_reward_launched_from_the_form_trains_on_the_worker(live_stack, transactional_db):
    """trainable = both: the LoRA and a PhysEncoder's head, both in the checkpoint."""
    from vpo import video as video_io
    from vpo.data.prompts import read_image_prompts
    from vpo.train.checkpoints import read_safetensors

    owner = get_user_model().objects.create_user("ines", password="pw-ines-long")
    r = logged_in(owner).post(reverse("experiments:new"), form_data(**PHYSICS, **TINY_RUN, trainable="both"))
    assert r.status_code == 302, r.content.decode()[:2000]
    experiment = Experiment.objects.get()
    deadline = time.time() + 400
    while not experiment.is_done:
        assert time.time() < deadline, "the run did not end"
        time.sleep(0.5)
        experiment.refresh_from_db()
    assert experiment.status == "finished", experiment.error
    assert experiment.points.filter(step=2).get().values["heldout/global"] is not None
    _, heldout = read_image_prompts("physics-heldout")
    base = experiment.samples.filter(step=0, kind="heldout")
    assert [video_io.read_image(experiment.run_dir / s.image).shape for s in base] == [(32, 32, 3)] * 2
    for s in base:
        assert np.array_equal(video_io.read_image(experiment.run_dir / s.image), heldout[s.index])
    candidates = Sample.objects.filter(experiment=experiment, kind="candidates")
    assert candidates.count() == 4 and all(s.image for s in candidates)
    saved = read_safetensors(experiment.run_dir / "run" / "checkpoints" / "step_000002" / "adapter.safetensors")
    assert any(k.startswith("physencoder.head.") for k in saved)


@pytest.mark.timeout(900)
def test_the_physmaster_preset_launches_and_the_dashboard_shows_each_first_frame_beside_its_video(
    live_stack,
    transactional_db,
    page,  # noqa: F811
):
    get_user_model().objects.create_user("paula", password="pw-paula-long")
    log_in(page, live_stack.url, "paula", "pw-paula-long")
    page.goto(f"{live_stack.url}/experiments/new/")
    page.click("#preset-physmaster")
    page.wait_for_url("**/experiments/new/?preset=physmaster")
    assert page.input_value("#id_backbone") == "tiny-i2v" and page.input_value("#id_reward") == "physics"
    assert page.input_value("#id_dimension") == "trajectory" and page.input_value("#id_trainable") == "lora"
    assert page.input_value("#id_prompts") == "physics-train"
    assert page.input_value("#id_num_candidates") == "6" and page.input_value("#id_ref_update_every") == "20"
    # choosing a text-to-video backbone picks text prompt sets, and back
    page.select_option("#id_backbone", "tiny")
    assert (page.input_value("#id_prompts"), page.input_value("#id_heldout_prompts")) == ("train", "heldout64")
    page.select_option("#id_backbone", "tiny-i2v")
    assert page.input_value("#id_prompts") == "physics-train"
    assert page.input_value("#id_heldout_prompts") == "physics-heldout"
    for field, value in {**TINY_RUN, "steps": 3}.items():  # the preset, kept tiny
        page.fill(f"#id_{field}", str(value))
    page.click("#launch")
    page.wait_for_url("**/experiments/*/")

    frame = page.locator("#video-panel figure.video.i2v img.first-frame").first
    frame.wait_for(timeout=300_000)
    wait_for(lambda: frame.evaluate("img => img.complete && img.naturalWidth") == 32, timeout=30, what="the frame")
    video = page.locator("#video-panel figure.video.i2v video").first
    assert video.evaluate("v => v.previousElementSibling.classList.contains('first-frame')")
    wait_for(lambda: page.text_content("#status") == "finished", timeout=300, what="the run to finish")
    experiment = Experiment.objects.get()
    assert experiment.config["reward"] == "physics" and experiment.config["lr"] == 1e-3
    page.reload()  # backfilled on load: the frames come with the stored samples
    page.locator("#video-panel img.first-frame").first.wait_for(timeout=30_000)


# --- PhysMaster's three stages as one run -----------------------------------------------------
QUICK_CHAIN = {
    "steps_sft": 2,
    "sft_batch": 2,
    "sft_lr": 1e-3,
    "steps_dpo": 1,
    "dpo_lr": 1e-3,
    "head_lr": 1e-3,
    "num_candidates": 2,
    "noise_draws": 1,
    "ref_update_every": 20,
    "tie_tolerance": 0.0,
    "sampling_steps": 2,
    "guidance": 4.0,
    "seed": 0,
    "heldout_every": 1,
    "heldout": 2,
}


def test_the_physmaster_form_has_the_command_s_defaults_and_says_each_error_on_its_field(owner):
    from dataclasses import asdict

    from vpo.physmaster import PhysMasterConfig
    from webapp.experiments.forms import PhysMasterForm

    client = logged_in(owner)
    form = client.get(reverse("experiments:new_physmaster")).context["form"]
    defaults = asdict(PhysMasterConfig(out="x"))
    assert {name: form[name].value() for name in QUICK_CHAIN} == {
        **{k: v for k, v in defaults.items() if k in QUICK_CHAIN},
        "heldout_every": 5,  # the page shows held-out videos; the command's default is none
    }
    assert 'id="physmaster-chain"' in client.get(reverse("experiments:new")).content.decode()

    def errors(**fields):
        bound = PhysMasterForm({"name": "pm", **QUICK_CHAIN, **fields})
        bound.is_valid()
        return {k: " ".join(v) for k, v in bound.errors.items()}

    assert "Stage I steps (SFT) must be >= 1" in errors(steps_sft=0)["steps_sft"]
    assert "stage2-dpo-lora: lr must be > 0" in errors(dpo_lr=0)["dpo_lr"]  # TrainConfig's, on the stage's field
    assert "stage3-dpo-physencoder: lr must be > 0" in errors(head_lr=-1)["head_lr"]
    assert "must be a whole number" in errors(num_candidates="six")["num_candidates"]
    assert set(errors(num_candidates=1)) == {"num_candidates"}
    bound = PhysMasterForm({"name": "pm", **QUICK_CHAIN})
    assert bound.is_valid(), bound.errors
    assert bound.config == QUICK_CHAIN and bound.stage_two["trainable"] == "lora"


def test_a_chain_exports_as_the_settings_vpo_physmaster_config_reads(owner, tmp_path, settings):
    """Its config is stage II's alone: exported as that, vpo train would skip stage I."""
    from vpo.physmaster import PhysMasterConfig

    settings.MEDIA_ROOT = tmp_path
    client = logged_in(owner)
    assert client.post(reverse("experiments:new_physmaster"), {"name": "chain", **QUICK_CHAIN}).status_code == 302
    experiment = Experiment.objects.get()
    exported = client.get(reverse("experiments:export", args=[experiment.pk])).content.decode()
    assert f"vpo physmaster --config experiment-{experiment.pk}.toml" in exported
    (tmp_path / "chain.toml").write_text(exported)
    expected = PhysMasterConfig(**QUICK_CHAIN, out=f"runs/experiment-{experiment.pk}")
    assert PhysMasterConfig.from_toml(tmp_path / "chain.toml") == expected


@pytest.mark.timeout(600)
def test_the_three_stages_run_as_one_job_on_one_step_axis_and_the_page_shows_the_report(live_stack, transactional_db):
    from vpo.physmaster import LABELS

    owner = get_user_model().objects.create_user("pm", password="pw-pm-long")
    client = logged_in(owner)
    r = client.post(reverse("experiments:new_physmaster"), {"name": "chain", **QUICK_CHAIN})
    assert r.status_code == 302, r.content.decode()[:2000]
    experiment = Experiment.objects.get()
    assert experiment.physmaster == QUICK_CHAIN and experiment.config["backbone"] == "tiny-i2v"
    deadline = time.time() + 400
    while not experiment.is_done:
        assert time.time() < deadline, "the run did not end"
        time.sleep(0.5)
        experiment.refresh_from_db()
    assert experiment.status == "finished", experiment.error

    # stage I at steps 1-2, stage II at 3 (its held-out check of where it starts) and 4, stage III at 5 and 6
    assert experiment.stage_offsets() == {"stage1-sft": 0, "stage2-dpo-lora": 3, "stage3-dpo-physencoder": 5}
    points = {p.step: p.values for p in experiment.points.all()}
    assert sorted(points) == [1, 2, 3, 4, 5, 6] == list(range(1, experiment.total_steps + 1))
    assert all("sft/loss" in points[s] for s in (1, 2)) and "dpo/loss" in points[4] and "dpo/loss" in points[6]
    assert all(s.image for s in experiment.samples.all())  # every logged video with its first frame
    assert sorted({s.step for s in experiment.samples.filter(kind="heldout")}) == [3, 4, 5, 6]
    assert experiment.checkpoints() == [
        "stage1-sft/step_000002",
        "stage2-dpo-lora/step_000001",
        "stage3-dpo-physencoder/step_000001",
    ]
    html = client.get(reverse("experiments:detail", args=[experiment.pk])).content.decode()
    assert 'id="physmaster-report"' in html and LABELS["stage3-dpo-physencoder"] in html
    r = client.get(reverse("experiments:download", args=[experiment.pk]) + "?checkpoint=stage2-dpo-lora/step_000001")
    assert r.status_code == 200 and "stage2-dpo-lora-step_000001" in r["Content-Disposition"]
    clone = client.get(reverse("experiments:new_physmaster") + f"?clone={experiment.pk}").context["form"]
    assert {name: clone[name].value() for name in QUICK_CHAIN} == QUICK_CHAIN  # Clone: the same three stages
    # a stage's checkpoint is a system a study can compare
    from webapp.studies.forms import system_choices

    assert f"{experiment.pk}:stage3-dpo-physencoder/step_000001" in dict(system_choices(owner))
