"""The new-experiment form: one field per ``TrainConfig`` field, choices from the registries, and
validation by ``TrainConfig`` itself, its error shown next to the field it names."""

from __future__ import annotations

from dataclasses import fields

from django import forms

from vpo.backbones import BACKBONES
from vpo.data.prompts import BUILTIN
from vpo.rewards import DIMENSIONS, GLOBAL, REWARD_SOURCES
from vpo.train import ALGORITHMS
from vpo.train.config import ConfigError, TrainConfig
from webapp.prompt_files import MAX_PROMPT_CHARS, MAX_PROMPTS, read_prompt_file

UPLOADED = "uploaded"  # the config's "prompts" when they come from a file

CHOICES = {
    "backbone": list(BACKBONES),
    "reward": list(REWARD_SOURCES),
    "algorithm": list(ALGORITHMS),
    "dimension": [*DIMENSIONS, GLOBAL],
    "prompts": [*BUILTIN, UPLOADED],
    "heldout_prompts": list(BUILTIN),
}
SERVER_SIDE = {"out"}  # where a run lives is the server's business
FIELDSETS = [
    ("What to optimise", ["backbone", "reward", "dimension", "algorithm", "prompts", "prompts_file"]),
    ("Algorithm", ["num_candidates", "ref_update_every", "beta", "noise_draws", "tie_tolerance", "refl_depth"]),
    ("Optimiser", ["steps", "prompts_per_step", "lora_rank", "lr", "grad_clip", "seed"]),
    ("Sampling", ["sampling_steps", "guidance"]),
    ("Monitoring", ["heldout_prompts", "heldout_count", "heldout_every", "checkpoint_every"]),
]
CONFIG_FIELDS = [f for f in fields(TrainConfig) if f.name not in SERVER_SIDE]


def validated_config(data: dict) -> dict:
    """``data`` through TrainConfig (defaults filled, values checked), without server-side fields."""
    return {k: v for k, v in TrainConfig.from_dict(data).to_dict().items() if k not in SERVER_SIDE}


class ExperimentForm(forms.Form):
    name = forms.CharField(max_length=120)
    prompts_file = forms.FileField(
        required=False,
        label="prompt file",
        help_text=f"with prompts = {UPLOADED}: UTF-8 text, one prompt per line, "
        f"<= {MAX_PROMPTS} prompts of <= {MAX_PROMPT_CHARS} characters",
    )

    def __init__(self, *args, config: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        initial = {**TrainConfig().to_dict(), **(config or {})}
        for f in CONFIG_FIELDS:
            kind = type(f.default)
            if f.name in CHOICES:
                field = forms.ChoiceField(choices=[(c, c) for c in CHOICES[f.name]])
            elif kind is int:
                field = forms.IntegerField()
            else:
                field = forms.FloatField()
            field.help_text, field.initial = f.metadata["help"], initial[f.name]
            self.fields[f.name] = field
        self.prompts_text = ""
        self.config: dict = {}

    def fieldsets(self):
        return [(title, [self[name] for name in names]) for title, names in FIELDSETS]

    def clean_prompts_file(self):
        upload = self.cleaned_data.get("prompts_file")
        return read_prompt_file(upload) if upload else ""

    def clean(self):
        data = super().clean()
        if data.get("prompts") == UPLOADED and not data.get("prompts_file") and "prompts_file" not in self.errors:
            self.add_error("prompts_file", f"prompts = {UPLOADED} needs a prompt file")
        elif data.get("prompts") != UPLOADED and data.get("prompts_file"):
            self.add_error("prompts", f"you chose a file: set prompts to {UPLOADED!r} to use it")
        if self.errors:
            return data
        try:
            self.config = validated_config({f.name: data[f.name] for f in CONFIG_FIELDS})
        except ConfigError as e:
            self.add_error(e.field if e.field in self.fields else None, str(e))
            return data
        self.prompts_text = data.get("prompts_file") or ""
        return data


class EvaluationForm(forms.Form):
    checkpoint = forms.ChoiceField()
    prompts = forms.ChoiceField(choices=[(p, p) for p in BUILTIN], initial="heldout64")
    suite = forms.ChoiceField(
        choices=[("builtin", "built-in measures (exact/proxy)"), ("vbench", "official VBench (queue vbench)")],
        initial="builtin",
        required=False,
    )

    def clean_suite(self) -> str:
        return self.cleaned_data.get("suite") or "builtin"

    def __init__(self, *args, checkpoints: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["checkpoint"].choices = [(c, c) for c in reversed(checkpoints)]
