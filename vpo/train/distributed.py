"""One training run over several processes (ranks) with torch.distributed (``docs/distributed.md``).

``launch`` (the caller's process: ``vpo train --nproc N``, the Celery task) starts
``torch.distributed.run --standalone --nproc_per_node N -m vpo.train.distributed`` on this host and
serves rank 0 over a local socket: rank 0's sink calls are replayed on the caller's sink (the
progress bar, the database) and rank 0 asks the caller's ``stop()`` before each step. So nothing
else changes for the caller, and the ranks need neither Django nor a database.

In the ranks, ``Ranks`` is what ``Run`` asks of torch.distributed: which share of the step's prompts
is this rank's, sums over ranks, the adapter's gradients all-reduced, one stop decision for all,
metrics reduced to rank 0. With one process (no process group) every method is the identity, so the
single-process path is the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vpo.train.checkpoints import check_same_nproc, latest_checkpoint, load_state
from vpo.train.config import TrainConfig
from vpo.train.keys import (
    DPO_GRAD_NORM,
    DPO_PREFIX,
    GUARD_VETOED,
    PAIRS,
    PERF_PREFIX,
    REWARD_MARGIN,
    REWARD_MAX,
    REWARD_MIN,
    SKIPPED_PROMPTS,
)

log = logging.getLogger(__name__)

# what the launcher tells the ranks (besides torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)
ENV_ADDRESS, ENV_KEY, ENV_CONFIG, ENV_RESUME = "VPO_RANK0_ADDRESS", "VPO_RANK0_KEY", "VPO_CONFIG", "VPO_RESUME"


class Ranks:
    """This process's place in the run: ``world`` ranks, this one ``rank``; rank 0 is ``main``."""

    def __init__(self) -> None:
        self.on = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.on else 1
        self.rank = dist.get_rank() if self.on else 0
        self.main = self.rank == 0
        # nccl reduces CUDA tensors only; gloo CPU ones
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.on and _nccl() else torch.device("cpu")

    def sum(self, n: float) -> float:
        """``n`` summed over the ranks."""
        if not self.on:
            return n
        t = torch.tensor([float(n)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item()

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank: a stop seen by rank 0 ends every rank at the same step."""
        if not self.on:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the adapter's gradients over the ranks, in one flat all-reduce (the LoRA parameters
        are small). A rank that had no pair this step contributes zeros. The callers scale each
        rank's loss by its share of the step's pairs (or videos), so the sum is the gradient of the
        mean over all of the step's pairs: that of one process with all of them."""
        if not self.on:
            return
        params = list(params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        dist.all_reduce(flat)
        flat = flat.to(params[0].device)
        i = 0
        for p in params:
            p.grad = flat[i : i + p.numel()].view_as(p).clone()
            i += p.numel()

    def check_same(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Raise if the ranks' adapters differ: they must, after the same summed gradients."""
        if not self.on:
            return
        flat = torch.cat([p.detach().float().reshape(-1) for p in params]).to(self.device)
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat)
        worst = max(float((g - flat).abs().max()) for g in gathered)
        if worst > 0:
            raise RuntimeError(f"the policy adapter differs between the ranks (by up to {worst:.3g})")
        log.info("the policy adapter is the same on all %d ranks (%d values)", self.world, flat.numel())

    def reduce_metrics(self, values: dict[str, float]) -> dict[str, float]:
        """Every rank's metrics of the step, combined on rank 0 (``REDUCE``: sums, extremes, means
        weighted by each rank's pairs; any other metric is the mean over the ranks that have it,
        which leaves values every rank shares, like the gradient norm, as they are). Other ranks get
        their own values back."""
        if not self.on:
            return values
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, values)
        if not self.main:
            return values
        return combine(gathered)


def combine(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """The metrics of one step from each rank's (``Ranks.reduce_metrics``)."""
    out: dict[str, float] = {}
    keys = list(dict.fromkeys(k for values in per_rank for k in values))
    for k in keys:
        xs = [float(v[k]) for v in per_rank if k in v]
        weights = [float(v.get(PAIRS, 0.0)) for v in per_rank if k in v]
        how = reduction(k)
        if how == "sum":
            out[k] = sum(xs)
        elif how == "max":
            out[k] = max(xs)
        elif how == "min":
            out[k] = min(xs)
        elif how == "pairs" and sum(weights) > 0:
            out[k] = sum(x * w for x, w in zip(xs, weights)) / sum(weights)
        else:
            out[k] = sum(xs) / len(xs)
    return out


def reduction(key: str) -> str:
    """How a metric combines over ranks: counts add up, extremes stay extremes, per-pair means are
    weighted by pairs; the time and memory of a step are those of its slowest rank."""
    if key in (SKIPPED_PROMPTS, PAIRS, GUARD_VETOED):
        return "sum"
    if key == REWARD_MAX or key.startswith(PERF_PREFIX):
        return "max"
    if key == REWARD_MIN:
        return "min"
    if key == REWARD_MARGIN or (key.startswith(DPO_PREFIX) and key != DPO_GRAD_NORM):
        return "pairs"
    return "mean"


def _nccl() -> bool:
    return dist.get_backend() == "nccl"


# --- the caller's side --------------------------------------------------------------------------
def launch(cfg: TrainConfig, sink: Any, stop: Callable[[], bool] | None, resume: bool) -> Path:
    """Run ``cfg`` on ``cfg.nproc`` ranks of this host (``torch.distributed.run --standalone``):
    one per GPU with nccl where there are enough GPUs, else CPU ranks with gloo. Returns the folder
    of the last checkpoint; rank 0's errors are raised here with their type and message."""
    gpus = torch.cuda.device_count()
    if 0 < gpus < cfg.nproc:
        raise ValueError(f"nproc = {cfg.nproc} asks for more GPUs than this host has ({gpus})")
    if cfg.parallel == "fsdp" and gpus == 0:
        raise ValueError(FSDP_ON_CPU)
    out = Path(cfg.out)
    folder = latest_checkpoint(out) if resume else None
    if folder is not None:  # before starting any rank
        check_same_nproc(folder, load_state(folder / "state.pt")["config"], cfg.nproc)
    logs = out / "ranks"
    logs.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(16)
    with Listener(("127.0.0.1", 0), authkey=key) as listener:
        host, port = listener.address
        env = {
            **os.environ,
            ENV_ADDRESS: f"{host}:{port}",
            ENV_KEY: key.hex(),
            ENV_CONFIG: json.dumps(cfg.to_dict()),
            ENV_RESUME: "1" if resume else "0",
        }
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={cfg.nproc}",
            "-m",
            "vpo.train.distributed",
        ]
        with open(logs / "torchrun.log", "a") as torchrun_log:
            proc = subprocess.Popen(command, env=env, stdout=torchrun_log, stderr=subprocess.STDOUT)
            try:
                return _serve(listener, proc, sink, stop, logs)
            finally:
                if proc.poll() is None:  # an error here, or Ctrl-C: torchrun stops its ranks on TERM
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()


def _serve(listener: Listener, proc: subprocess.Popen, sink: Any, stop: Callable[[], bool] | None, logs: Path) -> Path:
    accepted: list[Connection] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the ranks ended before rank 0 called
            accepted.append(listener.accept())

    threading.Thread(target=accept, daemon=True).start()
    while not accepted and proc.poll() is None:
        time.sleep(0.05)
    done: str | None = None
    error: tuple[str, str] | None = None
    if accepted:
        conn = accepted[0]
        while True:
            if not conn.poll(0.2):
                if proc.poll() is not None and not conn.poll(0):
                    break
                continue
            try:
                message = conn.recv()
            except EOFError:
                break
            kind = message[0]
            if kind == "call":  # a sink method of rank 0's, replayed here (if this sink has it)
                _, method, args, kwargs = message
                replay = getattr(sink, method, None)
                if replay is not None:
                    replay(*args, **kwargs)
            elif kind == "stop":
                conn.send(bool(stop is not None and stop()))
            elif kind == "done":
                done = message[1]
            elif kind == "error":
                error = message[1], message[2]
        conn.close()
    rc = proc.wait()
    if error is not None:
        known = _errors()
        raise known.get(error[0], RuntimeError)(error[1] if error[0] in known else f"{error[0]}: {error[1]}")
    if rc != 0 or done is None:
        raise RuntimeError(f"the ranks of this run failed (torchrun exit status {rc}); their logs are in {logs}")
    return Path(done)


def _errors() -> dict[str, type[Exception]]:
    from vpo.train.runner import TrainingDiverged

    return {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError, "TrainingDiverged": TrainingDiverged}


FSDP_NOT_YET = (
    "parallel = 'fsdp' (the frozen base sharded with FSDP2) is not implemented yet: use parallel = 'ddp' "
    "(docs/distributed.md)"
)
FSDP_ON_CPU = (
    "parallel = 'fsdp' shards the frozen base over GPUs and needs CUDA; this host has none "
    "(on a CPU use parallel = 'ddp')"
)


# --- a rank's side ------------------------------------------------------------------------------
class RemoteSink:
    """Rank 0's sink: every call goes to the launcher's sink, whatever its methods are."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __getattr__(self, method: str) -> Callable[..., None]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> None:
            self.conn.send(("call", method, args, kwargs))

        return call

    def ask_stop(self) -> bool:
        """The launcher's ``stop()``, asked by rank 0 before each step."""
        self.conn.send(("stop",))
        return bool(self.conn.recv())


class NullSink:
    """The other ranks' sink: rank 0 alone reports."""

    def __getattr__(self, method: str) -> Callable[..., None]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: None


def main() -> int:
    """One rank (started by ``launch`` through torchrun)."""
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cfg = TrainConfig.from_dict(json.loads(os.environ[ENV_CONFIG]))
    logs = Path(cfg.out) / "ranks"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"rank{rank}.log", "a") as f:  # one file per rank, whatever torchrun does with output
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(name)s: %(message)s")
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ["WORLD_SIZE"])
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    conn = None
    if rank == 0:
        host, port = os.environ[ENV_ADDRESS].rsplit(":", 1)
        conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ[ENV_KEY]))
    from vpo.train import train

    try:
        sink: Any = RemoteSink(conn) if conn is not None else NullSink()
        last = train(
            cfg,
            sink,
            stop=sink.ask_stop if conn is not None else None,
            resume=os.environ[ENV_RESUME] == "1",
            device=f"cuda:{local}" if cuda else "cpu",
        )
        if conn is not None:
            conn.send(("done", str(last)))
        dist.barrier()  # no rank leaves while another may still need it
        return 0
    except Exception as e:
        log.exception("rank %s failed", rank)
        if conn is not None:
            conn.send(("error", type(e).__name__, str(e)))
        return 1
    finally:
        if conn is not None:
            conn.close()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
