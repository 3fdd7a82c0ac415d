"""The one typed config of a training run: what ``vpo train`` reads (TOML + flags), what the web
form validates, what a Celery task receives as JSON and what every checkpoint records.

A misspelt field fails at creation (``TrainConfig.from_dict``), a bad value in ``__post_init__``,
each with a message naming the valid choices.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# the registries import nothing heavy: the web process validates with this same code
from vpo.backbones import BACKBONES
from vpo.data.prompts import BUILTIN
from vpo.rewards import DIMENSIONS, GLOBAL, REWARD_SOURCES
from vpo.train import ALGORITHMS


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _one_of(names: Any) -> str:
    names = list(names)
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


@dataclass
class TrainConfig:
    backbone: str = _f("tiny", "video generator (BACKBONES)")
    reward: str = _f("metrics", "reward source (REWARD_SOURCES)")
    dimension: str = _f("temporal", f"reward dimension trained on: {_one_of([*DIMENSIONS, GLOBAL])}")
    algorithm: str = _f("online-dpo", f"{_one_of(ALGORITHMS)} (ALGORITHMS)")
    prompts: str = _f("train", f"prompt set: a built-in name ({', '.join(BUILTIN)}) or a text file")
    steps: int = _f(60, "optimizer steps")
    prompts_per_step: int = _f(1, "prompts per step (each gives one pair for DPO)")
    num_candidates: int = _f(6, "N: candidates sampled per prompt (OnlineVPO: 6)")
    ref_update_every: int = _f(20, "K: copy the policy into the reference every K steps; 0 = fixed reference")
    beta: float = _f(100.0, "Flow-DPO beta (constant; flow_grpo uses 100)")
    noise_draws: int = _f(
        8, "DPO: (sigma, eps) draws per pair in each update, averaged; each shared by winner and loser"
    )
    tie_tolerance: float = _f(1e-3, "skip a prompt whose best and worst scores differ by less")
    lora_rank: int = _f(8, "LoRA rank")
    lr: float = _f(1e-3, "AdamW learning rate of the adapter")
    grad_clip: float = _f(1.0, "max gradient norm")
    sampling_steps: int = _f(20, "denoising steps when sampling candidates")
    guidance: float = _f(4.0, "classifier-free guidance scale")
    refl_depth: int = _f(1, "ReFL: final denoising steps back-propagated through")
    seed: int = _f(0, "seed of prompts order, candidates' noise and DPO noise")
    heldout_prompts: str = _f("heldout64", "held-out prompt set for the reward-hacking monitor")
    heldout_count: int = _f(8, "held-out prompts sampled at each check (fixed prompts and seeds)")
    heldout_every: int = _f(10, "E: held-out check and sample videos every E steps (0 = never)")
    checkpoint_every: int = _f(20, "C: checkpoint every C steps")
    out: str = _f("runs/train", "run folder: checkpoints, metrics.jsonl, videos")

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                raise ConfigError(f.name, f"{f.name} must be a finite number, got {getattr(self, f.name)}")
        _choice("backbone", self.backbone, BACKBONES)
        _choice("reward", self.reward, REWARD_SOURCES)
        _choice("algorithm", self.algorithm, ALGORITHMS)
        source = REWARD_SOURCES[self.reward]
        if self.algorithm == "refl":
            if not source.differentiable:
                differentiable = [n for n, s in REWARD_SOURCES.items() if s.differentiable]
                raise ConfigError(
                    "reward",
                    f"refl needs a differentiable reward source; {self.reward!r} is not "
                    f"(valid: {', '.join(differentiable)})",
                )
            _choice(
                "dimension",
                self.dimension,
                source.differentiable,
                f" (refl needs a differentiable one of {self.reward!r})",
            )
        else:
            _choice("dimension", self.dimension, source.choices, f" for reward source {self.reward!r}")
        for name in (
            "steps",
            "prompts_per_step",
            "noise_draws",
            "lora_rank",
            "sampling_steps",
            "refl_depth",
            "heldout_count",
            "checkpoint_every",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ref_update_every", "heldout_every"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"{name} must be >= 0 (0 = never), got {getattr(self, name)}")
        if self.num_candidates < 2:
            raise ConfigError(
                "num_candidates", f"num_candidates must be >= 2 to form a pair, got {self.num_candidates}"
            )
        for name in ("beta", "lr", "grad_clip"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ConfigError(name, f"{name} must be > 0, got {getattr(self, name)}")
        if not self.tie_tolerance >= 0:
            raise ConfigError("tie_tolerance", f"tie_tolerance must be >= 0, got {self.tie_tolerance}")
        if self.refl_depth > self.sampling_steps:
            raise ConfigError(
                "refl_depth", f"refl_depth ({self.refl_depth}) cannot exceed sampling_steps ({self.sampling_steps})"
            )
        if self.guidance < 1:
            raise ConfigError("guidance", f"guidance must be >= 1 (1 = no guidance), got {self.guidance}")

    # --- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(known))}"
            )
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
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_toml(self) -> str:
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


class ConfigError(ValueError):
    """A bad value, with the field it belongs to (the web form shows it next to that field)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _choice(name: str, value: Any, valid: Any, context: str = "") -> None:
    if value not in valid:
        raise ConfigError(name, f"unknown {name} {value!r}{context}; valid: {', '.join(valid)}")


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


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    return str(value)
