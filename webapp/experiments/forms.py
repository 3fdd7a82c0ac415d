"""The new-experiment form: one field per ``TrainConfig`` field, choices from the registries, and
validation by ``TrainConfig`` itself, its error shown next to the field it names."""

from __future__ import annotations

from dataclasses import fields

from django import forms

from vpo.backbones import BACKBONES
from vpo.backbones.real import weights_status
from vpo.data.prompts import BUILTIN
from vpo.rewards import DIMENSIONS, GLOBAL, REWARD_SOURCES
from vpo.train import ALGORITHMS
from vpo.train.config import SWITCHES, ConfigError, TrainConfig
from webapp.prompt_files import MAX_PROMPT_CHARS, MAX_PROMPTS, read_prompt_file

UPLOADED = "uploaded"  # the config's "prompts" when they come from a file

CHOICES = {
    "backbone": list(BACKBONES),
    "reward": list(REWARD_SOURCES),
    "algorithm": list(ALGORITHMS),
    "dimension": [*DIMENSIONS, GLOBAL],
    "prompts": [*BUILTIN, UPLOADED],
    "heldout_prompts": list(BUILTIN),
    "reward_model": [""],  # the user's finished reward models are added per form (ExperimentForm)
    "weights_dtype": ["auto", "bf16", "fp32"],
    **{name: list(SWITCHES) for name in ("gradient_checkpointing", "vae_tiling", "cpu_offload")},
}
SERVER_SIDE = {"out", "model_dir"}  # where a run lives and where weights are is the server's business
FIELDSETS = [
    ("What to optimise", ["backbone", "reward", "reward_model", "dimension", "algorithm", "prompts", "prompts_file"]),
    ("Algorithm", ["num_candidates", "ref_update_every", "beta", "noise_draws", "tie_tolerance", "refl_depth"]),
    ("Optimiser", ["steps", "prompts_per_step", "lora_rank", "lr", "grad_clip", "seed"]),
    ("Sampling", ["sampling_steps", "guidance"]),
    ("Monitoring", ["heldout_prompts", "heldout_count", "heldout_every", "checkpoint_every"]),
    (
        "Size and memory (real backbones)",
        [
            "frames",
            "height",
            "width",
            "flow_shift",
            "weights_dtype",
            "gradient_checkpointing",
            "vae_tiling",
            "cpu_offload",
        ],
    ),
]
CONFIG_FIELDS = [f for f in fields(TrainConfig) if f.name not in SERVER_SIDE]


def validated_config(data: dict) -> dict:
    """``data`` through TrainConfig (defaults filled, values checked), without server-side fields."""
    return {k: v for k, v in TrainConfig.from_dict(data).to_dict().items() if k not in SERVER_SIDE}


class SelectWithDisabled(forms.Select):
    """A select whose unavailable options are shown, greyed out, with why (``disabled``: value -> reason)."""

    def __init__(self, disabled: dict[str, str], **kwargs):
        super().__init__(**kwargs)
        self.disabled = disabled

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        if value in self.disabled:
            option["attrs"].update(disabled=True, title=self.disabled[value])
            option["label"] = f"{label} (no weights)"
        return option


def unavailable_backbones() -> dict[str, str]:
    """Backbones whose weights are not on this server, with the reason (a folder check, no load)."""
    return {name: problem for name in BACKBONES if (problem := weights_status(name)[1])}


class ExperimentForm(forms.Form):
    name = forms.CharField(max_length=120)
    prompts_file = forms.FileField(
        required=False,
        label="prompt file",
        help_text=f"with prompts = {UPLOADED}: UTF-8 text, one prompt per line, "
        f"<= {MAX_PROMPTS} prompts of <= {MAX_PROMPT_CHARS} characters",
    )

    def __init__(self, *args, config: dict | None = None, user=None, **kwargs):
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
        self.add_reward_models(user)
        self.unavailable = unavailable_backbones()
        self.fields["backbone"].widget = SelectWithDisabled(self.unavailable, choices=self.fields["backbone"].choices)
        if self.unavailable:
            self.fields["backbone"].help_text += "; greyed out: " + "; ".join(self.unavailable.values())
        self.prompts_text = ""
        self.config: dict = {}

    def add_reward_models(self, user) -> None:
        """The user's finished reward models as the choices of ``reward_model`` (reward ``learned``),
        and their heads as dimensions. The choice is the model's folder: TrainConfig checks it."""
        from webapp.studies.models import RewardModel, RewardModelStatus

        models = []
        if user is not None and user.is_authenticated:
            models = list(RewardModel.objects.visible_to(user).filter(status=RewardModelStatus.FINISHED))
        field = self.fields["reward_model"]
        field.required = False
        field.choices = [("", "— (reward learned only)")] + [(str(m.directory), m.label) for m in models]
        field.help_text = "reward = learned: one of your reward models trained from a study's votes"
        heads = [h for m in models for h in m.heads if h not in CHOICES["dimension"]]
        dimension = self.fields["dimension"]
        dimension.choices = [*dimension.choices, *((h, h) for h in dict.fromkeys(heads))]

    def backbone_defaults(self) -> dict[str, dict]:
        """Per backbone, the fields it sets when chosen (the page fills them in on change): a real
        backbone's own defaults, and the global ones for the others."""
        from vpo.backbones.real import backbone_defaults

        keys = sorted({k for name in BACKBONES for k in backbone_defaults(name)})
        base = {k: getattr(TrainConfig(), k) for k in keys}
        return {name: {**base, **backbone_defaults(name)} for name in BACKBONES}

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
        if data.get("backbone") in self.unavailable:  # listed, but launching it would only fail on the worker
            self.add_error("backbone", self.unavailable[data["backbone"]])
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
