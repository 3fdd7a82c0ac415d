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
    tab.click("text=Compare selected")
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
