"""The experiments app on the real database: access control, forms, exports, media."""

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment, MetricPoint, Sample


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("alice", password="pw-alice")


@pytest.fixture
def outsider(db):
    return get_user_model().objects.create_user("bob", password="pw-bob")


@pytest.fixture
def experiment(owner, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    e = Experiment.objects.create(owner=owner, name="a run", config=validated_config({"steps": 3}))
    MetricPoint.objects.create(experiment=e, step=1, wall=1.0, values={"reward/mean": 0.5})
    (e.run_dir / "samples").mkdir(parents=True)
    (e.run_dir / "samples" / "v.mp4").write_bytes(b"\x00" * 1000)
    Sample.objects.create(experiment=e, step=0, kind="heldout", index=0, prompt="p", score=0.1, path="samples/v.mp4")
    return e


def urls_of(e):
    return [
        reverse("experiments:detail", args=[e.pk]),
        reverse("experiments:metrics", args=[e.pk]),
        reverse("experiments:samples", args=[e.pk]),
        reverse("experiments:export", args=[e.pk]),
        reverse("experiments:media", args=[e.pk, "samples/v.mp4"]),
        reverse("experiments:compare") + f"?ids={e.pk}&ids={e.pk + 1}",
    ]


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_users_are_sent_to_login_from_every_experiment_url(client, experiment):
    for url in [reverse("experiments:list"), reverse("experiments:new"), *urls_of(experiment)]:
        r = client.get(url)
        if url.endswith(".json"):  # a data endpoint: 401 JSON, not the login page (issue 18, point 6)
            assert r.status_code == 401 and r.json()["error"] == "log in first", url
            continue
        assert r.status_code == 302 and r["Location"].startswith(reverse("login")), url
    for url in (
        reverse("experiments:cancel", args=[experiment.pk]),
        reverse("experiments:continue", args=[experiment.pk]),
        reverse("experiments:demo"),
    ):
        assert client.post(url)["Location"].startswith(reverse("login"))


def test_another_user_gets_404_on_every_url_of_an_experiment_and_cannot_cancel_it(outsider, experiment):
    client = logged_in(outsider)
    for url in urls_of(experiment):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("experiments:cancel", args=[experiment.pk])).status_code == 404
    assert client.post(reverse("experiments:continue", args=[experiment.pk])).status_code == 404
    experiment.refresh_from_db()
    assert not experiment.cancel_requested
    assert b"a run" not in client.get(reverse("experiments:list")).content


def test_staff_see_everyone_s_experiments(experiment):
    staff = get_user_model().objects.create_user("carol", is_staff=True)
    assert logged_in(staff).get(reverse("experiments:detail", args=[experiment.pk])).status_code == 200


def test_the_owner_gets_the_dashboard_data_and_a_ranged_video(owner, experiment):
    client = logged_in(owner)
    assert client.get(reverse("experiments:detail", args=[experiment.pk])).status_code == 200
    data = client.get(reverse("experiments:metrics", args=[experiment.pk])).json()
    assert data == {"steps": [1], "wall": [1.0], "series": {"reward/mean": [0.5]}}
    assert client.get(reverse("experiments:metrics", args=[experiment.pk]) + "?after=1").json()["steps"] == []
    media = reverse("experiments:media", args=[experiment.pk, "samples/v.mp4"])
    part = client.get(media, HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206 and part["Content-Range"] == "bytes 100-199/1000" and len(part.content) == 100
    assert client.get(media, HTTP_RANGE="bytes=5000-").status_code == 416
    assert client.get(reverse("experiments:media", args=[experiment.pk, "../../etc/passwd"])).status_code == 404


def test_the_dashboard_gets_the_vetoed_candidates_labels(owner, experiment):
    """A subject-veto run labels a candidate "winner vetoed" / "loser vetoed" (vpo/train/online_dpo.py)."""
    import numpy as np

    from webapp.experiments.sink import DatabaseSink

    videos = np.zeros((2, 16, 32, 32, 3), dtype=np.uint8)
    labels = ["winner vetoed", "loser vetoed"]
    DatabaseSink(experiment).samples(1, "candidates", videos, ["a red ball"] * 2, [0.97, 0.99], labels, 8)
    events = logged_in(owner).get(reverse("experiments:samples", args=[experiment.pk])).json()["samples"]
    assert [e["label"] for e in events if e["kind"] == "candidates"] == labels


def form_data(**overrides):
    data = {"name": "x", **validated_config({}), **overrides}
    return dict(data)


def test_bad_hyperparameters_show_a_clear_error_next_to_the_field(owner):
    client = logged_in(owner)
    r = client.post(reverse("experiments:new"), form_data(num_candidates=1))
    assert r.status_code == 400
    assert "Candidates per prompt (N) must be &gt;= 2 to form a pair" in r.content.decode()
    assert r.context["form"].errors["num_candidates"]
    r = client.post(reverse("experiments:new"), form_data(reward="image-metrics", dimension="dynamic"))
    assert "Unknown dimension &#x27;dynamic&#x27; for reward source &#x27;image-metrics&#x27;" in r.content.decode()
    assert "dimension" in r.context["form"].errors
    r = client.post(reverse("experiments:new"), form_data(beta="lots"))
    assert "beta" in r.context["form"].errors
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"a red ball\n" * 10_000, "the limit is 65,536"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        (b"ok\x00binary", "binary"),
        (b"# only a comment\n\n", "has no prompts"),
        (("x" * 400 + "\n").encode(), "a prompt has 400 characters"),
    ],
)
def test_oversize_or_garbled_prompt_files_are_form_errors(owner, content, message):
    client = logged_in(owner)
    upload = io.BytesIO(content)
    upload.name = "prompts.txt"
    r = client.post(reverse("experiments:new"), {**form_data(prompts="uploaded"), "prompts_file": upload})
    assert r.status_code == 400
    assert any(message in e for e in r.context["form"].errors["prompts_file"]), r.context["form"].errors
    assert not Experiment.objects.exists()


def test_csrf_is_enforced(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(reverse("experiments:new"), form_data()).status_code == 403
    assert client.post(reverse("experiments:demo")).status_code == 403


def test_export_is_toml_that_vpo_train_accepts(owner, experiment, tmp_path):
    from vpo.train.config import TrainConfig

    toml = logged_in(owner).get(reverse("experiments:export", args=[experiment.pk])).content.decode()
    path = tmp_path / "exported.toml"
    path.write_text(toml)
    server_side = {"out": f"runs/experiment-{experiment.pk}", "model_dir": ""}  # model_dir: $VPO_MODELS_DIR
    assert TrainConfig.from_toml(path).to_dict() == {**experiment.config, **server_side}


def test_clone_prefills_the_form_with_the_source_config(owner, experiment):
    experiment.config["beta"] = 42.0
    experiment.save()
    r = logged_in(owner).get(reverse("experiments:new") + f"?clone={experiment.pk}")
    form = r.context["form"]
    assert form["beta"].initial == 42.0 and form["name"].initial == "a run (copy)"


def test_compare_shows_only_the_fields_that_differ(owner, experiment):
    other = Experiment.objects.create(owner=owner, name="b", config={**experiment.config, "beta": 7.0})
    r = logged_in(owner).get(reverse("experiments:compare") + f"?ids={experiment.pk}&ids={other.pk}")
    assert r.status_code == 200
    assert [k for k, _ in r.context["differing"]] == ["beta"]


def test_only_a_finished_run_the_alarm_stopped_may_continue(owner, experiment):
    """Continue switches the held-out alarm off and sends the run again: refused (400, nothing changed)
    for a queued run, a finished one without an alarm, and the GET a link would send."""
    client = logged_in(owner)
    url = reverse("experiments:continue", args=[experiment.pk])
    config = dict(experiment.config)
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 400  # queued
    experiment.set_status("finished")
    r = client.post(url)
    assert r.status_code == 400 and b"held-out alarm stopped can continue" in r.content
    experiment.refresh_from_db()
    assert experiment.status == "finished" and experiment.config == config
    page = client.get(reverse("experiments:detail", args=[experiment.pk])).content.decode()
    assert "hidden" in re.search(r'<form[^>]*id="continue-form"[^>]*>', page).group(0)


def test_cancelling_a_queued_experiment_cancels_it_at_once(owner, experiment):
    logged_in(owner).post(reverse("experiments:cancel", args=[experiment.pk]))
    experiment.refresh_from_db()
    assert experiment.status == "cancelled" and experiment.cancel_requested


def test_an_evaluation_shows_base_checkpoint_and_their_paired_difference(owner, tmp_path, settings, quick_checkpoint):
    from vpo.data.prompts import read_prompts
    from vpo.eval import compare
    from webapp.experiments import jobs
    from webapp.experiments.models import Evaluation

    settings.MEDIA_ROOT = tmp_path
    e = Experiment.objects.create(
        owner=owner, name="tuned", status="finished", config=validated_config({"sampling_steps": 3, "flow_shift": 3.0})
    )
    quick_checkpoint(e.run_dir / "run", flow_shift=3.0)
    ev = Evaluation.objects.create(
        experiment=e, checkpoint="step_000001", prompts="demo", sampling_steps=2, guidance=3.0
    )
    jobs.evaluate(ev.pk)  # what the worker's task calls
    ev.refresh_from_db()
    assert ev.status == "finished", ev.error
    # sampled as the evaluation says (2 steps, CFG 3), not at the run's candidates' 3 steps and CFG 4,
    # on the run's schedule (shifted by 3), base and checkpoint alike
    n = len(read_prompts("demo"))
    sampling = {"sampler": "euler", "steps": 2, "guidance": 3.0, "flow_shift": 3.0, "seed": 0, "videos": n}
    assert ev.result["sampling"] == {**sampling, "flow_shift_chosen": False}
    checkpoint = e.run_dir / "run" / "checkpoints" / "step_000001"
    alone = compare("tiny", checkpoint, read_prompts("demo"), steps=2, guidance=3.0)
    assert ev.result["checkpoint"][1] == pytest.approx(alone["checkpoint"]["temporal_flickering_all"], abs=1e-9)
    assert ev.result["columns"][1] == "temporal_flickering_all"
    rows = dict(ev.difference_rows)
    # column 0 is flickering on the videos the static filter keeps (maybe none); 1-5 are on every video
    assert all(cell.endswith(f"/{n}") for cell in rows["better on"][1:6])
    assert rows["difference"][-1] == "–"  # the quality score is not per video
    base, tuned = (row for _, row in ev.rows)
    assert float(rows["difference"][1]) == pytest.approx(float(tuned[1]) - float(base[1]), abs=0.011)
    html = logged_in(owner).get(reverse("experiments:detail", args=[e.pk])).content.decode()
    assert html.count('class="difference"') == 3 and f"{rows['better on'][1]}" in html
    # every column says what it is, and the score over proxies does not call itself VBench's
    assert "proxy (sharpness/noise/contrast, stands in for MUSIQ-SPAQ / 100" in html
    assert "not VBench&#x27;s score" in html and f"base {ev.result['static']['base'][0]}/{n}" in html
    assert "(builtin, 2 steps, CFG 3.0)" in html and f"Sampled: {n} videos each" in html
    assert "2 Euler steps on the run's schedule (flow shift 3.0)" in html

    # a schedule chosen for the evaluation (0: tiny's own, unshifted) instead of the run's: other videos
    unshifted = Evaluation.objects.create(
        experiment=e, checkpoint="step_000001", prompts="demo", sampling_steps=2, guidance=3.0, flow_shift=0.0
    )
    jobs.evaluate(unshifted.pk)
    unshifted.refresh_from_db()
    assert unshifted.status == "finished", unshifted.error
    assert unshifted.result["sampling"] == {**sampling, "flow_shift": 0.0, "flow_shift_chosen": True}
    assert unshifted.result["base"] != ev.result["base"]
    html = logged_in(owner).get(reverse("experiments:detail", args=[e.pk])).content.decode()
    assert "(builtin, 2 steps, CFG 3.0, flow shift 0.0)" in html and "2 Euler steps on the backbone's schedule" in html


def test_the_evaluation_form_starts_at_the_backbone_s_standard_sampling_and_refuses_bad_values(owner, experiment):
    """A run tuned on 6-step candidates on a shifted schedule is judged on videos sampled as the
    backbone's are by default (tiny: 20 Euler steps, CFG 4), unless the user says otherwise."""
    from webapp.experiments.forms import EvaluationForm
    from webapp.experiments.models import Evaluation

    experiment.config = validated_config({"sampling_steps": 6, "flow_shift": 3.0, "guidance": 5.0})
    experiment.save()
    experiment.checkpoint_dir("step_000001").mkdir(parents=True)
    client = logged_in(owner)
    form = client.get(reverse("experiments:detail", args=[experiment.pk])).context["evaluation_form"]
    assert (form["sampling_steps"].initial, form["guidance"].initial) == (20, 4.0)
    wan = EvaluationForm(checkpoints=["step_000001"], backbone="wan")  # a real backbone's own standard
    assert (wan["sampling_steps"].initial, wan["guidance"].initial) == (30, 5.0)
    url = reverse("experiments:evaluate", args=[experiment.pk])
    good = {"checkpoint": "step_000001", "prompts": "demo", "suite": "builtin", "sampling_steps": 20, "guidance": 4}
    for field, value, message in (
        ("sampling_steps", 0, "greater than or equal to 1"),
        ("sampling_steps", 1001, "less than or equal to 1000"),
        ("guidance", 0.5, "greater than or equal to 1"),
        ("guidance", "nan", "Enter a number"),
        ("sampling_steps", "", "required"),
        ("flow_shift", -1, "greater than or equal to 0"),
        ("flow_shift", "nan", "Enter a number"),
    ):
        r = client.post(url, {**good, field: value})
        assert r.status_code == 400 and field in r.content.decode() and message in r.content.decode(), (field, value)
    assert not Evaluation.objects.exists()
    assert client.post(url, {**good, "sampling_steps": 12, "guidance": 2.5}).status_code == 302
    ev = Evaluation.objects.get()
    assert (ev.sampling_steps, ev.guidance, ev.flow_shift) == (12, 2.5, None)  # None: the run's schedule
    assert client.post(url, {**good, "flow_shift": "1.5"}).status_code == 302
    assert Evaluation.objects.latest("created").flow_shift == 1.5


def test_data_endpoints_answer_json_not_the_login_page(owner, experiment, settings):
    """Issue 18, point 6: a script or the dashboard's fetch gets 401/403/404 JSON, never the login
    page with status 200 after a redirect (and, with DEBUG off, never Django's debug pages)."""
    settings.DEBUG = False
    r = Client().get(reverse("experiments:metrics", args=[experiment.pk]))
    assert (r.status_code, r["Content-Type"], r.json()["error"]) == (401, "application/json", "log in first")
    assert Client().get(reverse("experiments:list")).status_code == 302  # a page still goes to the login
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    r = client.post(reverse("experiments:cancel", args=[experiment.pk]), HTTP_ACCEPT="application/json")
    assert r.status_code == 403 and r.json()["error"].startswith("forbidden: CSRF")
    r = client.get(reverse("experiments:metrics", args=[experiment.pk + 1000]))
    assert (r.status_code, r.json()) == (404, {"error": "not found"})
    r = client.get(f"/experiments/{experiment.pk + 1000}/")
    assert r.status_code == 404 and "Not found" in r.content.decode() and "URLconf" not in r.content.decode()


def test_a_group_name_longer_than_the_field_is_said_with_the_field_s_limit(owner, experiment):
    client = logged_in(owner)
    r = client.post(
        reverse("experiments:bulk"), {"ids": [experiment.pk], "action": "group", "group": "g" * 121}, follow=True
    )
    assert "A group name has at most 120 characters." in r.content.decode()
    experiment.refresh_from_db()
    assert experiment.run_group == ""
    r = client.post(reverse("experiments:bulk"), {"ids": [experiment.pk], "action": "group", "group": "g" * 120})
    experiment.refresh_from_db()
    assert experiment.run_group == "g" * 120
