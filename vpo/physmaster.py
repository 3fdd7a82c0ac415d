"""PhysMaster's three stages as one command (issue 17, item 5; ``vpo physmaster --out DIR``).

On ``tiny-i2v`` with a PhysEncoder (``vpo/backbones/physencoder.py``), each stage a run folder under
``DIR`` (checkpoints, ``metrics.jsonl``), each starting from the checkpoint of the one before:

I.   ``stage1-sft``: supervised flow matching of the generator's LoRA adapter **and** the
     PhysEncoder's head on ground-truth renders of physics-world training scenes (first frame +
     caption -> video). The loss and the data are ``vpo pretrain``'s (``pretrain.flow_matching_loss``,
     ``pretrain.batch_of_scenes``): EDM-weighted velocity regression, sigma shift 3, 10% of captions
     dropped, fresh scenes every step (seeds from 1,000,000 on: none that pretrained tiny-i2v).
II.  ``stage2-dpo-lora``: online DPO (``online_dpo``) with ``trainable = lora`` and reward
     ``physics`` / ``trajectory``; the PhysEncoder's head is stage I's, frozen.
III. ``stage3-dpo-physencoder``: online DPO with ``trainable = physencoder``: stage II's adapter
     frozen, the head trained.

A DPO stage's policy *and* reference start as the stage before's policy (adapter and head), as a
DPO run starts from its SFT model; the curriculum update then moves the reference every K steps.

Each stage is trained through ``vpo.train.runner.Run`` (adapters, the PhysEncoder, optimizer,
checkpoints, resume), so stage I's checkpoint has the layout ``load_policy`` and the DPO stages read.
Its recorded ``TrainConfig`` is a carrier: ``algorithm`` is not read (stage I runs its own step,
below), ``prompts_per_step`` is the SFT batch size.

The ablation without a PhysEncoder (``ablation``, ``vpo physmaster --ablation``) trains stages I
and II again in ``DIR/no-physencoder/`` with ``trainable = lora`` and no PhysEncoder at all (the
generator sees text and image tokens only); there is no stage III to run. Its rows join the report,
with stage II with vs without the PhysEncoder compared on the same scenes.

A finished stage (its last checkpoint at its step count, with the same settings and started from
the same checkpoint) is reused; an unfinished one resumes. After each stage its checkpoint, and
the base tiny-i2v, are evaluated on the same held-out scenes and seeds (``evaluate``), cached in
each folder's ``eval.json``; the table goes to ``DIR/report.md``.
"""

from __future__ import annotations

# torch is imported where it is used: the web form reads PhysMasterConfig for its preset
import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vpo.data import physics
from vpo.stats import bootstrap_mean_ci
from vpo.train.config import TrainConfig, toml_value

if TYPE_CHECKING:
    from vpo.train.sinks import Sink

BACKBONE = "tiny-i2v"
# Stage II/III's reward dimension. trajectory, not global: it is the continuous measure the
# held-out evaluation reports (exp(-err / 2 px) of the same kind of error), so each pair is ranked
# by what the stage should lower; contact moves in quarter steps (a frame's offset), so it ties
# candidates often, and global = (trajectory + contact) / 2 would add those steps to the ranking.
DIMENSION = "trajectory"
STAGES = ("stage1-sft", "stage2-dpo-lora", "stage3-dpo-physencoder")
TRAINABLE = {"stage1-sft": "both", "stage2-dpo-lora": "lora", "stage3-dpo-physencoder": "physencoder"}
NO_PHYSENCODER = "no-physencoder"  # the ablation's folder under DIR; its stages I and II train the LoRA only
ABLATION_STAGES = STAGES[:2]
LABELS = {
    "base": "base tiny-i2v (shipped)",
    "stage1-sft": "I: SFT (LoRA + PhysEncoder head)",
    "stage2-dpo-lora": "II: online DPO, LoRA",
    "stage3-dpo-physencoder": "III: online DPO, PhysEncoder head",
    f"{NO_PHYSENCODER}/stage1-sft": "I without PhysEncoder: SFT (LoRA)",
    f"{NO_PHYSENCODER}/stage2-dpo-lora": "II without PhysEncoder: online DPO, LoRA",
}
SFT_LOSS, SFT_GRAD_NORM = "sft/loss", "sft/grad_norm"
RESULTS_SECTION = "p"  # the section of docs/results.md (``vpo ablate``'s report) that --results writes
STARTED_FROM = "started_from.txt"  # a DPO stage's folder: the checkpoint (relative to DIR) it started from


@dataclass
class PhysMasterConfig:
    out: str
    steps_sft: int = 200  # stage I's optimizer steps
    steps_dpo: int = 30  # stage II's and stage III's each
    heldout: int = 32  # held-out scenes each model is evaluated on
    sft_batch: int = 8  # stage I: scenes per step
    sft_lr: float = 1e-3
    dpo_lr: float = 1e-3  # stage II (the adapter)
    head_lr: float = 1e-3  # stage III (the head)
    num_candidates: int = 6  # stages II/III: N
    noise_draws: int = 8
    ref_update_every: int = 20
    tie_tolerance: float = 1e-3
    sampling_steps: int = 20  # candidates and evaluation
    guidance: float = 4.0
    seed: int = 0
    physencoder: bool = True  # False: the ablation's chain (stages I and II, LoRA only, no PhysEncoder)
    ablation: bool = False  # also run the chain without a PhysEncoder in DIR/no-physencoder/
    # the DPO stages' held-out check (sampled videos and reward on held-out scenes) every E steps;
    # 0: none, the stages are evaluated after them (the web app's dashboard sets it, to show videos)
    heldout_every: int = 0

    def __post_init__(self) -> None:
        # counts; the rest (learning rates, K, guidance...) TrainConfig checks, naming its field
        for name in ("steps_sft", "steps_dpo", "heldout", "sft_batch", "noise_draws", "sampling_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_candidates < 2:
            raise ValueError(f"num-candidates must be >= 2 to form a pair, got {self.num_candidates}")
        if self.heldout_every < 0:
            raise ValueError(f"heldout-every must be >= 0 (0 = none), got {self.heldout_every}")
        if self.heldout > 1000:
            raise ValueError(f"heldout must be <= 1000 scenes, got {self.heldout}")
        if not self.out:
            raise ValueError("out must name a folder")

    @classmethod
    def quick(cls, out: str, **overrides: Any) -> PhysMasterConfig:
        """A few tiny steps per stage (tests, CI): it checks that everything runs, not that it learns."""
        small = dict(
            steps_sft=2,
            steps_dpo=1,
            heldout=2,
            sft_batch=2,
            num_candidates=2,
            noise_draws=1,
            tie_tolerance=0.0,
            sampling_steps=2,
        )
        return cls(out=out, **{**small, **overrides})

    def to_toml(self) -> str:
        """Every setting, as ``vpo physmaster --config`` reads it (``from_toml``)."""
        return "".join(f"{name} = {toml_value(value)}\n" for name, value in asdict(self).items())

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> PhysMasterConfig:
        """The settings of a TOML file (``to_toml``'s; the web app's export of a chain), ``overrides``
        (the command's flags) on top. An unknown setting or a value of the wrong type is a ValueError
        naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from None
        known = {f.name: str if f.default is MISSING else type(f.default) for f in fields(cls)}
        if unknown := sorted(set(data) - set(known)):
            raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        for name, value in data.items():
            if known[name] is float and type(value) is int:
                data[name] = float(value)  # TOML's 1 for 1.0
            elif type(value) is not known[name]:
                raise ValueError(f"{path}: {name} must be a TOML {known[name].__name__}, got {value!r}")
        data.update(overrides)
        if "out" not in data:
            raise ValueError(f'{path} names no out folder: add out = "..." or give --out')
        return cls(**data)

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES if self.physencoder else ABLATION_STAGES

    def without_physencoder(self) -> PhysMasterConfig:
        """The ablation's chain: the same settings in DIR/no-physencoder/, no PhysEncoder."""
        return replace(self, out=str(Path(self.out) / NO_PHYSENCODER), physencoder=False, ablation=False)

    def stage_config(self, stage: str) -> TrainConfig:
        return TrainConfig.from_dict(self.stage_fields(stage))

    def stage_fields(self, stage: str) -> dict[str, Any]:
        """The TrainConfig fields of ``stage`` (``TrainConfig.check`` reads them: the web form shows
        every problem of every stage at once)."""
        out = Path(self.out) / stage
        common = dict(
            backbone=BACKBONE,
            prompts="physics-train",
            heldout_prompts="physics-heldout",
            reward="physics",
            dimension=DIMENSION,
            trainable=TRAINABLE[stage] if self.physencoder else "lora",
            # each stage's checkpoint is evaluated on held-out scenes after it; a DPO stage may
            # also check them as it trains (stage I's carrier config has no held-out check)
            heldout_every=0 if stage == "stage1-sft" else self.heldout_every,
            seed=self.seed,
            guidance=self.guidance,
            sampling_steps=self.sampling_steps,
            out=str(out),
        )
        if stage == "stage1-sft":
            steps = self.steps_sft
            specific = dict(steps=steps, prompts_per_step=self.sft_batch, lr=self.sft_lr, num_candidates=2)
        else:
            steps = self.steps_dpo
            specific = dict(
                steps=steps,
                lr=self.dpo_lr if stage == "stage2-dpo-lora" else self.head_lr,
                num_candidates=self.num_candidates,
                noise_draws=self.noise_draws,
                ref_update_every=self.ref_update_every,
                tie_tolerance=self.tie_tolerance,
            )
        return {**common, **specific, "checkpoint_every": min(steps, 20)}


# --- the stages ------------------------------------------------------------------------------
def physmaster(
    cfg: PhysMasterConfig,
    progress: bool = True,
    say: Callable[[str], None] = print,
    device: str = "cpu",
    results: Path | None = None,
    sink_for: Callable[[str, TrainConfig], Sink] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Path | None:
    """Train (or reuse) the stages in order (and the ablation's, with ``cfg.ablation``), evaluate
    the base and each stage on the held-out scenes; returns the path of ``report.md``. ``results``:
    a markdown report (``docs/results.md``) whose PhysMaster section is written or replaced.
    ``sink_for(stage, its TrainConfig)`` gives each stage's sink (default: a ``JsonlSink`` in its
    folder; the web worker's streams to its page); ``stop`` is asked before every step: once it
    says so, the stage stops with a checkpoint, the later ones do not start and None is returned
    (run it again to resume)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {cfg.out!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    shared = Shared(device)
    chains = [cfg, cfg.without_physencoder()] if cfg.ablation else [cfg]
    for chain in chains:
        parent: Path | None = None
        for stage in chain.stages:
            checkpoint, trained = run_stage(chain, stage, parent, shared, progress, sink_for, stop)
            where = Path(chain.out, stage).relative_to(out)
            if stop is not None and stop():
                say(f"{where}: stopped at {checkpoint.relative_to(chain.out)}")
                return None
            say(f"{where}: {'trained' if trained else 'reused'} {checkpoint.relative_to(chain.out)}")
            parent = checkpoint
    say(f"evaluating the base and each stage on {cfg.heldout} held-out scenes")
    scenes = physics.heldout_scenes(cfg.heldout)
    rows = {"base": evaluated(out / "base-eval.json", None, scenes, cfg, shared)}
    for chain in chains:
        for stage in chain.stages:
            key = str(Path(chain.out, stage).relative_to(out))
            rows[key] = evaluated(out / key / "eval.json", out / key, scenes, cfg, shared)
    table = format_table(rows)
    say(table)
    text = report(cfg, rows, table, scenes)
    path = out / "report.md"
    path.write_text(text)
    if results is not None:
        from vpo.ablations import merge_sections

        section = text.replace("# PhysMaster", f"## ({RESULTS_SECTION}) PhysMaster", 1)
        old = results.read_text() if results.exists() else "# Ablations on the tiny backbone\n"
        results.write_text(merge_sections(old, "\n" + section))
    return path


class Shared:
    """What every stage's fresh backbone shares: the text encoder (loaded once)."""

    def __init__(self, device: str):
        self.device, self.text_encoder = device, None

    def backbone(self):
        from vpo.backbones.tiny_i2v import TinyI2VBackbone

        bb = TinyI2VBackbone.load(text_encoder=self.text_encoder).to(self.device).eval()
        self.text_encoder = bb.text_encoder
        return bb


def run_stage(
    cfg: PhysMasterConfig,
    stage: str,
    parent: Path | None,
    shared: Shared,
    progress: bool,
    sink_for: Callable[[str, TrainConfig], Sink] | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[Path, bool]:
    """Stage ``stage`` from checkpoint ``parent`` (None: the shipped tiny-i2v); returns its last
    checkpoint and whether it trained now (False: reused)."""
    from vpo.backbones.physencoder import new_physencoder
    from vpo.train import online_dpo
    from vpo.train.checkpoints import latest_checkpoint, read_safetensors
    from vpo.train.runner import Run
    from vpo.train.sinks import JsonlSink

    tcfg = cfg.stage_config(stage)
    folder = Path(tcfg.out)
    started_from = "" if parent is None else str(parent.relative_to(cfg.out))
    last = latest_checkpoint(folder)
    if last is not None:
        # the same settings; out may differ (DIR moved or copied: the stages' links are relative)
        saved = json.loads(read_safetensors(last / "adapter.safetensors", metadata_only=True)["config"])
        saved["out"] = tcfg.out
        if saved != tcfg.to_dict():
            diff = {k: (v, tcfg.to_dict().get(k)) for k, v in saved.items() if tcfg.to_dict().get(k) != v}
            raise ValueError(
                f"{folder} holds a {stage} run with other settings {diff}: give another --out or remove the folder"
            )
        before = (folder / STARTED_FROM).read_text().strip() if (folder / STARTED_FROM).exists() else ""
        if before != started_from:
            raise ValueError(
                f"{folder} started from {before or 'the base model'}, not {started_from or 'the base model'}: "
                "an earlier stage was trained again; remove this folder (and the later stages') to retrain it"
            )
        if last.name == f"step_{tcfg.steps:06d}":
            return last, False
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STARTED_FROM).write_text(started_from + "\n")
    bb = shared.backbone()
    if stage != "stage1-sft" and cfg.physencoder:  # the head is the parent's (loaded below); frozen in II
        bb.attach_physencoder(new_physencoder(bb))
    sink = sink_for(stage, tcfg) if sink_for else JsonlSink(folder, tcfg.steps, progress=progress, start_step=0)
    try:
        run = Run(tcfg, sink, bb.device.type, backbone=bb)
        if parent is not None and last is None:
            start_from(run, parent)
        if stage == "stage1-sft":
            checkpoint = sft(run, cfg, resume=last is not None, stop=stop)
        else:
            checkpoint = online_dpo.train_run(run, stop, last is not None)
    finally:
        if isinstance(sink, JsonlSink):
            sink.close()
    return checkpoint, True


def start_from(run, checkpoint: Path) -> None:
    """Policy and reference of ``run`` (adapter and PhysEncoder head) := the policy of ``checkpoint``."""
    import torch

    from vpo.backbones.physencoder import HEAD, load_head
    from vpo.train.checkpoints import POLICY, read_safetensors

    saved = read_safetensors(checkpoint / "adapter.safetensors")
    policy = run.adapter_params(POLICY)
    if set(policy) - set(saved):
        raise ValueError(f"{checkpoint} does not fit stage {run.out.name}: no {sorted(set(policy) - set(saved))[0]}")
    with torch.no_grad():
        for k, p in policy.items():
            p.copy_(saved[k])
    if run.physencoder is not None:  # (the ablation's chain has none)
        load_head(run.physencoder, {k: v for k, v in saved.items() if k.startswith(HEAD)}, checkpoint)
    run.update_reference()


def sft(run, cfg: PhysMasterConfig, resume: bool, stop: Callable[[], bool] | None = None) -> Path:
    """Stage I's loop: ``Run.loop`` with a supervised step in place of DPO's."""
    from vpo.pretrain import PretrainConfig, batch_of_scenes, flow_matching_loss

    # pretrain's data and schedule of sigma; seed + 1: scene seeds from 1,000,000 on, none that
    # pretrained tiny-i2v (seeds 0-14,399)
    data = PretrainConfig(backbone=BACKBONE, batch_size=cfg.sft_batch, seed=cfg.seed + 1)

    def one_step(step: int) -> dict[str, float]:
        # 1. a batch of ground-truth scenes: render, first frame, caption
        x0, captions = batch_of_scenes(data, step)
        # 2. the flow-matching loss (noise, sigma and caption dropout from this step's generator)
        loss = flow_matching_loss(
            run.backbone,
            x0.to(run.backbone.device),
            captions,
            run.generator(step, "sft"),
            data.p_uncond,
            data.sigma_shift,
        )
        run.check_finite("the SFT loss", loss)
        # 3. update the adapter and the head
        return {SFT_LOSS: loss.item(), SFT_GRAD_NORM: run.optimizer_step(loss)}

    return run.loop(run.begin(resume), stop, one_step)


# --- evaluation on held-out scenes -----------------------------------------------------------
def evaluate(backbone, scenes: list[physics.PhysScene], steps: int, guidance: float) -> dict[str, Any]:
    """One video per scene from its first frame and caption (its seed the sampling seed): the
    trajectory error (px) of each against the simulator's rollout of the true state, and the
    ``physics`` reward's dimensions (means)."""
    import torch

    from vpo.rewards import load_reward

    captions = [s.caption for s in scenes]
    seeds = [s.seed for s in scenes]  # as benchmarks/physics_i2v.py
    first = np.stack([s.render()[0] for s in scenes])
    videos = backbone.sample_many(captions, seeds, steps=steps, guidance=guidance, images=first)
    errors = [float(physics.trajectory_error(v, s.state)) for v, s in zip(videos.numpy(), scenes)]
    result = load_reward("physics").score(videos, captions)
    return {
        "trajectory_error": errors,
        "reward": {d: float(torch.nanmean(s)) for d, s in result.scores.items()},
    }


def evaluated(
    path: Path, run_folder: Path | None, scenes: list[physics.PhysScene], cfg: PhysMasterConfig, shared: Shared
) -> dict[str, Any]:
    """``evaluate`` of the base (``run_folder`` None) or of a stage's last checkpoint, cached at
    ``path`` for these scenes, settings and checkpoint."""
    from vpo.train.checkpoints import latest_checkpoint, load_policy

    checkpoint = None if run_folder is None else latest_checkpoint(run_folder)
    key = {
        "scenes": [s.seed for s in scenes],
        "steps": cfg.sampling_steps,
        "guidance": cfg.guidance,
        "checkpoint": None if checkpoint is None else checkpoint.name,
    }
    if path.exists():
        row = json.loads(path.read_text())
        if row.get("key") == key:
            return row
    bb = shared.backbone()
    if checkpoint is not None:
        load_policy(bb, checkpoint)
    t0 = time.perf_counter()
    row = {"key": key, **evaluate(bb, scenes, cfg.sampling_steps, cfg.guidance), "eval_s": time.perf_counter() - t0}
    path.write_text(json.dumps(row, indent=1))
    return row


# each row's paired comparison in the table: the model it started from
STARTED_FROM_ROW = {
    "stage1-sft": "base",
    "stage2-dpo-lora": "stage1-sft",
    "stage3-dpo-physencoder": "stage2-dpo-lora",
    f"{NO_PHYSENCODER}/stage1-sft": "base",
    f"{NO_PHYSENCODER}/stage2-dpo-lora": f"{NO_PHYSENCODER}/stage1-sft",
}


def errors(row: dict[str, Any]) -> np.ndarray:
    return np.asarray(row["trajectory_error"], dtype=float)


def paired_change(rows: dict[str, dict[str, Any]], a: str, b: str, subset: np.ndarray | None = None):
    """``a`` minus ``b``, per scene (the same scenes and seeds): mean and 95% bootstrap interval."""
    d = errors(rows[a]) - errors(rows[b])
    d = d if subset is None else d[subset]
    lo, hi = bootstrap_mean_ci(d)
    return float(d.mean()), lo, hi


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """The report's table. The change is paired with the model the row started from (the same
    scenes and seeds): the mean of the per-scene differences, with its own bootstrap interval,
    which is narrower than what the two rows' intervals suggest."""
    lines = [
        "| model | trajectory error (px), mean [95% CI] | median | change from the model it started from, "
        "paired [95% CI] | reward trajectory | contact | global |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        err = errors(row)
        lo, hi = bootstrap_mean_ci(err)
        change = "–"
        if name in STARTED_FROM_ROW:
            mean, d_lo, d_hi = paired_change(rows, name, STARTED_FROM_ROW[name])
            change = f"{mean:+.2f} [{d_lo:+.2f}, {d_hi:+.2f}] vs {LABELS[STARTED_FROM_ROW[name]].split(':')[0]}"
        r = row["reward"]
        lines.append(
            f"| {LABELS[name]} | {err.mean():.2f} [{lo:.2f}, {hi:.2f}] | {np.median(err):.2f} | {change} "
            f"| {r['trajectory']:.3f} | {r['contact']:.3f} | {r['global']:.3f} |"
        )
    return "\n".join(lines)


def direction(mean: float, lo: float, hi: float) -> str:
    """The rule of every verdict here: a change counts only when its 95% interval excludes 0."""
    change = f"{mean:+.2f} px [{lo:+.2f}, {hi:+.2f}]"
    if hi < 0:
        return f"**lowers** the error ({change})"
    if lo > 0:
        return f"**raises** the error ({change})"
    return f"**no change beyond noise** ({change}, the interval holds 0)"


def goal(rows: dict[str, dict[str, Any]]) -> str:
    """PhysMaster's goal, each DPO stage lowering the error, by ``direction``'s rule: **met** when
    every DPO stage present lowers it, **not met** when one raises it, else **not shown**."""
    stages = [s for s in ("stage2-dpo-lora", "stage3-dpo-physencoder") if s in rows]
    changes = [paired_change(rows, s, STARTED_FROM_ROW[s]) for s in stages]
    if changes and all(hi < 0 for _, _, hi in changes):
        return "**met**: every DPO stage lowers the error"
    if any(lo > 0 for _, lo, _ in changes):
        return "**not met**: a DPO stage raises the error"
    return "**not shown**: no DPO stage raises the error, but not every one lowers it"


def findings(rows: dict[str, dict[str, Any]], scenes: list[physics.PhysScene]) -> list[str]:
    """The verdicts, each by ``direction``'s rule, on the stages present in ``rows``."""
    out = []
    for stage, what in (
        ("stage2-dpo-lora", "Stage II (DPO on the LoRA)"),
        ("stage3-dpo-physencoder", "Stage III (DPO on the head)"),
    ):
        if stage in rows:
            before = STARTED_FROM_ROW[stage]
            out.append(f"- {what} vs {LABELS[before].split(':')[0]}: {direction(*paired_change(rows, stage, before))}.")
    # held-out materials: scenes with a material on a floor it never meets in training
    unseen = np.array([any((b.colour, s.state.floor) in physics.HELDOUT_PAIRS for b in s.state.bodies) for s in scenes])
    if "stage3-dpo-physencoder" in rows and unseen.sum() >= 2:
        vs_ii = direction(*paired_change(rows, "stage3-dpo-physencoder", "stage2-dpo-lora", unseen))
        vs_base = direction(*paired_change(rows, "stage3-dpo-physencoder", "base", unseen))
        out.append(
            f"- Held-out materials ({int(unseen.sum())} of {len(scenes)} scenes: a material on a floor it never meets "
            f"in training): stage III vs II {vs_ii}; stage III vs base {vs_base}."
        )
    ablated = f"{NO_PHYSENCODER}/stage2-dpo-lora"
    if ablated in rows:
        out.append(
            f"- The PhysEncoder (ablation, same steps and scenes): stage II with it vs without "
            f"{direction(*paired_change(rows, 'stage2-dpo-lora', ablated))}"
            + (
                f"; stage III vs stage II without {direction(*paired_change(rows, 'stage3-dpo-physencoder', ablated))}."
                if "stage3-dpo-physencoder" in rows
                else "."
            )
        )
    return out


def report(cfg: PhysMasterConfig, rows: dict[str, dict[str, Any]], table: str, scenes: list[physics.PhysScene]) -> str:
    from vpo.ablations import machine
    from vpo.train.sinks import read_metrics

    walls = []
    for key in rows:
        if key != "base":
            # none where another sink than JsonlSink had the metrics (the web worker's: its database)
            has = (Path(cfg.out) / key / "metrics.jsonl").is_file()
            metrics = read_metrics(Path(cfg.out) / key) if has else []
            walls.append(f"{key} {metrics[-1]['time']:.0f} s" if metrics else f"{key} –")
    n = len(rows["base"]["trajectory_error"])
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    return (
        "# PhysMaster: base vs stages I-III on held-out physics scenes\n\n"
        f"Reproduce: `vpo physmaster --out DIR{' --ablation' if cfg.ablation else ''} "
        f"--steps-sft {cfg.steps_sft} --steps-dpo {cfg.steps_dpo} --heldout {cfg.heldout} --seed {cfg.seed}` "
        f"(finished stages in DIR are reused).\n\n"
        f"{n} held-out scenes (`physics.heldout_scenes`, seeds 10,000,000-), each sampled once from its first "
        f"frame and caption with its seed, {cfg.sampling_steps} Euler steps, CFG {cfg.guidance}; the same scenes "
        "and seeds for every row. Trajectory error: `physics.trajectory_error` against the simulator's rollout "
        "of the true state, mean with a 95% percentile bootstrap interval over scenes. Reward: the `physics` "
        f"source's dimensions, means (stages II and III trained on `{DIMENSION}`).\n\n"
        f"{table}\n\n"
        "Goal (PhysMaster): each DPO stage lowers the error; stage III generalises to held-out materials. "
        f"Verdicts: a change counts only when its paired 95% interval over scenes excludes 0. One training seed "
        f"({cfg.seed}): the intervals are over scenes, not over training seeds.\n\n"
        + "\n".join(findings(rows, scenes))
        + f"\n\nThe goal that each DPO stage lowers the error: {goal(rows)}."
        + f"\n\nSettings: `{json.dumps(settings)}`. Training clock of each stage's last run (a resumed run counts "
        f"from its resume): {', '.join(walls)}. Machine: {machine()}.\n"
    )
