"""One training run over two processes (torch.distributed, gloo on the CPU), against one process.

Two ranks of P prompts each draw what one process of 2P prompts draws (prompts and seeds by the
prompt's index over all ranks), and their summed gradients are those of the mean over all pairs.
So after 3 steps the ranks' adapter equals the single process's up to the order of float sums:
with fp32 matmuls (``VPO_AUTOCAST=fp32``; bf16 autocast rounds a batch of 2 and two of 1
differently) the measured difference is ~5e-5 of the adapter's norm; the tolerance is 1e-3 (the
adapter moves ~3e-3 per weight in these 3 steps). The two-rank run is paused at step 2 and resumed,
so the same run also shows the pause, the resume and the logging.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vpo.backbones.base import autocast_dtype
from vpo.cli import main
from vpo.train import train
from vpo.train.config import TrainConfig
from vpo.train.distributed import combine
from vpo.train.keys import DPO_LOSS, PAIRS, REWARD_MARGIN, REWARD_MAX, REWARD_MEAN, REWARD_MIN, SKIPPED_PROMPTS
from vpo.train.sinks import JsonlSink, read_metrics

SMALL = dict(
    steps=3,
    num_candidates=2,
    sampling_steps=2,
    noise_draws=1,
    tie_tolerance=0.0,
    ref_update_every=2,
    heldout_every=3,
    heldout_count=1,
    checkpoint_every=3,
)


def run(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None):
    sink = JsonlSink(cfg.out, cfg.steps, progress=False)
    logged = []
    metrics = sink.metrics

    def record(step, values):
        logged.append(step)
        metrics(step, values)

    sink.metrics = record  # type: ignore[method-assign]
    try:
        return train(cfg, sink, stop=lambda: stop_after is not None and stop_after in logged, resume=resume)
    finally:
        sink.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("VPO_AUTOCAST", "fp32")  # the ranks inherit it
    autocast_dtype.cache_clear()  # and this process, the single-process run, reads it again
    base = tmp_path_factory.mktemp("dist")
    one = TrainConfig(**SMALL, prompts_per_step=2, nproc=1, out=str(base / "one"))
    two = TrainConfig(**SMALL, prompts_per_step=1, nproc=2, out=str(base / "two"))
    try:
        run(one)
        paused = run(two, stop_after=2)
        resumed = run(two, resume=True)
    finally:
        mp.undo()
        autocast_dtype.cache_clear()
    return one, two, paused, resumed


def lora_b(folder: Path) -> torch.Tensor:
    """The policy adapter's B matrices, zero at step 0: what training moved (A starts random)."""
    tensors = load_file(str(folder / "adapter.safetensors"))
    return torch.cat([tensors[k].flatten() for k in sorted(tensors) if ".policy." in k and "lora_B" in k])


def test_two_ranks_train_what_one_process_of_twice_the_prompts_trains(runs):
    one, two, _, resumed = runs
    assert resumed.name == "step_000003"
    # the same adapter on both ranks (each rank compares at its end: rank 0 raises if they differ)
    log0 = (resumed.parent.parent / "ranks" / "rank0.log").read_text()
    assert log0.count("the policy adapter is the same on all 2 ranks") == 2  # the paused run, the resumed one
    single, ranked = lora_b(Path(one.out) / "checkpoints" / "step_000003"), lora_b(resumed)
    assert single.norm() > 1e-3  # the adapter did move
    assert (ranked - single).norm() / single.norm() < 1e-3
    by_step = {m["step"]: m for m in read_metrics(two.out)}
    for m in read_metrics(one.out):
        r = by_step[m["step"]]
        for key in (REWARD_MEAN, REWARD_MAX, REWARD_MIN, REWARD_MARGIN, DPO_LOSS):
            if key in m:
                assert r[key] == pytest.approx(m[key], rel=1e-3, abs=1e-5), (m["step"], key)
        for key in (PAIRS, SKIPPED_PROMPTS):  # counts are summed over the ranks
            if key in m:
                assert r[key] == m[key], (m["step"], key)


def test_pause_at_step_2_and_resume_log_each_step_once_and_write_each_checkpoint_once(runs):
    _, two, paused, _ = runs
    assert paused.name == "step_000002"  # stopped by rank 0's stop() after step 2, on both ranks
    steps = [m["step"] for m in read_metrics(two.out)]
    assert steps == [0, 1, 2, 3]  # step 0: the base's held-out check; then each step once
    logs = {p.name: p.read_text() for p in (Path(two.out) / "ranks").glob("rank*.log")}
    assert sorted(logs) == ["rank0.log", "rank1.log"]
    written = [
        line for text in logs.values() for line in text.splitlines() if "checkpoint" in line and "written" in line
    ]
    assert len(written) == 2 and all("rank 0 " in line for line in written), written  # step 2, then step 3
    assert sorted(p.name for p in (Path(two.out) / "checkpoints").iterdir()) == ["latest", "step_000002", "step_000003"]
    # rank 0 alone writes videos: the held-out check of steps 0 and 3 and rank 0's candidates
    folders = sorted(p.name for p in (Path(two.out) / "samples").iterdir())
    assert folders == ["step_000000_heldout", "step_000003_candidates", "step_000003_heldout"]
    candidates = json.loads((Path(two.out) / "samples" / "step_000003_candidates" / "samples.json").read_text())
    assert len(candidates["videos"]) == two.prompts_per_step * two.num_candidates


def test_resume_with_another_number_of_ranks_is_refused(runs, capsys):
    _, two, _, _ = runs
    for nproc in (1, 3):
        flags = ["--out", two.out, "--nproc", str(nproc), "--resume"]
        flags += [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
        assert main(["train", *flags, "--prompts-per-step", "1"]) == 2
        err = capsys.readouterr().err
        assert f"with nproc = {nproc}: it was trained on 2 rank(s)" in err and "resume it with nproc = 2" in err


def test_metrics_combine_over_ranks():
    a = {REWARD_MEAN: 0.5, REWARD_MAX: 0.9, REWARD_MIN: 0.1, SKIPPED_PROMPTS: 1, PAIRS: 1, DPO_LOSS: 0.6}
    b = {REWARD_MEAN: 0.7, REWARD_MAX: 0.8, REWARD_MIN: 0.3, SKIPPED_PROMPTS: 0, PAIRS: 3, DPO_LOSS: 0.2}
    c = {REWARD_MEAN: 0.6, REWARD_MAX: 0.7, REWARD_MIN: 0.2, SKIPPED_PROMPTS: 2, PAIRS: 0}  # no pair: no loss
    got = combine([a, b, c])
    assert got[REWARD_MEAN] == pytest.approx(0.6)
    assert (got[REWARD_MAX], got[REWARD_MIN], got[SKIPPED_PROMPTS], got[PAIRS]) == (0.9, 0.1, 3, 4)
    assert got[DPO_LOSS] == pytest.approx((0.6 * 1 + 0.2 * 3) / 4)  # the mean over the 4 pairs


def test_a_two_rank_run_from_the_web_form_trains_on_a_real_celery_worker(live_stack, transactional_db):
    """The form's "GPUs per run" = 2 on a worker without a GPU: two gloo ranks under the Celery task,
    rank 0's metrics through the database sink; 3 GPUs per run is refused at launch with the reason."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from webapp.celery import capacities
    from webapp.experiments.forms import validated_config
    from webapp.experiments.models import Experiment, MetricPoint

    deadline = time.time() + 60
    while not any("gpu" in w["queues"] for w in capacities()):  # the worker advertises at start-up
        assert time.time() < deadline, "the worker advertised no capacity"
        time.sleep(0.2)
    client = Client()
    client.force_login(get_user_model().objects.create_user("alice"))
    form = {"name": "two ranks", **validated_config({**SMALL, "prompts": "demo", "nproc": 2})}

    r = client.post("/experiments/new/", {**form, "nproc": 3})
    assert r.status_code == 400
    (error,) = r.context["form"].errors["nproc"]
    assert "3 GPUs per run is more than any worker of queue 'gpu' has" in error and "2 CPU ranks" in error
    assert not Experiment.objects.exists()

    r = client.post("/experiments/new/", form)
    assert r.status_code == 302, r.content.decode()[:2000]
    experiment = Experiment.objects.get()
    deadline = time.time() + 300
    while experiment.status in ("queued", "running"):
        assert time.time() < deadline, "the run did not end"
        time.sleep(0.5)
        experiment.refresh_from_db()
    assert experiment.status == "finished", experiment.error
    steps = list(MetricPoint.objects.filter(experiment=experiment).values_list("step", flat=True))
    assert steps == [0, 1, 2, 3]  # each once: rank 0 alone reports
    assert MetricPoint.objects.get(experiment=experiment, step=1).values[PAIRS] == 2  # both ranks' pairs
    assert experiment.checkpoints() == ["step_000003"]
    ranks = experiment.run_dir / "run" / "ranks"
    assert "the policy adapter is the same on all 2 ranks" in (ranks / "rank0.log").read_text()
    assert (ranks / "rank1.log").exists()


def test_a_worker_with_fewer_ranks_than_the_run_fails_it_with_the_reason(
    transactional_db, monkeypatch, settings, tmp_path
):
    from django.contrib.auth import get_user_model

    from webapp.experiments import jobs
    from webapp.experiments.forms import validated_config
    from webapp.experiments.models import Experiment

    settings.MEDIA_ROOT = tmp_path
    monkeypatch.setenv("VPO_WORKER_GPUS", "0")
    monkeypatch.setenv("VPO_CPU_RANKS", "1")
    owner = get_user_model().objects.create_user("bob")
    experiment = Experiment.objects.create(owner=owner, name="x", config=validated_config({**SMALL, "nproc": 2}))
    assert jobs.train(experiment.pk, hostname="small@host") == "failed"
    experiment.refresh_from_db()
    assert "2 GPUs per run is more than any worker of queue 'gpu' has" in experiment.error
    assert "small@host, has no GPU and runs up to 1 CPU ranks" in experiment.error


def test_refusals_name_the_largest_worker():
    from webapp.celery import ranks_refused

    gpus = {"hostname": "a", "gpus": 4, "ranks": 4, "queues": ["gpu"]}
    cpu = {"hostname": "b", "gpus": 0, "ranks": 2, "queues": ["gpu", "cpu"]}
    other = {"hostname": "c", "gpus": 8, "ranks": 8, "queues": ["vbench"]}
    assert ranks_refused(4, "gpu", [gpus, cpu, other]) is None
    assert "the largest, a, has 4 GPU(s)" in ranks_refused(8, "gpu", [gpus, cpu, other])
    assert "none is running now" in ranks_refused(2, "gpu", [other])


def test_fsdp_is_refused_with_the_reason(tmp_path, capsys):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    for nproc in ("1", "2"):  # in the process, and before starting ranks
        assert main(["train", *flags, "--out", str(tmp_path / nproc), "--nproc", nproc, "--parallel", "fsdp"]) == 2
        err = capsys.readouterr().err
        assert "parallel = 'fsdp'" in err and ("needs CUDA" in err or "not implemented yet" in err)
