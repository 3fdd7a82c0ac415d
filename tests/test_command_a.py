"""Command A (``scripts/run.sh``) as users run it (issue 18, points 3 and 6): it serves with DEBUG
off (friendly 404 page, static files still served, 401 JSON from a data endpoint), and INT or TERM
stops all of it — the worker, Daphne and the script — also when it was started in the background
(``setsid bash scripts/run.sh &``), where the shell starts it with SIGINT ignored. Real processes:
the script's own set-up, worker and Daphne on the test database and the Redis of REDIS_URL."""

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT, free_port, subprocess_database_url
from tests.test_web_browser import browser, page  # noqa: F401 (fixtures)

STOP_WITHIN_S = 15


def state(pid: int) -> str | None:
    """The process's state letter, None once it is gone (a zombie counts as gone: it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if s in ("Z", "X") else s


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


class CommandA:
    def __init__(self, tmp_path, background: bool):
        self.port, self.log = free_port(), tmp_path / "run.log"
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DATABASE_URL": subprocess_database_url(),
            "MEDIA_ROOT": str(tmp_path / "media"),
            "PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DEBUG", None)  # what the script sets is what is tested
        if background:
            # a job in the background of a shell without job control, in a session of its own
            out = subprocess.run(
                ["bash", "-c", f"setsid bash scripts/run.sh > {self.log} 2>&1 & echo $!"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            self.pid = int(out.stdout)
        else:  # a terminal's foreground job: its own process group, signals at their defaults
            with open(self.log, "w") as log:
                self.pid = subprocess.Popen(
                    ["bash", "scripts/run.sh"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ).pid
        deadline = time.time() + 600  # set-up, the demo videos, then the worker and Daphne
        while not (self.serving() and "ready." in (ROOT / "runs" / "worker.log").read_text(errors="replace")):
            assert state(self.pid) and time.time() < deadline, "command A did not start:\n" + self.output()
            time.sleep(0.5)
        self.processes = {self.pid} | descendants(self.pid)

    def serving(self) -> bool:
        try:
            return get(f"{self.url}/healthz")[0] == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_gone(self, timeout: float) -> list[int]:
        deadline = time.time() + timeout
        while time.time() < deadline and any(state(p) for p in self.processes):
            time.sleep(0.1)
        return [p for p in self.processes if state(p)]

    def kill(self):
        for p in self.processes:
            if state(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.timeout(900)
def test_command_a_in_the_background_serves_without_debug_and_sigint_to_its_group_stops_everything(
    transactional_db,
    tmp_path,
    page,  # noqa: F811
):
    app = CommandA(tmp_path, background=True)
    try:
        assert len(app.processes) >= 3, app.processes  # the script, the worker, Daphne
        # DEBUG off: a friendly 404 (no URL patterns), static files served, JSON endpoints say 401
        status, kind, body = get(f"{app.url}/no/such/page")
        assert status == 404 and "Not found" in body and "URLconf" not in body and "DEBUG" not in body
        status, kind, body = get(f"{app.url}/static/experiments/app.css")
        assert status == 200 and kind.startswith("text/css") and "--accent" in body
        status, kind, body = get(f"{app.url}/experiments/1/metrics.json")
        assert (status, kind, json.loads(body)["error"]) == (401, "application/json", "log in first")
        password = re.search(r"demo account: username 'demo', password '([^']+)'", app.log.read_text())[1]
        page.goto(f"{app.url}/experiments/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{app.url}/experiments/")  # logs in over plain HTTP with DEBUG off
        assert page.evaluate("getComputedStyle(document.querySelector('header.top')).display") == "flex"
        response = page.goto(f"{app.url}/experiments/999999/")
        assert response.status == 404 and "Not found" in page.text_content("h1")
        assert "Back to your experiments" in page.text_content("main")
        missing = page.request.get(f"{app.url}/experiments/999999/metrics.json")
        assert missing.status == 404 and missing.json() == {"error": "not found"}

        os.killpg(app.pid, signal.SIGINT)  # Ctrl-C to the group, as `kill -INT -PGID` does
        left = app.wait_gone(STOP_WITHIN_S)
        assert not left, f"still running {STOP_WITHIN_S} s after SIGINT: {left}\n{app.output()}"
    finally:
        app.kill()


@pytest.mark.timeout(900)
def test_command_a_in_the_foreground_stops_everything_on_sigterm_to_the_script_alone(transactional_db, tmp_path):
    app = CommandA(tmp_path, background=False)
    try:
        os.kill(app.pid, signal.SIGTERM)  # `kill PID`, a service manager's stop
        left = app.wait_gone(STOP_WITHIN_S)
        assert not left, f"still running {STOP_WITHIN_S} s after SIGTERM: {left}\n{app.output()}"
        assert "stopping VPO Studio" in app.output()
    finally:
        app.kill()
