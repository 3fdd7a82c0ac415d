"""The real backbones in the web app: the launch form lists those without weights, disabled with the
reason, and refuses them; a launch on the tiny Wan pipeline trains end to end on a real worker."""

import time

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment, MetricPoint


@pytest.fixture
def owner(transactional_db):
    return get_user_model().objects.create_user("alice")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_form_lists_backbones_without_weights_disabled_with_the_reason_and_refuses_them(
    owner, tmp_path, monkeypatch
):
    monkeypatch.setenv("VPO_MODELS_DIR", str(tmp_path))
    client = logged_in(owner)
    page = client.get("/experiments/new/").content.decode()
    assert '<option value="tiny" selected>tiny</option>' in page
    for name in ("wan", "cogvideox", "ltx"):
        reason = f"backbone &#x27;{name}&#x27; has no weights at {tmp_path / name}"
        assert f'<option value="{name}" disabled title="{reason}' in page
        assert f">{name} (no weights)</option>" in page
    r = client.post("/experiments/new/", {"name": "x", **validated_config({"backbone": "wan"})})
    assert r.status_code == 400
    assert r.context["form"].errors["backbone"] == [
        (
            f"backbone 'wan' has no weights at {tmp_path / 'wan'}: expected a diffusers folder with model_index.json, "
            "transformer/, vae/, text_encoder/, tokenizer/, scheduler/"
        )
    ]
    assert not Experiment.objects.exists()


def test_a_launch_on_the_tiny_wan_pipeline_trains_on_a_real_worker(live_stack, owner, monkeypatch):
    monkeypatch.setenv("VPO_MODELS_DIR", str(live_stack.models))  # the web side sees what the worker has
    client = logged_in(owner)
    assert 'value="wan" disabled' not in client.get("/experiments/new/").content.decode()
    form = {
        "name": "tiny wan",
        **validated_config(
            {
                "backbone": "wan",
                "frames": 5,
                "height": 16,
                "width": 16,
                "steps": 2,
                "num_candidates": 2,
                "sampling_steps": 2,
                "heldout_every": 2,
                "heldout_count": 1,
                "checkpoint_every": 2,
                "prompts": "demo",
            }
        ),
    }
    r = client.post("/experiments/new/", form)
    assert r.status_code == 302, r.content.decode()[:2000]
    experiment = Experiment.objects.get()
    assert experiment.config["lora_rank"] == 32 and "model_dir" not in experiment.config  # wan's default; server-side
    deadline = time.time() + 600
    while experiment.status not in ("finished", "failed", "cancelled"):
        assert time.time() < deadline, "the worker did not finish"
        time.sleep(0.5)
        experiment.refresh_from_db()
    assert experiment.status == "finished", experiment.error
    steps = list(MetricPoint.objects.filter(experiment=experiment).values_list("step", flat=True))
    assert steps == [0, 1, 2]
    last = MetricPoint.objects.get(experiment=experiment, step=2).values
    assert "dpo/loss" in last and "heldout/temporal" in last
    assert experiment.samples.filter(step=2, kind="heldout").count() == 1
    assert experiment.checkpoints() == ["step_000002"]
