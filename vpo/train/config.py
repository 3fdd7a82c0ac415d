"""The one typed config of a training run: what ``vpo train`` reads (TOML + flags), what the web
form validates, what a Celery task receives as JSON and what every checkpoint records.

A misspelt field fails at creation (``TrainConfig.from_dict``), a bad value in ``__post_init__``,
each with a message naming the valid choices.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# the registries import nothing heavy: the web process validates with this same code
from vpo.backbones import ALL_BACKBONES, I2V_BACKBONES, NO_FLOW_SHIFT, SAMPLERS, no_flow_shift
from vpo.data.prompts import BUILTIN, IMAGE_SETS
from vpo.rewards import DIMENSIONS, GLOBAL, GUARDS, REWARD_SOURCES, Source, dimensions_of
from vpo.train import ALGORITHMS
from vpo.train.keys import HELDOUT_RAW

# what the held-out monitor (the ``metrics`` source) logs and ``stop_heldout`` may watch: its dimensions,
# their mean, and the raw measures that fall while a reward is hacked (the subject gone or frozen)
STOP_MEASURES = ("none", *REWARD_SOURCES["metrics"].choices, *HELDOUT_RAW)

DPO = ("online-dpo", "offline-dpo")  # the algorithms that train on pairs with the Flow-DPO loss
ONLINE = ("online-dpo", "online-rwr")  # the algorithms that sample N candidates per prompt every step
SCORED = (*DPO, "online-rwr")  # the algorithms that rank sampled candidates by their scores
# what a run trains (issue 17, item 3): the generator's LoRA adapter, the PhysEncoder's head
# (vpo/backbones/physencoder.py; image-to-video backbones only), or both
TRAINABLE = ("lora", "physencoder", "both")


def _f(default: Any, help: str, label: str, only: tuple[str, ...] = ()) -> Any:
    """A config field: ``help`` (CLI ``--help``, TOML comments, the form's hint), ``label`` (what the
    web form calls it) and ``only`` (the algorithms that read it; empty: all of them)."""
    return field(default=default, metadata={"help": help, "label": label, "only": only})


def _one_of(names: Any) -> str:
    names = list(names)
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


@dataclass
class TrainConfig:
    backbone: str = _f("tiny", "the video generator trained", "Backbone")
    reward: str = _f("metrics", "what scores the candidates", "Reward source")
    reward_model: str = _f(
        "", "reward = learned: folder of a trained reward model (vpo reward-model train)", "Reward model"
    )
    dimension: str = _f(
        "temporal",
        f"reward dimension trained on: {_one_of([*DIMENSIONS, GLOBAL])} (learned: its heads or global)",
        "Dimension trained on",
    )
    algorithm: str = _f("online-dpo", f"{_one_of(ALGORITHMS)}", "Algorithm")
    trainable: str = _f(
        "lora",
        "what the run trains: lora (the generator's LoRA adapter), physencoder (the head of the "
        "PhysEncoder of the first frame, the generator frozen; image-to-video backbones) or both",
        "Trained parameters",
    )
    prompts: str = _f(
        "train",
        f"prompt set: a built-in name ({', '.join(BUILTIN)}) or a text file; image-to-video backbones: an "
        f"image prompt set ({', '.join(IMAGE_SETS)})",
        "Training prompts",
    )
    steps: int = _f(60, "optimizer steps", "Steps")
    prompts_per_step: int = _f(
        1,
        "prompts per step and rank (each gives one pair for DPO); a step trains on nproc times as many",
        "Prompts per step",
    )
    num_candidates: int = _f(6, "N: candidates sampled per prompt (OnlineVPO: 6)", "Candidates per prompt (N)", SCORED)
    ref_update_every: int = _f(
        20,
        "K: copy the policy into the reference every K steps; 0 = fixed reference",
        "Reference update every (K steps)",
        DPO,
    )
    beta: float = _f(100.0, "Flow-DPO beta (constant; flow_grpo uses 100)", "DPO beta", DPO)
    noise_draws: int = _f(
        8,
        "DPO and RWR: (sigma, eps) draws per video in each update, averaged; DPO shares each draw "
        "between winner and loser",
        "Noise draws per update",
        SCORED,
    )
    tie_tolerance: float = _f(1e-3, "skip a prompt whose best and worst scores differ by less", "Tie tolerance", DPO)
    reward_guard: str = _f(
        "none",
        "none; subject: scale each candidate's reward by the prompted subject's presence and motion; "
        "subject-veto: rank a candidate that lost or froze its subject below all others, the rest by "
        "the reward alone (prompts of the synthetic world)",
        "Reward guard",
        SCORED,
    )
    lora_rank: int = _f(8, "LoRA rank", "LoRA rank")
    lr: float = _f(1e-3, "AdamW learning rate of the adapter", "Learning rate")
    grad_clip: float = _f(1.0, "max gradient norm", "Gradient clipping (max norm)")
    # 20 on tiny: at 10 its held-out quality holds, but the README example tuned less (+0.16 vs +0.28
    # flicker.all, docs/tiny-backbone.md, "Steps vs quality"); the real backbones' presets set their own
    sampling_steps: int = _f(20, "denoising steps of the candidates and the run's held-out videos", "Sampling steps")
    sampler: str = _f(
        "euler",
        f"ODE solver of candidates and held-out videos: {_one_of(SAMPLERS)} (second order: two velocities "
        "a step but the last)",
        "Sampler",
        (*SCORED,),
    )
    guidance: float = _f(4.0, "classifier-free guidance scale", "Guidance scale")
    refl_depth: int = _f(1, "ReFL: final denoising steps back-propagated through", "ReFL depth", ("refl",))
    rwr_temperature: float = _f(
        0.005,
        "tau of the weights softmax(reward / tau) over each prompt's candidates "
        "(smaller = sharper; compare with reward/margin)",
        "RWR temperature",
        ("online-rwr",),
    )
    seed: int = _f(0, "seed of prompts order, candidates' noise and DPO noise", "Seed")
    heldout_prompts: str = _f("heldout64", "held-out prompt set for the reward-hacking monitor", "Held-out prompts")
    heldout_count: int = _f(
        8, "held-out prompts sampled at each check (fixed prompts and seeds)", "Held-out prompts per check"
    )
    heldout_every: int = _f(
        10, "E: held-out check and sample videos every E steps (0 = never)", "Held-out check every (E steps)"
    )
    stop_heldout: str = _f(
        "none",
        "the reward-hacking alarm: stop the run when this held-out measure falls more than stop_drop below the "
        f"base's (step 0) at a held-out check: none, {', '.join(STOP_MEASURES[1:])}",
        "Stop when held-out falls",
    )
    stop_drop: float = _f(0.1, "how far below the base's value stop_heldout may fall", "Stop at a fall of")
    checkpoint_every: int = _f(20, "C: checkpoint every C steps", "Checkpoint every (C steps)")
    out: str = _f("runs/train", "run folder: checkpoints, metrics.jsonl, videos", "Run folder")
    # real backbones (wan, cogvideox, ltx): weights folder, size, memory; tiny has one size and ignores the rest
    model_dir: str = _f("", "diffusers folder of a real backbone ('' = $VPO_MODELS_DIR/<backbone>)", "Weights folder")
    frames: int = _f(0, "video frames (0 = the backbone's default; real backbones: k * VAE time factor + 1)", "Frames")
    height: int = _f(
        0, "video height in pixels (0 = the backbone's default; a multiple of VAE x patch factor)", "Height"
    )
    width: int = _f(0, "video width in pixels (0 = the backbone's default; a multiple of VAE x patch factor)", "Width")
    flow_shift: float = _f(
        0.0,
        "sigma shift of the sampling schedule (wan, ltx: of training's draws too); 0 = the backbone's: "
        "tiny 1 (none), wan 5, ltx by resolution",
        "Flow shift",
    )
    weights_dtype: str = _f(
        "auto", "real backbones' weights: auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32", "Weights precision"
    )
    gradient_checkpointing: str = _f(
        "auto", "checkpoint the transformer's blocks: auto (on CUDA), on or off", "Gradient checkpointing"
    )
    vae_tiling: str = _f("auto", "decode with VAE tiling: auto (on CUDA), on or off", "VAE tiling")
    cpu_offload: str = _f(
        "auto",
        "keep text encoder and VAE on the CPU until needed: auto (GPUs under 30 GiB), on or off",
        "CPU offload",
    )
    # more than one process (docs/distributed.md): torchrun on this host, one rank per GPU (gloo on a CPU)
    nproc: int = _f(
        1, "ranks of one run (world size): one per GPU, torch.distributed (nccl; gloo on CPU)", "GPUs per run"
    )
    parallel: str = _f(
        "ddp",
        "with nproc > 1: ddp (each rank holds the base; adapter gradients all-reduced) or fsdp",
        "Parallelism",
    )

    def __post_init__(self) -> None:
        for problem in self.problems():
            raise problem

    @classmethod
    def check(cls, data: dict) -> list[ConfigError]:
        """Every problem of ``data`` at once (the web form shows them all), where ``from_dict``
        raises the first: a value of the wrong type, then each bad value as ``problems`` finds it."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            return [ConfigError(unknown[0], f"unknown config field(s) {', '.join(map(repr, unknown))}")]
        from vpo.backbones.real import backbone_defaults

        data = {**backbone_defaults(data.get("backbone", "")), **data}
        cfg, errors = object.__new__(cls), list[ConfigError]()
        for f in fields(cls):
            value = f.default
            if f.name in data:
                try:
                    value = _coerce(f.name, data[f.name], type(f.default))
                except ConfigError as e:
                    errors.append(e)
            setattr(cfg, f.name, value)
        bad = {e.field for e in errors}
        return errors + [e for e in cfg.problems() if e.field not in bad]

    def _reward_source(self) -> tuple[Source | None, ConfigError | None]:
        """The registry's entry for ``reward`` and the problem with ``reward_model``, if any; for
        ``learned``, the entry with the model's heads as its dimensions (read from the folder,
        torch-free), or None when there is no model to read them from."""
        source = REWARD_SOURCES[self.reward]
        if self.reward != "learned":
            if self.reward_model:
                return source, ConfigError(
                    "reward_model", f"reward_model is read only with reward = learned (reward is {self.reward!r})"
                )
            return source, None
        if not self.reward_model:
            return None, ConfigError(
                "reward_model", "reward 'learned' needs reward_model: the folder of a trained reward model"
            )
        try:
            heads = tuple(dimensions_of(self.reward, self.reward_model))
        except ValueError as problem:
            return None, ConfigError("reward_model", str(problem))
        return replace(source, dimensions=heads, differentiable=heads), None

    def _dimension_problems(self, source: Source) -> Iterator[ConfigError]:
        """``dimension`` against what the source offers (a differentiable one for ReFL)."""
        if self.algorithm != "refl":
            if e := _choice_problem("dimension", self.dimension, source.choices, f" for reward source {self.reward!r}"):
                yield e
        elif not source.differentiable:
            differentiable = [n for n, s in REWARD_SOURCES.items() if s.differentiable]
            yield ConfigError(
                "reward",
                f"refl needs a differentiable reward source; {self.reward!r} is not "
                f"(valid: {', '.join(differentiable)})",
            )
        elif e := _choice_problem(
            "dimension", self.dimension, source.differentiable, f" (refl needs a differentiable one of {self.reward!r})"
        ):
            yield e

    def problems(self) -> Iterator[ConfigError]:
        """Each bad value, in the order checked; a check that depends on a field found bad (the
        dimension on the reward source, the memory on the sizes) is skipped."""
        for f in fields(self):
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                yield ConfigError(f.name, f"{f.name} must be a finite number, got {getattr(self, f.name)}")
        registries = [
            e
            for e in (
                _choice_problem("backbone", self.backbone, ALL_BACKBONES),
                _choice_problem("reward", self.reward, REWARD_SOURCES),
                _choice_problem("algorithm", self.algorithm, ALGORITHMS),
            )
            if e
        ]
        yield from registries
        if not any(e.field in ("reward", "algorithm") for e in registries):
            source, problem = self._reward_source()
            if problem:
                yield problem
            if source is not None:  # None: a learned model whose heads could not be read
                yield from self._dimension_problems(source)
        sizes = []
        for name in (
            "steps",
            "prompts_per_step",
            "noise_draws",
            "lora_rank",
            "sampling_steps",
            "refl_depth",
            "heldout_count",
            "checkpoint_every",
            "nproc",
        ):
            if getattr(self, name) < 1:
                sizes.append(ConfigError(name, f"{name} must be >= 1, got {getattr(self, name)}"))
        for name in ("ref_update_every", "heldout_every"):
            if getattr(self, name) < 0:
                sizes.append(ConfigError(name, f"{name} must be >= 0 (0 = never), got {getattr(self, name)}"))
        if self.num_candidates < 2:
            sizes.append(
                ConfigError("num_candidates", f"num_candidates must be >= 2 to form a pair, got {self.num_candidates}")
            )
        for name in ("beta", "lr", "grad_clip"):
            if not getattr(self, name) > 0:  # also refuses NaN
                sizes.append(ConfigError(name, f"{name} must be > 0, got {getattr(self, name)}"))
        if not self.tie_tolerance >= 0:
            sizes.append(ConfigError("tie_tolerance", f"tie_tolerance must be >= 0, got {self.tie_tolerance}"))
        # read by online-rwr alone, so checked for it alone: another algorithm's config never fails on it
        if self.algorithm == "online-rwr" and not self.rwr_temperature > 0:
            sizes.append(
                ConfigError(
                    "rwr_temperature", f"rwr_temperature must be > 0 for online-rwr, got {self.rwr_temperature}"
                )
            )
        if self.reward_guard != "none" and self.algorithm == "refl":
            sizes.append(
                ConfigError(
                    "reward_guard",
                    "reward_guard scales the candidates' scores of online-dpo, offline-dpo and online-rwr; "
                    "refl has none",
                )
            )
        if self.algorithm == "refl" and self.sampler != "euler":
            sizes.append(ConfigError("sampler", "refl back-propagates through Euler steps; its sampler must be euler"))
        if self.refl_depth > self.sampling_steps >= 1:
            sizes.append(
                ConfigError(
                    "refl_depth",
                    f"refl_depth ({self.refl_depth}) cannot exceed sampling_steps ({self.sampling_steps})",
                )
            )
        for name in ("frames", "height", "width"):
            if getattr(self, name) < 0:
                sizes.append(
                    ConfigError(name, f"{name} must be >= 0 (0 = the backbone's default), got {getattr(self, name)}")
                )
        if self.flow_shift < 0:
            sizes.append(
                ConfigError(
                    "flow_shift", f"flow_shift must be >= 0 (0 = the backbone's default), got {self.flow_shift}"
                )
            )
        elif self.flow_shift and self.backbone in NO_FLOW_SHIFT:
            sizes.append(ConfigError("flow_shift", no_flow_shift(self.backbone)))
        for e in (
            _choice_problem("weights_dtype", self.weights_dtype, ("auto", "bf16", "fp32")),
            _choice_problem("reward_guard", self.reward_guard, GUARDS),
            _choice_problem("parallel", self.parallel, PARALLEL),
            _choice_problem("sampler", self.sampler, SAMPLERS),
            *(_choice_problem(name, getattr(self, name), SWITCHES) for name in SWITCHES_FIELDS),
        ):
            if e:
                sizes.append(e)
        sizes.extend(self._image_problems())
        if self.guidance < 1:
            sizes.append(ConfigError("guidance", f"guidance must be >= 1 (1 = no guidance), got {self.guidance}"))
        if e := _choice_problem("stop_heldout", self.stop_heldout, STOP_MEASURES):
            sizes.append(e)
        elif self.stop_heldout != "none" and not self.heldout_every:
            sizes.append(ConfigError("stop_heldout", "stop_heldout reads the held-out checks: set heldout_every > 0"))
        if not 0 < self.stop_drop < math.inf:
            sizes.append(ConfigError("stop_drop", f"stop_drop must be > 0, got {self.stop_drop}"))
        yield from sizes
        if not any(e.field == "backbone" for e in registries):
            yield from self._fit_problems(memory=not sizes)  # the estimate needs sound sizes

    def _image_problems(self) -> Iterator[ConfigError]:
        """``trainable`` and the first frames: a PhysEncoder needs an image-to-video backbone, an
        image-to-video run needs a first frame per prompt (an image prompt set), and a text-to-video
        run takes no image prompt set."""
        if e := _choice_problem("trainable", self.trainable, TRAINABLE):
            yield e
        elif self.trainable != "lora" and self.backbone not in I2V_BACKBONES:
            yield ConfigError(
                "trainable",
                f"trainable {self.trainable!r} trains the PhysEncoder of an image-to-video backbone's first "
                f"frame ({_one_of(I2V_BACKBONES)}); backbone {self.backbone!r} has none: use trainable = 'lora'",
            )
        if self.backbone not in I2V_BACKBONES:
            # an image set's first frames would be dropped without a word: refused, as its opposite is
            for name in ("prompts", "heldout_prompts"):
                if getattr(self, name) in IMAGE_SETS and self.backbone in ALL_BACKBONES:
                    yield ConfigError(
                        name,
                        f"{name} {getattr(self, name)!r} is an image prompt set (a first frame per prompt); "
                        f"backbone {self.backbone!r} is text-to-video and takes none: choose an image-to-video "
                        f"backbone ({_one_of(I2V_BACKBONES)}) or a text prompt set",
                    )
            return
        for name in ("prompts", "heldout_prompts"):
            if getattr(self, name) not in IMAGE_SETS:
                yield ConfigError(
                    name,
                    f"backbone {self.backbone!r} is image-to-video: {name} must be an image prompt set (a first "
                    f"frame per prompt): {_one_of(IMAGE_SETS)}, got {getattr(self, name)!r}",
                )
        if self.algorithm == "refl":
            yield ConfigError(
                "algorithm",
                f"refl does not take first frames yet: backbone {self.backbone!r} trains with "
                f"{', '.join(DPO)} or online-rwr",
            )

    def _fit_problems(self, memory: bool = True) -> Iterator[ConfigError]:
        """Upper bounds (docs/limits.md): each field at most ``LIMITS``, the LoRA rank at most the
        backbone's layer width, and the step's peak memory within the worker's. A run that would
        not fit is refused here, before it is queued: a worker killed for memory would get the same
        task redelivered again and again."""
        from vpo.backbones import SIZING

        over = [
            ConfigError(name, f"{name} must be <= {bound:,}, got {getattr(self, name):,}")
            for name, bound in LIMITS.items()
            if getattr(self, name) > bound
        ]
        sizing = SIZING[self.backbone]
        if self.lora_rank > sizing.lora_width:
            over.append(
                ConfigError(
                    "lora_rank",
                    f"lora_rank must be <= {sizing.lora_width} (the width of backbone "
                    f"{self.backbone!r}'s layers), got {self.lora_rank}",
                )
            )
        yield from over
        if (
            over or not memory or sizing.process_mb is None
        ):  # memory not measured for this backbone yet (docs/limits.md)
            return
        budget, need = worker_memory_mb(), self.peak_memory_mb()
        if need <= budget:
            return
        # name the first field that, lowered with the others as they are, makes the run fit
        names = (
            "num_candidates",
            "prompts_per_step",
            *(("refl_depth",) if self.algorithm == "refl" else ()),
            "heldout_count",
        )
        for name in names:
            most = self._most_that_fits(name, budget)
            if most is not None:
                break
        else:
            name, most = "prompts_per_step", 0
        yield ConfigError(
            name,
            f"this run needs ~{need:,.0f} MB at its peak on backbone {self.backbone!r} "
            f"({self.prompts_per_step * self.num_candidates:,} videos sampled at once); the worker "
            f"has {budget:,} MB (VPO_WORKER_MEMORY_MB): {name} must be <= {most:,} with the other "
            f"fields as they are, got {getattr(self, name):,}",
        )

    def _most_that_fits(self, name: str, budget: float) -> int | None:
        """The largest value of ``name`` (at least its minimum) with which this run fits in
        ``budget`` MB, the other fields as they are; None if none does."""
        current, lowest = getattr(self, name), 2 if name == "num_candidates" else 1
        try:
            for value in range(current - 1, lowest - 1, -1):
                setattr(self, name, value)
                if self.peak_memory_mb() <= budget:
                    return value
            return None
        finally:
            setattr(self, name, current)

    def peak_memory_mb(self) -> float:
        """Estimated peak resident memory of a training step (and of a held-out check) of this run,
        from the backbone's ``Sizing``: the candidates of every prompt are sampled in one batch,
        the DPO update keeps one pair's activations per prompt (the noise draws are back-propagated
        one at a time), ReFL keeps every differentiated denoising step."""
        from vpo.backbones import SIZING

        sizing = SIZING[self.backbone]
        assert sizing.process_mb is not None, f"no memory figures for backbone {self.backbone!r}"
        sampled = sizing.video_mb * max(self.prompts_per_step * self.num_candidates, self.heldout_count)
        if self.algorithm == "refl":
            update = sizing.refl_mb * self.prompts_per_step * self.refl_depth
        elif self.algorithm == "online-rwr":  # all N candidates with gradients (no reference): N/2 pairs' worth
            update = sizing.pair_mb * self.prompts_per_step * self.num_candidates / 2
        else:
            update = sizing.pair_mb * self.prompts_per_step
        return sizing.process_mb + sampled + update

    # --- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(known))}"
            )
        # a real backbone's own defaults (steps, guidance, LoRA rank...) where the data gives none
        from vpo.backbones.real import backbone_defaults

        data = {**backbone_defaults(data.get("backbone", "")), **data}
        typed = {}
        for f in fields(cls):
            if f.name in data:
                typed[f.name] = _coerce(f.name, data[f.name], type(f.default))
        return cls(**typed)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from None
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            raise ValueError(f"{path} nests arrays or tables too deeply to be a config") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_toml(self) -> str:
        return self.toml_of(self.to_dict())

    @classmethod
    def defaults_for(cls, backbone: str) -> dict[str, Any]:
        """Every field's default for a run of ``backbone``: a real backbone's own (steps, CFG, LoRA
        rank...) over the global ones. Unchecked: what a form or ``vpo eval`` starts from, not a run."""
        from vpo.backbones.real import backbone_defaults

        return {**{f.name: f.default for f in fields(cls)}, "backbone": backbone, **backbone_defaults(backbone)}

    @classmethod
    def toml_of(cls, data: dict) -> str:
        """``data``'s fields (defaults, a real backbone's own included, where it has none) as the TOML
        ``from_toml`` reads, each under its help. Unchecked: an exported run may name paths of the
        machine it goes to, which need not exist here (``webapp.experiments.models.Experiment.export_toml``)."""
        data = {**cls.defaults_for(data.get("backbone", cls.backbone)), **data}
        lines = []
        for f in fields(cls):
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {toml_value(data[f.name])}")
        return "\n".join(lines) + "\n"


SWITCHES = ("auto", "on", "off")
SWITCHES_FIELDS = ("gradient_checkpointing", "vae_tiling", "cpu_offload")
PARALLEL = ("ddp", "fsdp")

# Upper bounds that hold whatever the memory: each is a multiple of what the paper and the probes
# use (N = 6, 1-4 prompts a step, 8 noise draws, 20 sampling steps, 60 steps, 8 held-out prompts),
# and at each a step still ends (docs/limits.md). The memory check then bounds their products.
LIMITS = {
    "steps": 100_000,
    "prompts_per_step": 64,
    "num_candidates": 64,
    "noise_draws": 64,
    "sampling_steps": 1000,
    "heldout_count": 256,
    "refl_depth": 64,
    # video size (0 = the backbone's own): twice the longest released default (LTX-Video's 161
    # frames, 2 x 80 + 1 keeps Wan's and CogVideoX's 4k + 1 and LTX's 8k + 1 valid) and Wan2.1's
    # 720p long side; tiny has one size and ignores them
    "frames": 321,
    "height": 1280,
    "width": 1280,
    "nproc": 64,
}


def worker_memory_mb() -> int:
    """The memory a training run may use, in MB: ``VPO_WORKER_MEMORY_MB`` (set it where the web
    form runs to the worker's memory, or its GPU's), else this machine's physical memory."""
    value = os.environ.get("VPO_WORKER_MEMORY_MB")
    if value:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"VPO_WORKER_MEMORY_MB must be a whole number of MB, got {value!r}") from None
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


class ConfigError(ValueError):
    """A bad value, with the field it belongs to (the web form shows it next to that field)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _choice_problem(name: str, value: Any, valid: Any, context: str = "") -> ConfigError | None:
    if value in valid:
        return None
    return ConfigError(name, f"unknown {name} {value!r}{context}; valid: {', '.join(valid)}")


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(name, f"{name} must be {kind.__name__}, got {value!r}")
    return value


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _toml_escape(c: str) -> str:
    return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"


def toml_value(value: Any) -> str:
    if isinstance(value, str):  # a TOML basic string: backslash, quote and control characters escaped
        return '"' + "".join(_TOML_ESCAPES.get(c, c if c.isprintable() else _toml_escape(c)) for c in value) + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
