"""Live-update latency and dashboard first paint, against a real Daphne server.

    python benchmarks/live_latency.py [--events 300] [--interval 0.02] [--points 10000]

1. Latency: a separate process runs the worker's sink (``DatabaseSink.metrics``: database write,
   then channel-layer push) for ``--events`` steps; a websocket client connected to Daphne
   timestamps each point as it arrives. Prints p50 / p95 / max of emit -> receive (goal p95 <= 250 ms).
2. First paint: Chromium (Playwright) opens the dashboard of an experiment holding ``--points``
   metric points and reports the time from navigation to the charts drawn with every point
   counted (goal <= 1 s for 10,000).

Uses the database of DATABASE_URL (SQLite by default) and Redis of REDIS_URL; what it creates is
deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402

from webapp.experiments.forms import validated_config  # noqa: E402
from webapp.experiments.models import Experiment, MetricPoint  # noqa: E402

EMITTER = """
import os, sys, time, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django.setup()
from webapp.experiments.models import Experiment
from webapp.experiments.sink import DatabaseSink
experiment = Experiment.objects.get(pk=int(sys.argv[1]))
sink = DatabaseSink(experiment)
for step in range(1, int(sys.argv[2]) + 1):
    sink.metrics(step, {"reward/mean": step * 1e-3, "bench/sent_at": time.time()})
    time.sleep(float(sys.argv[3]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daphne(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "webapp.asgi:application"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if "Listening on" in line:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc
    raise RuntimeError("daphne did not start")


def session_cookie(user) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def latency(port: int, user, events: int, interval: float) -> list[float]:
    from websockets.sync.client import connect

    experiment = Experiment.objects.create(owner=user, name="bench: latency", config=validated_config({}))
    headers = {"Cookie": f"sessionid={session_cookie(user)}", "Origin": f"http://127.0.0.1:{port}"}
    delays, seen = [], set()
    with connect(f"ws://127.0.0.1:{port}/ws/experiments/{experiment.pk}/?after=0", additional_headers=headers) as ws:
        emitter = subprocess.Popen(
            [sys.executable, "-c", EMITTER, str(experiment.pk), str(events), str(interval)], cwd=ROOT
        )
        while len(seen) < events:
            msg = json.loads(ws.recv(timeout=60))
            now = time.time()
            if msg["type"] != "points":
                continue
            for p in msg["points"]:
                assert p["step"] not in seen, f"step {p['step']} received twice"
                seen.add(p["step"])
                delays.append(now - p["values"]["bench/sent_at"])
        emitter.wait(60)
    assert sorted(seen) == list(range(1, events + 1)), "a step went missing"
    return delays


def first_paint(port: int, user, password: str, points: int) -> float:
    from playwright.sync_api import sync_playwright

    experiment = Experiment.objects.create(owner=user, name="bench: first paint", config=validated_config({}))
    keys = (
        "reward/mean",
        "reward/min",
        "reward/max",
        "reward/margin",
        "dpo/loss",
        "dpo/implicit_acc",
        "perf/step_s",
        "heldout/temporal",
        "heldout/dynamic",
    )
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(
                experiment=experiment,
                step=s,
                wall=s * 5.0,
                values={k: 0.5 + 0.1 * ((s * (i + 3)) % 17) / 17 for i, k in enumerate(keys)},
            )
            for s in range(1, points + 1)
        ],
        batch_size=2000,
    )
    url = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page()
        page.goto(f"{url}/accounts/login/")
        page.fill("input[name=username]", user.username)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/experiments/")
        times = []
        for _ in range(3):
            page.goto(f"{url}/experiments/{experiment.pk}/")
            page.wait_for_function(
                f"document.querySelector('#point-count').dataset.count == '{points}' && "
                "document.querySelectorAll('#charts .uplot').length >= 5",
                timeout=30_000,
            )
            times.append(page.evaluate("performance.now()") / 1000)  # since navigation start
        browser.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between emitted steps")
    ap.add_argument("--points", type=int, default=10_000)
    args = ap.parse_args()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)
    password = "bench-" + os.urandom(8).hex()
    user = get_user_model().objects.create_user(f"bench-{os.getpid()}", password=password)
    port = free_port()
    server = start_daphne(port)
    try:
        delays = sorted(latency(port, user, args.events, args.interval))
        ms = [d * 1000 for d in delays]
        p50, p95 = statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]
        print(
            f"1. emit (worker sink: DB write, then push) -> websocket receive, {len(ms)} events "
            f"every {args.interval * 1000:.0f} ms:"
        )
        print(
            f"   p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms; goal p95 <= 250 ms: "
            f"{'met' if p95 <= 250 else 'NOT met'}"
        )
        paint = first_paint(port, user, password, args.points)
        print(
            f"2. first paint of a dashboard with {args.points:,} points (median of 3 loads, Chromium): "
            f"{paint * 1000:.0f} ms; goal <= 1 s: {'met' if paint <= 1 else 'NOT met'}"
        )
    finally:
        server.terminate()
        user.delete()  # cascades to the experiments and their points


if __name__ == "__main__":
    main()
