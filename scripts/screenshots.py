"""Regenerates the screenshots of issue 18's run-management pages under ``docs/screenshots/``:
the runs table (search, filters, tags, groups), a run's management panel, Compare with three runs
named in their colours (and the seeds of two groups, each as its mean inside its band), the launch form with every error
at once, and the friendly 404 page.

    DATABASE_URL=postgres://... .venv/bin/python scripts/screenshots.py

It makes a user ``screenshots`` with a few made-up runs (metric curves written directly, nothing
trained) in the database of ``DATABASE_URL``, serves it with Daphne as command A does (DEBUG off),
drives Debian's Chromium with Playwright, then deletes the user and its runs again.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
SERVE_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(40),
    "SECURE_SSL_REDIRECT": "0",
    "SECURE_COOKIES": "0",
    "SECURE_HSTS_SECONDS": "0",
}
os.environ.update(SERVE_ENV)
os.environ.setdefault("VPO_REDIS_PREFIX", f"vpo-screenshots-{os.getpid()}")  # queues nobody serves


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_runs(user, media: Path):
    from webapp.experiments.forms import validated_config
    from webapp.experiments.models import Experiment, MetricPoint

    rows = [
        ("online DPO, temporal, seed 0", "finished", "lr 1e-3", ["sweep"], 0.61, 60, "online-dpo"),
        ("online DPO, temporal, seed 1", "finished", "lr 1e-3", ["sweep"], 0.63, 60, "online-dpo"),
        ("online DPO, temporal, seed 2", "finished", "lr 1e-3", ["sweep"], 0.59, 60, "online-dpo"),
        ("offline DPO baseline", "finished", "", ["baseline"], 0.55, 60, "offline-dpo"),
        ("ReFL, visual", "cancelled", "", ["baseline", "refl"], 0.48, 23, "refl"),
        ("online DPO, global", "running", "", [], 0.52, 17, "online-dpo"),
        ("online DPO, temporal, lr 3e-4, seed 0", "finished", "lr 3e-4", ["sweep"], 0.57, 60, "online-dpo"),
        ("online DPO, temporal, lr 3e-4, seed 1", "finished", "lr 3e-4", ["sweep"], 0.58, 60, "online-dpo"),
    ]
    made = []
    for i, (name, status, group, tags, final, steps, algorithm) in enumerate(rows):
        config = validated_config({"algorithm": algorithm, **({"dimension": "visual"} if algorithm == "refl" else {})})
        e = Experiment.objects.create(
            owner=user,
            name=name,
            config=config,
            status=status,
            run_group=group,
            tags=tags,
            notes="loss flat after step 40" if i == 0 else "",
            last_step=steps,
            last_reward=final,
            best_reward=final + 0.02,
        )
        for step in range(1, steps + 1):
            reward = final - 0.12 * math.exp(-step / 15) + 0.01 * math.sin(step * (1.3 + i))
            MetricPoint.objects.create(
                experiment=e, step=step, wall=step * 8.0, values={"reward/mean": reward, "dpo/loss": 0.69 - step / 400}
            )
        checkpoint = media / "experiments" / str(e.pk) / "run" / "checkpoints" / f"step_{steps:06d}"
        checkpoint.mkdir(parents=True, exist_ok=True)
        made.append(e)
    return made


def main() -> int:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from playwright.sync_api import sync_playwright

    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    media = Path(tempfile.mkdtemp(prefix="vpo-screenshots-"))
    os.environ["MEDIA_ROOT"] = str(media)
    User = get_user_model()
    User.objects.filter(username="screenshots").delete()
    password = secrets.token_urlsafe(12)
    user = User.objects.create_user("screenshots", password=password)
    runs = make_runs(user, media)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "webapp.asgi:application"],
        cwd=ROOT,
        env={**os.environ, "MEDIA_ROOT": str(media)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            tab = browser.new_page(viewport={"width": 1400, "height": 800})
            tab.goto(f"{url}/accounts/login/")
            tab.fill("input[name=username]", "screenshots")
            tab.fill("input[name=password]", password)
            tab.click("button[type=submit]")
            tab.wait_for_url(f"{url}/experiments/")
            tab.goto(f"{url}/experiments/?sort=-best")
            tab.screenshot(path=OUT / "runs-table.png", full_page=True)
            tab.goto(f"{url}/experiments/?q=seed&group=lr+1e-3&sort=-last")
            tab.screenshot(path=OUT / "runs-table-filtered.png", full_page=True)
            tab.goto(f"{url}/experiments/compare/?" + "&".join(f"ids={e.pk}" for e in runs[:3]))
            tab.wait_for_selector("#charts .uplot")
            tab.wait_for_timeout(500)
            tab.screenshot(path=OUT / "compare-3-runs.png", full_page=True)
            # two groups' seeds (3 of lr 1e-3, 2 of lr 3e-4), each as its mean inside its band
            tab.goto(f"{url}/experiments/compare/?" + "&".join(f"ids={e.pk}" for e in runs[:3] + runs[6:8]))
            tab.wait_for_selector("#charts .uplot")
            tab.check("#group-runs")
            tab.wait_for_timeout(500)
            tab.screenshot(path=OUT / "compare-seeds-grouped.png", full_page=True)
            tab.goto(f"{url}/experiments/{runs[0].pk}/")
            tab.click("#manage summary")
            tab.locator("#manage").screenshot(path=OUT / "run-management.png")
            tab.goto(f"{url}/experiments/new/")
            tab.fill("#id_steps", "sixty")
            tab.fill("#id_num_candidates", "1")
            tab.fill("#id_frames", "100000")
            tab.click("#launch")
            tab.wait_for_selector("#error-summary")
            tab.screenshot(path=OUT / "launch-form-errors.png", full_page=False)
            tab.goto(f"{url}/experiments/999999/")
            tab.screenshot(path=OUT / "not-found.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(20)
        user.delete()
        subprocess.run(["rm", "-rf", str(media)], check=False)
    for path in sorted(OUT.glob("*.png")):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
