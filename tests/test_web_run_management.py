"""The runs table and a run's management in a real browser (Playwright, Chromium; issue 18, point
8): search, filter, sort, rename, tags, notes, group, download, archive and delete with the files."""

import zipfile

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from tests.test_web_browser import browser, log_in, page  # noqa: F401 (fixtures)
from webapp.experiments.forms import validated_config
from webapp.experiments.models import Experiment, MetricPoint


def names(tab) -> list[str]:
    return [n.strip() for n in tab.locator("#runs a.run-name").all_text_contents()]


@pytest.fixture
def runs(live_stack, transactional_db, settings):
    settings.MEDIA_ROOT = live_stack.media
    owner = get_user_model().objects.create_user("erin", password="pw-erin-long")
    made = {}
    for name, status, last, group, tags in [
        ("seed 0", "finished", 0.5, "lr 1e-3", []),
        ("seed 1", "finished", 0.7, "lr 1e-3", []),
        ("baseline", "finished", 0.6, "", ["baseline"]),
        ("live one", "running", None, "", []),
    ]:
        e = Experiment.objects.create(
            owner=owner,
            name=name,
            config=validated_config({}),
            status=status,
            last_reward=last,
            run_group=group,
            tags=tags,
        )
        checkpoint = e.run_dir / "run" / "checkpoints" / "step_000010"
        checkpoint.mkdir(parents=True)
        (checkpoint / "adapter.safetensors").write_bytes(b"weights")
        (e.run_dir / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
        for step in (1, 2, 3):
            MetricPoint.objects.create(
                experiment=e,
                step=step,
                wall=step,
                values={"reward/mean": (last or 0) * step, "dpo/loss": 0.7 - step / 100},
            )
        made[name] = e
    return made


@pytest.mark.timeout(600)
def test_search_filter_sort_rename_tag_download_archive_and_delete_runs(live_stack, runs, page, tmp_path):  # noqa: F811
    tab = page
    log_in(tab, live_stack.url, "erin", "pw-erin-long")
    assert sorted(names(tab)) == ["baseline", "live one", "seed 0", "seed 1"]

    tab.fill("#search", "seed")
    tab.click("#apply-filters")
    assert sorted(names(tab)) == ["seed 0", "seed 1"]
    tab.click("#sort-last")  # highest last reward first
    assert names(tab) == ["seed 1", "seed 0"]
    tab.click("#sort-last")  # and back
    assert names(tab) == ["seed 0", "seed 1"]
    tab.goto(f"{live_stack.url}/experiments/?status=running")
    assert names(tab) == ["live one"]
    tab.goto(f"{live_stack.url}/experiments/?group=lr+1e-3&sort=-last")
    assert names(tab) == ["seed 1", "seed 0"]

    # compare: each run by its name, in its line's colour
    tab.goto(f"{live_stack.url}/experiments/?group=lr+1e-3")
    tab.check(f"input[name=ids][value='{runs['seed 0'].pk}']")
    tab.check(f"input[name=ids][value='{runs['seed 1'].pk}']")
    tab.click("#compare-selected")
    tab.wait_for_selector("#charts .uplot")
    assert tab.locator("#charts .uplot").count() == 2  # every metric its panel, reward first
    assert "reward/mean" in tab.text_content("#charts .chart >> nth=0")
    legend = tab.text_content("#charts .u-legend")
    assert f"seed 0 (#{runs['seed 0'].pk})" in legend and f"seed 1 (#{runs['seed 1'].pk})" in legend, legend
    swatches = tab.locator(".legend .swatch")
    colours = [swatches.nth(i).evaluate("s => getComputedStyle(s).backgroundColor") for i in range(2)]
    assert colours[0] != colours[1] and "rgba(0, 0, 0, 0)" not in colours, colours
    tab.check("#group-runs")  # the two seeds of group "lr 1e-3": their mean, with a min-max band
    legend = tab.text_content("#charts .u-legend")
    assert "lr 1e-3 (mean of 2)" in legend and "lr 1e-3 min" in legend and "seed 0 (#" not in legend, legend

    # rename, tag, group and annotate a run from its page
    seed0 = runs["seed 0"]
    tab.goto(f"{live_stack.url}/experiments/{seed0.pk}/")
    tab.click("#manage summary")
    tab.fill("#id_name", "seed 0 (lr 1e-3)")
    tab.fill("#id_tags", "Sweep, seeds, sweep")
    tab.fill("#id_notes", "first try; loss flat after step 20")
    tab.click("#save-details")
    tab.wait_for_url(f"**/experiments/{seed0.pk}/")
    assert tab.text_content("h1").startswith("seed 0 (lr 1e-3)")
    seed0.refresh_from_db()
    assert (seed0.name, seed0.tags, seed0.notes) == (
        "seed 0 (lr 1e-3)",
        ["sweep", "seeds"],
        "first try; loss flat after step 20",
    )
    tab.goto(f"{live_stack.url}/experiments/?q=flat")  # notes are searched
    assert names(tab) == ["seed 0 (lr 1e-3)"]
    tab.goto(f"{live_stack.url}/experiments/")
    tab.click("#runs a.tag >> text=sweep")
    assert names(tab) == ["seed 0 (lr 1e-3)"]

    # download the run folder, then one checkpoint
    tab.goto(f"{live_stack.url}/experiments/{seed0.pk}/")
    tab.click("#manage summary")
    with tab.expect_download() as download:
        tab.click("#download-run")
    path = tmp_path / "run.zip"
    download.value.save_as(path)
    with zipfile.ZipFile(path) as z:
        files = sorted(n.split("/", 1)[1] for n in z.namelist())
        assert files == ["run/checkpoints/step_000010/adapter.safetensors", "run/metrics.jsonl"], files
    with tab.expect_download() as download:
        tab.click("text=step_000010 (.zip)")
    assert download.value.suggested_filename.endswith("-step_000010.zip")

    # archive: off the list, back with the filter; then delete with its files
    tab.click("#archive")
    tab.goto(f"{live_stack.url}/experiments/")
    assert "seed 0 (lr 1e-3)" not in names(tab)
    tab.select_option("#filter-archived", "all")
    tab.click("#apply-filters")
    assert "seed 0 (lr 1e-3)" in names(tab)
    tab.goto(f"{live_stack.url}/experiments/{seed0.pk}/")
    tab.click("#manage summary")
    tab.check("#confirm-delete")
    tab.click("#delete")
    tab.wait_for_url(f"{live_stack.url}/experiments/")
    assert not Experiment.objects.filter(pk=seed0.pk).exists() and not seed0.run_dir.exists()
    assert runs["seed 1"].run_dir.exists()  # only its own files
    # a running run cannot be deleted: cancel first
    tab.goto(f"{live_stack.url}/experiments/{runs['live one'].pk}/")
    assert tab.locator("#delete").count() == 0
    client = Client()
    client.force_login(runs["live one"].owner)
    r = client.post(reverse("experiments:delete", args=[runs["live one"].pk]), {"confirm": "delete"})
    assert r.status_code == 409 and "cancel it first" in r.content.decode()
    assert runs["live one"].run_dir.exists()


@pytest.mark.timeout(600)
def test_bulk_actions_and_compare_every_group_as_its_mean_in_its_band(live_stack, runs, page):  # noqa: F811
    tab = page
    owner = runs["seed 0"].owner
    for name, last in [("seed 2", 0.2), ("seed 3", 0.4)]:
        e = Experiment.objects.create(
            owner=owner,
            name=name,
            config=validated_config({}),
            status="finished",
            last_reward=last,
            run_group="lr 3e-4",
        )
        e.run_dir.mkdir(parents=True)
        for step in (1, 2, 3):
            MetricPoint.objects.create(experiment=e, step=step, wall=step, values={"reward/mean": last * step})
        runs[name] = e
    log_in(tab, live_stack.url, "erin", "pw-erin-long")

    def tick(*names):
        for name in names:
            tab.check(f"input[name=ids][value='{runs[name].pk}']")

    # compare four runs of two groups: each group its mean inside its own band, in its own colour
    tick("seed 0", "seed 1", "seed 2", "seed 3")
    tab.click("#compare-selected")
    tab.wait_for_selector("#charts .uplot")
    tab.check("#group-runs")
    legend = tab.text_content("#charts .chart >> nth=0")
    for text in ("lr 1e-3 (mean of 2)", "lr 3e-4 (mean of 2)", "lr 1e-3 min", "lr 3e-4 max"):
        assert text in legend, legend
    fills = tab.evaluate("document.querySelector('#charts .chart').vpoChart.bandFills")
    assert len(fills) == 2 and fills[0] != fills[1], fills
    ticks = tab.evaluate("document.querySelector('#charts .chart').vpoChart.ticks.x")
    assert ticks and all(t == "" or t.lstrip("-").isdigit() for t in ticks), ticks  # steps: whole numbers only

    # nothing ticked: said, nothing done
    tab.goto(f"{live_stack.url}/experiments/?sort=name")
    tab.click("#archive-selected")
    assert "Tick one or more runs to archive them." in tab.text_content("#messages")
    assert names(tab) == ["baseline", "live one", "seed 0", "seed 1", "seed 2", "seed 3"]  # the sort kept

    # set the group of two runs, then archive them
    tick("seed 2", "seed 3")
    tab.fill("#bulk-group", "lr 3e-4, warm-up")
    tab.click("#group-selected")
    assert {e.run_group for e in Experiment.objects.filter(name__in=["seed 2", "seed 3"])} == {"lr 3e-4, warm-up"}
    tick("seed 2", "seed 3")
    tab.click("#archive-selected")
    assert "Archived" in tab.text_content("#messages")
    assert names(tab) == ["baseline", "live one", "seed 0", "seed 1"]

    # delete: refused without the confirmation and while a ticked run is still going
    tab.goto(f"{live_stack.url}/experiments/?archived=all&sort=name")
    tick("seed 2", "seed 3")
    tab.click("#delete-selected")
    assert "tick the box to confirm" in tab.text_content("#messages")
    tick("seed 2", "seed 3", "live one")
    tab.check("#confirm-bulk-delete")
    tab.click("#delete-selected")
    assert f"cancel #{runs['live one'].pk} (running) first" in tab.text_content("#messages")
    assert Experiment.objects.filter(name__in=["seed 2", "seed 3", "live one"]).count() == 3
    tick("seed 2", "seed 3")
    tab.check("#confirm-bulk-delete")
    tab.click("#delete-selected")
    assert "Deleted" in tab.text_content("#messages")
    assert not Experiment.objects.filter(name__in=["seed 2", "seed 3"]).exists()
    assert not runs["seed 2"].run_dir.exists() and runs["seed 0"].run_dir.exists()

    # a tampered form: a 4xx, not a traceback
    client = Client()
    client.force_login(owner)
    assert client.post(reverse("experiments:bulk"), {"ids": ["x"], "action": "archive"}).status_code == 400
    assert (
        client.post(reverse("experiments:bulk"), {"ids": [runs["seed 0"].pk], "action": "explode"}).status_code == 400
    )
    assert client.post(reverse("experiments:bulk"), {"ids": [999999], "action": "archive"}).status_code == 404
