"""The new-experiment form in a real browser (Playwright, Chromium) against the live Daphne and
worker (issue 18, points 1 and 10): what cannot run is greyed out with why and refused if posted
anyway, the labels are words, only the chosen algorithm's fields show, and every error shows at once."""

import pytest
from django.contrib.auth import get_user_model

from tests.test_web_browser import browser, log_in, page  # noqa: F401 (fixtures)
from webapp.experiments.models import Experiment


@pytest.fixture
def on_the_form(live_stack, transactional_db, page):  # noqa: F811
    get_user_model().objects.create_user("dana", password="pw-dana-long")
    log_in(page, live_stack.url, "dana", "pw-dana-long")
    page.goto(f"{live_stack.url}/experiments/new/")
    return page


def field_errors(tab, name: str) -> str:
    return " ".join(tab.locator(f"#field-{name} .error").all_text_contents())


def test_what_cannot_run_is_greyed_out_with_why_and_refused_at_the_form(on_the_form):
    tab = on_the_form
    option = tab.locator("#id_reward option[value=videoscore]")  # no VPO_VIDEOSCORE_DIR here
    assert option.is_disabled() and "VPO_VIDEOSCORE_DIR" in option.get_attribute("title")
    assert "(no weights)" in option.text_content()
    # posted anyway (the option enabled by hand), with sizes that never end or cannot fit
    tab.evaluate("document.querySelector('#id_reward option[value=videoscore]').disabled = false")
    tab.select_option("#id_reward", "videoscore")
    tab.fill("#id_name", "too big")
    tab.fill("#id_steps", "999999999999")
    tab.fill("#id_frames", "100000")
    tab.click("#launch")
    tab.wait_for_selector("#error-summary")
    assert "VPO_VIDEOSCORE_DIR" in field_errors(tab, "reward")
    assert "Steps must be <= 100,000" in field_errors(tab, "steps")
    assert "Frames must be <= 321" in field_errors(tab, "frames")
    assert not Experiment.objects.exists()


def test_labels_are_words_fields_follow_the_algorithm_and_every_error_shows_at_once(on_the_form):
    tab = on_the_form
    labels = tab.locator("form.config label").all_text_contents()
    assert labels and not [t for t in labels if "_" in t or "REGISTR" in t.upper()], labels
    assert "BACKBONES" not in tab.text_content("form.config")
    assert tab.text_content("label[for=id_num_candidates]").strip() == "Candidates per prompt (N)"
    assert "*" in tab.text_content("label[for=id_name]")  # the one required field is marked

    assert tab.is_hidden("#field-refl_depth") and tab.is_visible("#field-beta")  # online-dpo
    tab.select_option("#id_algorithm", "refl")
    assert tab.is_visible("#field-refl_depth") and tab.is_hidden("#field-beta")
    assert tab.is_hidden("#field-num_candidates") and tab.is_visible("#field-steps")
    tab.select_option("#id_algorithm", "offline-dpo")
    assert tab.is_hidden("#field-refl_depth") and tab.is_visible("#field-noise_draws")

    # no name, letters in a number field, a bad value elsewhere: all three reported at once
    tab.fill("#id_steps", "sixty")
    tab.fill("#id_num_candidates", "1")
    tab.fill("#id_lr", "fast")
    tab.click("#launch")
    tab.wait_for_selector("#error-summary")
    assert "Name the run" in " ".join(tab.locator("#field-name .error").all_text_contents())
    assert field_errors(tab, "steps") == "Steps must be a whole number"
    assert "Candidates per prompt (N) must be >= 2" in field_errors(tab, "num_candidates")  # labels, not field names
    assert "Learning rate must be a number" in field_errors(tab, "lr")
    assert tab.locator("#error-summary li").count() == 4
    assert tab.input_value("#id_algorithm") == "offline-dpo" and tab.is_hidden("#field-refl_depth")
    assert not Experiment.objects.exists()
