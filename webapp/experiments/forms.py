"""The new-experiment form: one field per ``TrainConfig`` field, choices from the registries, and
validation by ``TrainConfig`` itself, its error shown next to the field it names."""

from __future__ import annotations

import re
from dataclasses import fields

from django import forms

from vpo.backbones import ALL_BACKBONES, BACKBONES, I2V_BACKBONES, NO_FLOW_SHIFT, SAMPLERS, no_flow_shift
from vpo.backbones.real import weights_status
from vpo.data.prompts import BUILTIN, IMAGE_SETS, parse_prompts, read_prompts
from vpo.rewards import DIMENSIONS, GLOBAL, GUARDS, REWARD_SOURCES, prompt_problem
from vpo.rewards.guard import unguardable
from vpo.rewards.local import weights_status as reward_weights_status
from vpo.train import ALGORITHMS
from vpo.train.config import LIMITS, PARALLEL, STOP_MEASURES, SWITCHES, TRAINABLE, ConfigError, TrainConfig
from webapp.celery import capacities, ranks_refused
from webapp.prompt_files import MAX_PROMPT_CHARS, MAX_PROMPTS, read_prompt_file

UPLOADED = "uploaded"  # the config's "prompts" when they come from a file

CHOICES = {
    "backbone": [*BACKBONES, *I2V_BACKBONES],
    "reward": list(REWARD_SOURCES),
    "algorithm": list(ALGORITHMS),
    "dimension": [*DIMENSIONS, GLOBAL],
    "prompts": [*BUILTIN, *IMAGE_SETS, UPLOADED],
    "heldout_prompts": [*BUILTIN, *IMAGE_SETS],
    "reward_model": [""],  # the user's finished reward models are added per form (ExperimentForm)
    "weights_dtype": ["auto", "bf16", "fp32"],
    "reward_guard": list(GUARDS),
    "stop_heldout": list(STOP_MEASURES),
    "parallel": list(PARALLEL),
    "sampler": list(SAMPLERS),
    "trainable": list(TRAINABLE),
    **{name: list(SWITCHES) for name in ("gradient_checkpointing", "vae_tiling", "cpu_offload")},
}
# the selects whose options come in groups (<optgroup>): text-to-video vs image-to-video
GROUPS = {
    "backbone": [
        ("Text-to-video", list(BACKBONES)),
        ("Image-to-video (a first frame + a prompt)", list(I2V_BACKBONES)),
    ],
    "prompts": [
        ("Text prompts", list(BUILTIN)),
        ("Image prompt sets (a first frame per prompt: image-to-video)", list(IMAGE_SETS)),
        ("Your own", [UPLOADED]),
    ],
    "heldout_prompts": [
        ("Text prompts", list(BUILTIN)),
        ("Image prompt sets (image-to-video)", list(IMAGE_SETS)),
    ],
}
SERVER_SIDE = {"out", "model_dir"}  # where a run lives and where weights are is the server's business
FIELDSETS = [
    (
        "What to optimise",
        ["backbone", "reward", "reward_model", "dimension", "algorithm", "trainable", "prompts", "prompts_file"],
    ),
    (
        "Algorithm",
        [
            "num_candidates",
            "ref_update_every",
            "beta",
            "noise_draws",
            "tie_tolerance",
            "reward_guard",
            "refl_depth",
            "rwr_temperature",
        ],
    ),
    ("Optimiser", ["steps", "prompts_per_step", "lora_rank", "lr", "grad_clip", "seed"]),
    ("Sampling", ["sampling_steps", "sampler", "flow_shift", "guidance"]),
    ("More than one GPU", ["nproc", "parallel"]),
    (
        "Monitoring",
        ["heldout_prompts", "heldout_count", "heldout_every", "stop_heldout", "stop_drop", "checkpoint_every"],
    ),
    (
        "Size and memory (real backbones)",
        [
            "frames",
            "height",
            "width",
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


def physmaster_preset() -> dict:
    """PhysMaster's stage II (``vpo physmaster``, ``vpo/physmaster.py``) as one launch: tiny-i2v on
    the physics scenes, reward ``physics`` / ``trajectory``, the LoRA trained, with the command's
    own N, K, learning rate, noise draws, tie tolerance, steps and sampling. One change: a held-out
    check every 5 steps, so that the dashboard shows held-out videos and their first frames (the
    command evaluates each stage's checkpoint after it instead)."""
    from vpo.physmaster import PhysMasterConfig  # torch-free at import

    stage = PhysMasterConfig(out="web").stage_config("stage2-dpo-lora").to_dict()
    return validated_config({**stage, "heldout_every": 5})


# ?preset=NAME on the new-experiment page: name -> (the run's name, its config)
PRESETS = {"physmaster": ("PhysMaster stage II: online DPO of the LoRA on physics (tiny-i2v)", physmaster_preset)}


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
    return {name: problem for name in ALL_BACKBONES if (problem := weights_status(name)[1])}


def unavailable_rewards() -> dict[str, str]:
    """Reward sources whose weights are not on this server, with the reason (a folder check, no load)."""
    return {name: f"{name}: {problem}" for name in REWARD_SOURCES if (problem := reward_weights_status(name)[1])}


# the config's field names as they appear in TrainConfig's messages (shared with the CLI and TOML,
# which name fields as written there) -> the labels the form shows; longest first, so that
# "heldout_prompts" is not read as "prompts"
_LABEL = {f.name: f.metadata["label"] for f in CONFIG_FIELDS}
# the longest name first, so that a name containing another (sampling_steps, steps) wins
_NAMES = re.compile(
    "|".join(rf"(?<![\w-])({re.escape(name)})(?![\w-])" for name in sorted(_LABEL, key=len, reverse=True))
)


def in_labels(message: str) -> str:
    """A TrainConfig message in the form's words: 'num_candidates must be >= 2' -> 'Candidates
    per prompt must be >= 2'. A name with an underscore is a field wherever it stands; a
    one-word name (steps, prompts, seed) only where the message starts with it, since the same
    word is also plain English further on."""

    def named(match: re.Match) -> str:
        name = match.group(0)
        if match.start() == 0:
            return _LABEL[name]
        if "_" not in name:
            return name
        words = _LABEL[name]  # mid-sentence in lower case, but not an acronym (LoRA, DPO, VAE)
        return words[:1].lower() + words[1:] if words[1:2].islower() else words

    text = _NAMES.sub(named, message)
    return text[:1].upper() + text[1:]


def number_field(label: str, default: float, kind: type) -> forms.Field:
    """A number typed as text: a browser drops letters typed into ``<input type=number>`` and
    posts nothing, which Django would report as "This field is required."; as text they arrive
    and are reported as what they are."""
    if kind is int:
        return forms.IntegerField(
            widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off"}),
            error_messages={
                "invalid": f"{label} must be a whole number",
                "required": f"{label} needs a value (default {default})",
            },
        )
    return forms.FloatField(
        widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}),
        error_messages={
            "invalid": f"{label} must be a number (e.g. {default})",
            "required": f"{label} needs a value (default {default})",
        },
    )


class ExperimentForm(forms.Form):
    name = forms.CharField(
        max_length=120, label="Name", error_messages={"required": "Name the run (it is how you find it later)"}
    )
    prompts_file = forms.FileField(
        required=False,
        label="Prompt file",
        help_text=f"with prompts = {UPLOADED}: UTF-8 text, one prompt per line, "
        f"<= {MAX_PROMPTS} prompts of <= {MAX_PROMPT_CHARS} characters",
    )

    def __init__(self, *args, config: dict | None = None, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        initial = {**TrainConfig().to_dict(), **(config or {})}
        for f in CONFIG_FIELDS:
            kind = type(f.default)
            if f.name in CHOICES:
                grouped = GROUPS.get(f.name)
                field = forms.ChoiceField(
                    choices=[(g, [(c, c) for c in names]) for g, names in grouped]
                    if grouped
                    else [(c, c) for c in CHOICES[f.name]],
                    error_messages={"required": f"{f.metadata['label']}: choose one (default {f.default})"},
                )
            else:
                field = number_field(f.metadata["label"], f.default, kind)
            field.label, field.help_text, field.initial = f.metadata["label"], f.metadata["help"], initial[f.name]
            field.only = f.metadata["only"]  # the algorithms it applies to (the page hides it for the others)
            self.fields[f.name] = field
        self.add_reward_models(user)
        self.unavailable = unavailable_backbones()
        self.fields["backbone"].widget = SelectWithDisabled(self.unavailable, choices=self.fields["backbone"].choices)
        if self.unavailable:
            self.fields["backbone"].help_text += "; greyed out: " + "; ".join(self.unavailable.values())
        self.unavailable_rewards = unavailable_rewards()
        self.fields["reward"].widget = SelectWithDisabled(
            self.unavailable_rewards, choices=self.fields["reward"].choices
        )
        if self.unavailable_rewards:
            self.fields["reward"].help_text += "; greyed out: " + "; ".join(self.unavailable_rewards.values())
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

        keys = sorted({k for name in ALL_BACKBONES for k in backbone_defaults(name)})
        base = {k: getattr(TrainConfig(), k) for k in keys}
        return {name: {**base, **backbone_defaults(name)} for name in ALL_BACKBONES}

    def image_to_video(self) -> dict[str, list[str]]:
        """What the page needs to keep backbone and prompt set in step: the image-to-video backbones
        and the image prompt sets (choosing such a backbone picks such a set, new.js)."""
        return {"backbones": list(I2V_BACKBONES), "sets": list(IMAGE_SETS)}

    def fieldsets(self):
        return [(title, [self[name] for name in names]) for title, names in FIELDSETS]

    def clean_prompts_file(self):
        upload = self.cleaned_data.get("prompts_file")
        return read_prompt_file(upload) if upload else ""

    def clean(self):
        """Every problem at once: the form's own (name, number fields, prompt file, weights) and
        every one ``TrainConfig.check`` finds in the fields that parsed, each next to its field.
        A field that does not apply to the chosen algorithm (hidden on the page) keeps its default."""
        data = super().clean()
        algorithm, backbone = data.get("algorithm"), data.get("backbone")  # add_error drops a field from data
        for f in CONFIG_FIELDS:
            if f.metadata["only"] and algorithm and algorithm not in f.metadata["only"]:
                self.errors.pop(f.name, None)
                data[f.name] = f.default
        if data.get("prompts") == UPLOADED and not data.get("prompts_file") and "prompts_file" not in self.errors:
            self.add_error("prompts_file", f"prompts = {UPLOADED} needs a prompt file")
        elif data.get("prompts") != UPLOADED and data.get("prompts_file"):
            self.add_error("prompts", f"you chose a file: set prompts to {UPLOADED!r} to use it")
        if (
            data.get("backbone") in I2V_BACKBONES
            and data.get("prompts") == UPLOADED
            and data.get("prompts_file")
            and "prompts_file" not in self.errors
        ):
            self.add_error(
                "prompts_file",
                f"Backbone {data['backbone']!r} is image-to-video: a prompt file gives no first frames; "
                f"choose an image prompt set ({', '.join(IMAGE_SETS)}) under Prompts",
            )
        if data.get("backbone") in self.unavailable:  # listed, but launching it would only fail on the worker
            self.add_error("backbone", self.unavailable[data["backbone"]])
        if data.get("reward") in self.unavailable_rewards:  # the same for a reward model without weights
            self.add_error("reward", self.unavailable_rewards[data["reward"]])
        # a backbone without weights is still the backbone chosen: the other fields are checked
        # against it (an image-to-video one wants image prompt sets), not against the default
        parsed = {f.name: data[f.name] for f in CONFIG_FIELDS if f.name in data and f.name not in self.errors}
        if backbone in ALL_BACKBONES:
            parsed["backbone"] = backbone
        for problem in TrainConfig.check(parsed):
            if problem.field not in self.errors:  # one message a field: the form's own comes first
                self.add_error(problem.field if problem.field in self.fields else None, in_labels(str(problem)))
        if self.errors:
            return data
        try:
            self.config = validated_config({f.name: data[f.name] for f in CONFIG_FIELDS})
        except ConfigError as e:  # check() found nothing, so this does not happen; if it did, said
            self.add_error(e.field if e.field in self.fields else None, in_labels(str(e)))
            return data
        if self.config["nproc"] > 1:  # more ranks than any worker has would wait in the queue forever
            problem = ranks_refused(self.config["nproc"], "gpu", capacities())
            if problem:
                self.add_error("nproc", problem)
                return data
        self.prompts_text = data.get("prompts_file") or ""
        uploaded = self.config["prompts"] == UPLOADED
        prompts = parse_prompts(self.prompts_text) if uploaded else read_prompts(self.config["prompts"])
        if problem := prompt_problem(self.config["reward"], prompts):
            self.add_error("reward", problem)
        if self.config["reward_guard"] != "none" and (bad := unguardable(parse_prompts(self.prompts_text))):
            self.add_error("reward_guard", f"the guard cannot read the prompt {bad!r}: it names no object of the world")
        return data


# PhysMasterConfig's fields as the PhysMaster form shows them: label, help
PHYSMASTER_FIELDS = {
    "steps_sft": ("Stage I steps (SFT)", "supervised flow matching of the LoRA and the PhysEncoder head"),
    "sft_batch": ("Stage I scenes per step", "fresh ground-truth physics scenes every step"),
    "sft_lr": ("Stage I learning rate", "the LoRA's and the head's"),
    "steps_dpo": ("Stage II and III steps (each)", "online DPO on physics / trajectory"),
    "dpo_lr": ("Stage II learning rate (LoRA)", "the head frozen"),
    "head_lr": ("Stage III learning rate (head)", "the LoRA frozen"),
    "num_candidates": ("Candidates per prompt (N)", "stages II and III"),
    "noise_draws": ("Noise draws per pair", "stages II and III"),
    "ref_update_every": ("Reference update every K steps", "the curriculum update of stages II and III"),
    "tie_tolerance": ("Tie tolerance", "a prompt whose candidates' scores spread less is skipped"),
    "sampling_steps": ("Sampling steps", "candidates and evaluation"),
    "guidance": ("Guidance (CFG)", "candidates and evaluation"),
    "seed": ("Seed", "every stage's"),
    "heldout_every": (
        "Held-out check every (steps)",
        "stages II and III: held-out scenes sampled and scored as they train, shown on the page (0 = none)",
    ),
    "heldout": ("Held-out scenes", "the base and each stage evaluated on them after training (report.md)"),
}
# a stage's TrainConfig field -> the PhysMaster field it comes from (TrainConfig's errors name the former)
STAGE_FIELDS = {
    "steps": {"stage1-sft": "steps_sft", "stage2-dpo-lora": "steps_dpo", "stage3-dpo-physencoder": "steps_dpo"},
    "lr": {"stage1-sft": "sft_lr", "stage2-dpo-lora": "dpo_lr", "stage3-dpo-physencoder": "head_lr"},
    "prompts_per_step": {"stage1-sft": "sft_batch"},
}


class PhysMasterForm(forms.Form):
    """PhysMaster's three stages (``vpo physmaster``) as one run: ``PhysMasterConfig``'s fields,
    checked by it and by each stage's ``TrainConfig``, every error next to its field."""

    name = forms.CharField(max_length=120, label="Name", error_messages={"required": "Name the run"})

    def __init__(self, *args, **kwargs):
        from vpo.physmaster import PhysMasterConfig

        super().__init__(*args, **kwargs)
        defaults = PhysMasterConfig(out="web", heldout_every=5)  # the page shows held-out videos
        for name, (label, help_text) in PHYSMASTER_FIELDS.items():
            default = getattr(defaults, name)
            field = number_field(label, default, type(default))
            field.label, field.help_text, field.initial = label, help_text, default
            self.fields[name] = field
        self.config: dict = {}
        self.stage_two: dict = {}

    def clean(self):
        from vpo.physmaster import STAGES, PhysMasterConfig

        data = super().clean()
        if self.errors:
            return data
        values = {name: data[name] for name in PHYSMASTER_FIELDS}
        try:
            cfg = PhysMasterConfig(out="web", **values)
        except ValueError as e:  # "steps-sft must be >= 1, got 0": the field is its first word
            first, _, rest = str(e).partition(" ")
            name = first.replace("-", "_")
            if name in self.fields:
                self.add_error(name, f"{self.fields[name].label} {rest}")
            else:
                self.add_error(None, str(e))
            return data
        for stage in STAGES:
            for problem in TrainConfig.check(cfg.stage_fields(stage)):
                name = STAGE_FIELDS.get(problem.field, {}).get(stage, problem.field)
                field = name if name in self.fields and name not in self.errors else None
                self.add_error(field, f"{stage}: {problem}")
        if not self.errors:
            self.config = {name: getattr(cfg, name) for name in PHYSMASTER_FIELDS}  # not the CLI's --ablation
            self.stage_two = validated_config(cfg.stage_config("stage2-dpo-lora").to_dict())
        return data


class EvaluationForm(forms.Form):
    checkpoint = forms.ChoiceField()
    prompts = forms.ChoiceField(choices=[(p, p) for p in BUILTIN], initial="heldout64")
    suite = forms.ChoiceField(
        choices=[("builtin", "built-in measures (exact/proxy)"), ("vbench", "official VBench (queue vbench)")],
        initial="builtin",
        required=False,
    )

    # Euler on the run's schedule (or flow_shift's); initially the backbone's standard, not the candidates' steps
    sampling_steps = forms.IntegerField(min_value=1, max_value=LIMITS["sampling_steps"], label="Sampling steps")
    guidance = forms.FloatField(min_value=1, label="Guidance scale")
    # empty: the run's schedule; 0: the backbone's default (tiny: none)
    flow_shift = forms.FloatField(
        min_value=0,
        required=False,
        label="Flow shift",
        widget=forms.NumberInput(attrs={"placeholder": "the run's", "step": "any", "min": "0"}),
    )

    def clean_suite(self) -> str:
        return self.cleaned_data.get("suite") or "builtin"

    def clean_flow_shift(self) -> float | None:
        shift = self.cleaned_data.get("flow_shift")
        if shift and self.backbone in NO_FLOW_SHIFT:
            raise forms.ValidationError(no_flow_shift(self.backbone))
        return shift

    def __init__(self, *args, checkpoints: list[str], backbone: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone = backbone
        self.fields["checkpoint"].choices = [(c, c) for c in reversed(checkpoints)]
        standard = TrainConfig.defaults_for(backbone)  # a real backbone's own steps and CFG
        self.fields["sampling_steps"].initial = standard["sampling_steps"]
        self.fields["guidance"].initial = standard["guidance"]
