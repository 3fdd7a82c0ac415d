import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load ships with the packages or this repo.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# This session's own Redis namespace (queues, channel layer, rate limits), inherited by the worker
# and server processes it starts: a running app or another test session on the same Redis is
# neither disturbed nor able to take this session's tasks.
REDIS_PREFIX = os.environ["VPO_REDIS_PREFIX"] = f"vpo-test-{os.getpid()}"


def pytest_configure(config):
    # pytest-django imported the settings before this file: give them the namespace too
    from django.conf import settings

    settings.REDIS_PREFIX = REDIS_PREFIX
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"{REDIS_PREFIX}:asgi"


ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def as_if_pretrained(backbone):
    """A fresh tiny model outputs 0 (zero-initialised gates): move every transformer parameter by
    0.05 N(0, 1) (torch's global generator) so that every path counts, as if pretrained."""
    import torch

    with torch.no_grad():
        for p in backbone.transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return backbone


@pytest.fixture(scope="session")
def tiny():
    """The shipped tiny backbone, loaded once per test session."""
    from vpo.backbones import load_backbone

    return load_backbone("tiny")


@pytest.fixture
def quick_checkpoint():
    """Train a real one-step run of the tiny backbone into ``out`` (TrainConfig fields override the
    quick defaults), so that there is a checkpoint (``step_000001``) to evaluate or to put in a
    study; returns its folder."""

    def make(out, **overrides):
        from vpo.train import train
        from vpo.train.checkpoints import latest_checkpoint
        from vpo.train.config import TrainConfig
        from vpo.train.sinks import JsonlSink

        cfg = TrainConfig.from_dict(
            {
                "steps": 1,
                "num_candidates": 2,
                "sampling_steps": 4,
                "heldout_every": 0,
                "checkpoint_every": 1,
                "prompts": "demo",
                **overrides,
                "out": str(out),
            }
        )
        sink = JsonlSink(cfg.out, 1, progress=False)
        try:
            train(cfg, sink)
        finally:
            sink.close()
        return latest_checkpoint(cfg.out)

    return make


@pytest.fixture(scope="session")
def tiny_videos(tiny, tmp_path_factory):
    """32 videos of the shipped tiny backbone (16 training prompts x 2 seeds, 6 sampling steps), as
    ``.npy`` files; returns [(path, prompt)]. What the reward-model tests learn a rule on."""
    import numpy as np

    from vpo.data.prompts import read_prompts

    folder = tmp_path_factory.mktemp("tiny_videos")
    prompts = [p for p in read_prompts("train")[:16] for _ in range(2)]
    seeds = [7_000 + i for i in range(len(prompts))]
    videos = tiny.sample_many(prompts, seeds, steps=6, guidance=4.0, chunk=16).numpy()
    items = []
    for i, (video, prompt) in enumerate(zip(videos, prompts)):
        np.save(folder / f"{i:03d}.npy", video)
        items.append((folder / f"{i:03d}.npy", prompt))
    return items


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_database_url() -> str:
    """The URL of the database pytest-django made, for the processes the tests start."""
    from django.db import connection

    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class Process:
    """A subprocess whose output is kept (and shown when a test fails)."""

    def __init__(self, name, cmd, env, ready: str, timeout: float = 120):
        self.name, self.lines = name, []
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + timeout
        while not any(ready in line for line in self.lines):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n" + "".join(self.lines[-40:]))
            time.sleep(0.1)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A ``$VPO_MODELS_DIR``: tiny random diffusers pipelines of the real backbones, saved as a
    downloaded diffusers repository is laid out (``vpo.backbones.testing``), built once per session."""
    from vpo.backbones.testing import BUILDERS, save_tiny_pipeline

    root = tmp_path_factory.mktemp("models")
    for name in BUILDERS:
        save_tiny_pipeline(name, root / name)
    return root


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker, tmp_path_factory, tiny_models):
    """A real Daphne (HTTP + websockets) and a real Celery worker process on the test database, the
    Redis of REDIS_URL as broker and channel layer, the tiny real-backbone pipelines as its
    ``VPO_MODELS_DIR``. Yields the server's base URL."""
    media = tmp_path_factory.mktemp("media")
    with django_db_blocker.unblock():
        env = {
            **os.environ,
            "DATABASE_URL": subprocess_database_url(),
            "MEDIA_ROOT": str(media),
            "DEBUG": "1",
            "PYTHONUNBUFFERED": "1",
            "VPO_MODELS_DIR": str(tiny_models),
        }
    port = free_port()
    worker = Process(
        "celery worker",
        [
            str(BIN / "celery"),
            "-A",
            "worker.celery",
            "worker",
            "-Q",
            "gpu,cpu",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
            "-n",
            f"test-{port}@%h",
        ],
        env,
        ready="ready.",
    )
    server = Process(
        "daphne",
        [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "webapp.asgi:application"],
        env,
        ready="Listening on",
    )
    from django.conf import settings

    old_media = settings.MEDIA_ROOT
    settings.MEDIA_ROOT = media
    try:
        yield type(
            "Stack",
            (),
            {
                "url": f"http://127.0.0.1:{port}",
                "port": port,
                "worker": worker,
                "server": server,
                "media": media,
                "models": tiny_models,
            },
        )
    finally:
        settings.MEDIA_ROOT = old_media
        server.stop()
        worker.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the live stack's process output to the report."""
    report = yield
    stack = item.funcargs.get("live_stack") if hasattr(item, "funcargs") else None
    if report.failed and stack is not None:
        for proc in (stack.worker, stack.server):
            report.sections.append((f"{proc.name} output", "".join(proc.lines[-60:])))
    return report


@pytest.fixture(scope="session", autouse=True)
def redis_namespace():
    """Deletes this session's Redis keys at the end (queued tasks, rate-limit counters)."""
    prefix = REDIS_PREFIX
    yield prefix
    import redis

    try:
        r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), socket_connect_timeout=1)
        for key in r.scan_iter(f"{prefix}:*", count=1000):
            r.delete(key)
    except redis.RedisError:
        pass  # no Redis, nothing written
