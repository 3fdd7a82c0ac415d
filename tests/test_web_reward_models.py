"""The closed loop in the web app: a study's votes exported as preference pairs (download and
``manage.py export_pairs``), a reward model trained on them by a real worker, chosen as reward
source ``learned`` in the launch form, and a run on it trained and logged by the worker; the
"Guided sampling" page (Flow-NRG) on the same model."""

import io
import time
import zipfile

import numpy as np
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from vpo.pairs import read_pairs
from vpo.train.config import TrainConfig
from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment, MetricPoint
from webapp.studies.models import (
    Clip,
    GuidedSampling,
    Participant,
    RewardModel,
    RewardModelStatus,
    Study,
    StudyStatus,
    System,
    Trial,
    Vote,
)

# the session's tiny_videos fixture samples 32 videos: many minutes on a busy shared CPU
pytestmark = pytest.mark.timeout(1800)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def brightness(video) -> float:
    return float(video.astype(np.float32).mean())


def voted_study(owner, tiny_videos, participants: int = 2) -> Study:
    """A study of base vs other whose clips are tiny's videos (frames written directly), every
    trial voted by ``participants`` volunteers who prefer the brighter clip (a tie within 0.5 grey
    levels); one more, excluded volunteer's votes must not count."""
    study = Study.objects.create(owner=owner, name="brightness", prompts="x", status=StudyStatus.OPEN)
    systems = [System.objects.create(study=study, label=label) for label in ("base", "other")]
    study.media_dir.mkdir(parents=True, exist_ok=True)
    voters = [Participant.objects.create(study=study, ip_hash=f"{i}", ua_hash="x") for i in range(participants)]
    excluded = Participant.objects.create(study=study, ip_hash="z", ua_hash="x", excluded=True)
    for k in range(len(tiny_videos) // 2):
        clips = []
        for system, (path, prompt) in zip(systems, tiny_videos[2 * k : 2 * k + 2]):
            clip = Clip.objects.create(study=study, system=system, prompt=prompt, seed=k, duration=2.0)
            np.save(study.media_dir / f"{clip.token}.npy", np.load(path))
            clips.append(clip)
        trial = Trial.objects.create(study=study, clip_a=clips[0], clip_b=clips[1])
        d = brightness(clips[0].frames()) - brightness(clips[1].frames())
        chosen = None if abs(d) < 0.5 else clips[0] if d > 0 else clips[1]
        for p in voters:
            choice = "tie" if chosen is None else "left" if chosen == clips[0] else "right"
            Vote.objects.create(participant=p, trial=trial, choice=choice, left=clips[0], chosen=chosen)
        Vote.objects.create(participant=excluded, trial=trial, choice="right", left=clips[0], chosen=clips[1])
    return study


def expected_choices(study) -> list[str]:
    out = []
    for trial in study.trials.order_by("pk"):
        d = brightness(trial.clip_a.frames()) - brightness(trial.clip_b.frames())
        out += ["tie" if abs(d) < 0.5 else "a" if d > 0 else "b"] * 2
    return sorted(out)


def test_a_study_s_votes_export_as_pairs_from_the_page_and_the_command(db, settings, tmp_path, tiny_videos):
    settings.MEDIA_ROOT = tmp_path / "media"
    owner = get_user_model().objects.create_user("alice")
    study = voted_study(owner, tiny_videos[:12])
    client = logged_in(owner)
    page = client.get(f"/studies/{study.pk}/results/").content.decode()
    assert f'href="/studies/{study.pk}/pairs.zip"' in page and 'id="train-reward-model"' in page

    r = client.get(f"/studies/{study.pk}/pairs.zip")
    assert r.status_code == 200 and r["Content-Type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path / "download")
    pairs = read_pairs(tmp_path / "download" / "pairs.jsonl")
    assert len(pairs) == 12  # 6 trials x 2 volunteers; the excluded volunteer's votes are left out
    assert sorted(p.choice for p in pairs) == expected_choices(study)
    assert all(p.a.parent == tmp_path / "download" / "videos" for p in pairs)

    call_command("export_pairs", str(study.pk), str(tmp_path / "cmd.jsonl"))
    again = read_pairs(tmp_path / "cmd.jsonl")
    assert [(p.prompt, p.a.name, p.b.name, p.choice) for p in again] == [
        (p.prompt, p.a.name, p.b.name, p.choice) for p in pairs
    ]

    outsider = logged_in(get_user_model().objects.create_user("mallory"))
    assert outsider.get(f"/studies/{study.pk}/pairs.zip").status_code == 404
    assert outsider.post(f"/studies/{study.pk}/reward-models/").status_code == 404


def test_a_missing_reward_model_folder_is_a_form_error_next_to_the_field(db, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    owner = get_user_model().objects.create_user("alice")
    rm = RewardModel.objects.create(owner=owner, name="gone", status=RewardModelStatus.FINISHED, heads=["overall"])
    client = logged_in(owner)
    page = client.get("/experiments/new/").content.decode()
    assert f'<option value="{rm.directory}">#{rm.pk} gone (overall)</option>' in page
    form = {"name": "x", **validated_config({}), "reward": "learned", "dimension": "overall"}
    r = client.post("/experiments/new/", {**form, "reward_model": str(rm.directory)})
    assert r.status_code == 400
    assert r.context["form"].errors["reward_model"] == [
        f"No reward model at {rm.directory}: not a directory (train one with `vpo reward-model train`)"
    ]
    r = client.post("/experiments/new/", {**form, "reward_model": ""})
    assert r.context["form"].errors["reward_model"] == [
        "Reward source 'learned' needs reward model: the folder of a trained reward model"
    ]
    r = client.post("/experiments/new/", {**form, "reward_model": str(tmp_path)})  # not one of the user's
    assert "reward_model" in r.context["form"].errors
    assert not Experiment.objects.exists()


def test_the_guided_sampling_page_has_a_slider_per_dimension_and_checks_its_input(db, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    owner = get_user_model().objects.create_user("alice")
    rm = RewardModel.objects.create(
        owner=owner, name="m", status=RewardModelStatus.FINISHED, heads=["temporal", "visual"]
    )
    client = logged_in(owner)
    page = client.get(f"/studies/reward-models/{rm.pk}/guide/").content.decode()
    for head in ("temporal", "visual"):
        assert f'type="range" name="weight_{head}"' in page
    r = client.post(
        f"/studies/reward-models/{rm.pk}/guide/",
        {"prompt": "a red ball", "seed": 0, "seeds": 9, "steps": 6, "weight_temporal": 2, "weight_visual": 11},
    )
    assert r.status_code == 400
    errors = r.context["form"].errors
    assert set(errors) == {"seeds", "weight_visual"}
    assert not GuidedSampling.objects.exists()
    queued = RewardModel.objects.create(owner=owner, name="q", heads=["overall"])
    assert client.get(f"/studies/reward-models/{queued.pk}/guide/").status_code == 404
    outsider = logged_in(get_user_model().objects.create_user("mallory"))
    assert outsider.get(f"/studies/reward-models/{rm.pk}/guide/").status_code == 404


@pytest.mark.timeout(1800)  # a busy shared CPU: the worker trains, samples and runs 2 steps
def test_votes_train_a_reward_model_on_a_worker_and_a_run_on_it_is_launched_and_logged(
    live_stack, transactional_db, tiny_videos, tmp_path, monkeypatch
):
    owner = get_user_model().objects.create_user("alice")
    study = voted_study(owner, tiny_videos[:24])
    client = logged_in(owner)
    r = client.post(f"/studies/{study.pk}/reward-models/")
    assert r.status_code == 302
    rm = RewardModel.objects.get()
    deadline = time.time() + 1200
    while rm.status in ("queued", "running"):
        assert time.time() < deadline, "the worker did not train the reward model"
        time.sleep(0.5)
        rm.refresh_from_db()
    assert rm.status == "finished", rm.error
    assert rm.heads == ["overall"] and rm.figures["pairs"] == 24
    assert (rm.directory / "reward_model.json").is_file() and (rm.directory / "pairs.jsonl").is_file()
    page = client.get(f"/studies/{study.pk}/results/").content.decode()
    assert "finished" in page and f"#{rm.pk} votes of brightness" in page

    # Flow-NRG from the browser: the same seeds without and with guidance, side by side
    r = client.post(
        f"/studies/reward-models/{rm.pk}/guide/",
        {"prompt": tiny_videos[0][1], "seed": 0, "seeds": 2, "steps": 6, "weight_overall": 3},
    )
    assert r.status_code == 302
    sampling = GuidedSampling.objects.get()
    deadline = time.time() + 1200
    while sampling.status in ("queued", "running"):
        assert time.time() < deadline, "the worker did not sample"
        time.sleep(0.5)
        sampling.refresh_from_db()
    assert sampling.status == "finished", sampling.error
    page = client.get(f"/studies/guided/{sampling.pk}/").content.decode()
    for row in sampling.rows():
        for kind in ("unguided", "guided"):
            assert row[kind]["url"] in page
            assert client.get(row[kind]["url"]).status_code == 200
    assert sum(sampling.rewards["guided"]) > sum(sampling.rewards["unguided"])

    page = client.get("/experiments/new/").content.decode()
    assert f'<option value="{rm.directory}">{rm.label}</option>' in page
    form = {
        "name": "on the votes",
        **validated_config(
            {
                "steps": 2,
                "num_candidates": 2,
                "sampling_steps": 4,
                "heldout_every": 0,
                "checkpoint_every": 2,
                "prompts": "demo",
            }
        ),
        "reward": "learned",
        "reward_model": str(rm.directory),
        "dimension": "overall",
    }
    r = client.post("/experiments/new/", form)
    assert r.status_code == 302, r.content.decode()[:3000]
    experiment = Experiment.objects.get()
    assert experiment.config["reward_model"] == str(rm.directory)
    deadline = time.time() + 1200
    while experiment.status not in ("finished", "failed", "cancelled"):
        assert time.time() < deadline, "the worker did not finish the run"
        time.sleep(0.5)
        experiment.refresh_from_db()
    assert experiment.status == "finished", experiment.error
    points = {p.step: p.values for p in MetricPoint.objects.filter(experiment=experiment)}
    assert sorted(points) == [1, 2]
    assert all(0 <= points[s]["reward/mean"] <= 1 for s in (1, 2))

    # exported, the run names the reward model as the folder its zip unpacks to, next to the TOML
    exported = client.get(f"/experiments/{experiment.pk}/config.toml").content.decode()
    assert f'reward_model = "reward-model-{rm.pk}"' in exported and str(settings.MEDIA_ROOT) not in exported
    assert f"/studies/reward-models/{rm.pk}/download/" in exported
    (tmp_path / "run.toml").write_text(exported)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"no reward model at reward-model-{rm.pk}: not a directory"):
        TrainConfig.from_toml("run.toml")  # not unzipped yet
    r = client.get(f"/studies/reward-models/{rm.pk}/download/")
    assert r.status_code == 200 and r["Content-Type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(tmp_path)
    cfg = TrainConfig.from_toml("run.toml")
    assert (cfg.reward, cfg.reward_model, cfg.dimension) == ("learned", f"reward-model-{rm.pk}", "overall")
    assert (
        logged_in(get_user_model().objects.create_user("mallory"))
        .get(f"/studies/reward-models/{rm.pk}/download/")
        .status_code
        == 404
    )
