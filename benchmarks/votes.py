"""Vote throughput and integrity of the volunteer endpoint, against live servers on loopback with
PostgreSQL: the production layout's HTTP server (gunicorn, sync workers) and Daphne (command A's
single server) side by side, the same load on each.

    python benchmarks/votes.py [--participants 60] [--trials 20] [--replays 0.1]
                               [--server gunicorn --server daphne] [--workers 2 x CPUs] [--proxy]

A scratch database (``vpo_bench`` on the PostgreSQL of ``BENCH_POSTGRES``, default the local
server) gets a study per server; ``--participants`` volunteers join through the consent form at
the same time and each votes on ``--trials`` trials over keep-alive connections, a ``--replays``
share of the votes sent twice (half at once, as a double click; half later with the other choice,
as a replay). Checks afterwards: no vote lost, none counted twice, every replay answered like the
original. Prints throughput, latency percentiles and where the CPU went (goal >= 300 votes/s, 2
cores, client and server on the same machine). Rate limits are raised for the run: everyone comes
from 127.0.0.1. ``--server uvicorn`` (needs ``pip install uvicorn[standard]``, not a dependency)
serves the ASGI app for comparison. ``--proxy`` puts deploy/nginx.conf in front of each server,
as docker-compose does (needs Debian's nginx). Why two servers in production: docs/votes.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN_URL = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
BENCH_URL = ADMIN_URL.rsplit("/", 1)[0] + "/vpo_bench"
os.environ["DATABASE_URL"] = BENCH_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
SERVER_ENV = {
    **os.environ,
    "DATABASE_URL": BENCH_URL,
    "DEBUG": "0",
    "SECRET_KEY": "bench-" + "k" * 50,
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "0",
    "VPO_VOTES_PER_MINUTE_PER_PARTICIPANT": "100000",
    "VPO_VOTES_PER_MINUTE_PER_IP": "1000000",
    "VPO_JOINS_PER_HOUR_PER_IP": "100000",
}


# how each server is started on the listening socket FD with N worker processes: gunicorn forks
# its workers itself; the ASGI servers run as N processes sharing the socket
SERVERS = {
    "gunicorn": lambda fd, n: [
        ["gunicorn", "--preload", "--workers", str(n), "--bind", f"fd://{fd}", "webapp.wsgi:application"]
    ],
    "daphne": lambda fd, n: [["daphne", "--fd", str(fd), "webapp.asgi:application"]] * n,
    "uvicorn": lambda fd, n: (
        [
            [
                "uvicorn",
                "--no-access-log",
                "--lifespan",
                "off",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--fd",
                str(fd),
                "webapp.asgi:application",
            ]
        ]
        * n
    ),
}


def cpu_seconds(*groups: list[int]) -> list[float]:
    """CPU seconds used so far by each group of processes with their children (gunicorn's and
    nginx's workers), then by PostgreSQL's processes; one pass over /proc."""
    stats = {}  # pid -> (parent pid, name, CPU seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            fields = tail.split()
            stats[int(entry.name)] = (
                int(fields[1]),
                head.split("(", 1)[1],
                (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
            )
    totals = []
    for pids in groups:
        tree = set(pids)
        for _ in range(3):  # children, grandchildren
            tree |= {pid for pid, (ppid, _, _) in stats.items() if ppid in tree}
        totals.append(sum(stats[pid][2] for pid in tree if pid in stats))
    return [*totals, sum(cpu for _, name, cpu in stats.values() if name == "postgres")]


def recreate_database() -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS vpo_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE vpo_bench")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=SERVER_ENV, check=True)


def make_study(n_trials: int):
    """A study with enough pairwise trials for every volunteer (clip rows only: votes never read files)."""
    from django.contrib.auth import get_user_model

    from webapp.studies.models import Clip, Study, StudyStatus, System

    owner, _ = get_user_model().objects.get_or_create(username="bench-owner")
    prompts = [f"prompt {i}" for i in range(n_trials)]
    study = Study.objects.create(
        owner=owner,
        name="bench",
        prompts="\n".join(prompts),
        status=StudyStatus.OPEN,
        trials_per_participant=n_trials,
        gold_rate=0.0,
    )
    for label in ("base", "tuned"):
        system = System.objects.create(study=study, label=label)
        Clip.objects.bulk_create(
            [Clip(study=study, system=system, prompt=p, seed=0, degraded=d) for p in prompts for d in (False, True)]
        )
    study.build_trials()
    return study


class Volunteer:
    """One keep-alive connection, the study's cookies, and the CSRF token."""

    def __init__(self, port: int, study_token: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.study_token = study_token
        self.cookies: dict[str, str] = {}

    def request(self, method, path, body=None, headers=None):
        headers = {**(headers or {}), "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        for header, value in r.getheaders():
            if header.lower() == "set-cookie":
                name, val = value.split(";", 1)[0].split("=", 1)
                self.cookies[name] = val
        return r.status, r.getheader("Location"), data

    def join(self) -> str:
        self.request("GET", f"/s/{self.study_token}/")
        status, location, _ = self.request(
            "POST",
            f"/s/{self.study_token}/",
            urlencode({"consent": "1", "csrfmiddlewaretoken": self.cookies["csrftoken"]}),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 302, status
        return re.search(r"/p/([^/]+)/", location).group(1)

    def vote(self, ptoken: str, trial: int, choice: str) -> tuple[int, bytes, float]:
        t = time.perf_counter()
        status, _, body = self.request(
            "POST",
            f"/s/{self.study_token}/p/{ptoken}/vote",
            json.dumps({"trial": trial, "choice": choice}),
            {"Content-Type": "application/json", "X-CSRFToken": self.cookies["csrftoken"]},
        )
        return status, body, time.perf_counter() - t


def answering(port: int, processes: list[subprocess.Popen], what: str) -> int:
    """Waits until /healthz on ``port`` answers 200; returns ``port``."""
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return port
        except OSError:
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise SystemExit(f"{what} did not start (exit codes {[p.poll() for p in processes]})")
        time.sleep(0.2)


def start(server: str, workers: int, env: dict) -> tuple[list[subprocess.Popen], int]:
    """``workers`` processes of ``server`` on one listening socket; returns once it answers."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    processes = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / argv[0]), *argv[1:]],
            cwd=ROOT,
            env=env,
            pass_fds=[listener.fileno()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for argv in SERVERS[server](listener.fileno(), workers)
    ]
    listener.close()  # the servers hold it
    return processes, answering(port, processes, server)


def start_proxy(web: int, scratch: Path) -> tuple[subprocess.Popen, int]:
    """deploy/nginx.conf in front of ``web`` (its websocket upstream unused here)."""
    from deploy import local_nginx

    if not os.path.exists(local_nginx.NGINX):
        raise SystemExit("--proxy runs Debian's nginx, which is not installed: apt-get install nginx")

    def free_port() -> int:
        with socket.create_server(("127.0.0.1", 0)) as s:
            return s.getsockname()[1]

    port = free_port()
    nginx = local_nginx.start(scratch, port, web, free_port())
    return nginx, answering(port, [nginx], "nginx")


def run(server: str, args) -> dict:
    """One server under the whole load; returns its figures (and whether integrity held)."""
    import django

    from webapp.studies.models import Participant, Vote

    study = make_study(args.trials)
    servers, port = start(server, args.workers, {**SERVER_ENV, "VPO_PROXIES": str(int(args.proxy))})
    scratch, proxies = tempfile.TemporaryDirectory(), []
    if args.proxy:  # the volunteers talk to nginx, nginx to the server
        nginx, port = start_proxy(port, Path(scratch.name))
        proxies.append(nginx)
    latencies, failures, replays_checked, lock = [], [], [0], threading.Lock()
    first_answer: dict[tuple[str, int], tuple[str, bytes]] = {}

    def run_threads(target, n):
        def guarded(i):
            try:
                target(i)
            except Exception as e:  # counted, and the run fails
                with lock:
                    failures.append((f"volunteer {i}", repr(e)))

        threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    # 1. everyone joins through the consent form (concurrently)
    volunteers = [Volunteer(port, study.token) for _ in range(args.participants)]
    ptokens = [None] * args.participants

    def join(i):
        ptokens[i] = volunteers[i].join()

    run_threads(join, args.participants)
    plans = dict(Participant.objects.filter(study=study).values_list("token", "plan"))
    django.db.connections.close_all()  # the harness holds no connection while the server works

    # 2. everyone votes at once; some votes are sent twice
    def vote_as(i: int):
        rng, v, ptoken = random.Random(i), volunteers[i], ptokens[i]
        later = []
        for item in plans[ptoken]:
            choice = rng.choice(("left", "right", "tie"))
            status, body, dt = v.vote(ptoken, item["trial"], choice)
            with lock:
                latencies.append(dt)
                first_answer[(ptoken, item["trial"])] = (choice, body)
                if status != 200:
                    failures.append((status, body[:200]))
            if rng.random() < args.replays:
                if rng.random() < 0.5:  # a double click: the same vote again at once
                    status2, body2, dt = v.vote(ptoken, item["trial"], choice)
                    with lock:
                        latencies.append(dt)
                        replays_checked[0] += 1
                        if (status2, body2) != (status, body):
                            failures.append(("double click answered differently", body2[:200]))
                else:
                    later.append(item["trial"])
        for trial in later:  # replays after the end, with the other choice
            choice, _ = first_answer[(ptoken, trial)]
            status2, body2, dt = v.vote(ptoken, trial, "right" if choice == "left" else "left")
            with lock:
                latencies.append(dt)
                replays_checked[0] += 1
                if status2 != 200 or json.loads(body2)["stored"] is not True:
                    failures.append(("replay refused", body2[:200]))

    def cpu_now():  # server, proxy, PostgreSQL, load generator
        return [*cpu_seconds([p.pid for p in servers], [p.pid for p in proxies]), time.process_time()]

    cpu = cpu_now()
    wall = run_threads(vote_as, args.participants)
    cpu = [after - before for before, after in zip(cpu, cpu_now())]
    for p in servers + proxies:
        p.terminate()
    for p in servers + proxies:
        p.wait()
    scratch.cleanup()

    expected = args.participants * args.trials
    stored = Vote.objects.filter(trial__study=study).count()
    kept = {
        (p, t): c
        for p, t, c in Vote.objects.filter(trial__study=study).values_list("participant__token", "trial_id", "choice")
    }
    wrong_choice = sum(kept.get(key) != c for key, (c, _) in first_answer.items())
    ms = sorted(1000 * x for x in latencies) or [float("nan")]
    rate = len(ms) / wall
    print(
        f"{server}, {args.workers} process(es){' behind nginx' if args.proxy else ''}: {args.participants} "
        f"concurrent volunteers x {args.trials} votes, "
        f"{replays_checked[0]} replays or double clicks ({len(ms)} requests), PostgreSQL, {os.cpu_count()} CPUs"
    )
    print(
        f"  stored {stored} of {expected} votes: lost {expected - stored}, counted twice "
        f"{max(0, stored - expected)}, first choice kept: {expected - wrong_choice}/{expected}; "
        f"failures {len(failures)}"
    )
    print(f"  throughput {rate:.0f} requests/s, {expected / wall:.0f} stored votes/s ({wall:.2f} s)")
    print(
        f"  latency p50 {statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms, "
        f"p99 {ms[int(0.99 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"
    )
    per = [f"{1000 * c / len(ms):.2f}" for c in cpu]
    print(
        f"  CPU per request: server {per[0]} ms, {f'nginx {per[1]} ms, ' if args.proxy else ''}PostgreSQL {per[2]} ms, "
        f"load generator {per[3]} ms (of {1000 * wall * (os.cpu_count() or 1) / len(ms):.2f} "
        f"ms of CPU time per request on the machine)"
    )
    for f in failures[:3]:
        print("  failure:", f)
    return {
        "rate": rate,
        "p99": ms[int(0.99 * (len(ms) - 1))],
        "ok": not failures and stored == expected and not wrong_choice,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--participants", type=int, default=60)
    ap.add_argument("--trials", type=int, default=20, help="votes per participant")
    ap.add_argument("--replays", type=float, default=0.1, help="share of votes sent twice")
    ap.add_argument(
        "--server",
        action="append",
        choices=sorted(SERVERS),
        help="a server to measure, repeatable (default: gunicorn, then daphne)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=2 * (os.cpu_count() or 1),
        help="server processes (default: 2 per CPU, as docker-compose runs gunicorn)",
    )
    ap.add_argument(
        "--proxy",
        action="store_true",
        help="put deploy/nginx.conf (Debian's nginx) in front of each server, as docker-compose does",
    )
    args = ap.parse_args()
    servers = args.server or ["gunicorn", "daphne"]
    recreate_database()
    import django

    django.setup()
    results = {server: run(server, args) for server in servers}
    if len(servers) > 1:
        first = servers[0]
        print(
            "  ".join(
                f"{first}/{other} throughput {results[first]['rate'] / results[other]['rate']:.2f}x"
                for other in servers[1:]
            )
        )
    for server, r in results.items():
        print(f"goal >= 300 votes/s on {server}: {'met' if r['rate'] >= 300 else 'NOT met'} ({r['rate']:.0f})")
    if not all(r["ok"] for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
