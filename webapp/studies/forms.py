from __future__ import annotations

from django import forms

from vpo.backbones import I2V_BACKBONES
from vpo.data.prompts import BUILTIN, IMAGE_SETS, parse_prompts, read_prompts
from webapp.experiments.models import Experiment, Status
from webapp.prompt_files import read_prompt_file

BASE = "base"
MAX_CLIPS = 2000  # systems x prompts x videos per prompt: what one study may ask the worker to render


def system_choices(user) -> list[tuple[str, str]]:
    """ "base" and every checkpoint of the user's finished or cancelled experiments."""
    choices = [(BASE, "base model (untuned: tiny, or the image-to-video backbone of the other systems)")]
    for e in Experiment.objects.visible_to(user).filter(status__in=(Status.FINISHED, Status.CANCELLED)):
        for ckpt in reversed(e.checkpoints()):
            choices.append((f"{e.pk}:{ckpt}", f"#{e.pk} {e.name} · {ckpt}"))
    return choices


class StudyForm(forms.Form):
    name = forms.CharField(max_length=120)
    systems = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, help_text="two or more")
    prompt_set = forms.ChoiceField(
        choices=[(p, p) for p in BUILTIN]
        + [(p, f"{p} (a first frame per prompt: image-to-video)") for p in IMAGE_SETS]
        + [("file", "uploaded file")],
        initial="heldout64",
        help_text="image-to-video systems need an image prompt set: both clips of a trial start from its first frame",
    )
    prompts_file = forms.FileField(required=False)
    prompt_limit = forms.IntegerField(min_value=1, max_value=1000, initial=16, help_text="use the first N prompts")
    videos_per_prompt = forms.IntegerField(min_value=1, max_value=8, initial=1)
    # clips get seeds seed .. seed + videos_per_prompt - 1, stored as 32-bit integers
    seed = forms.IntegerField(initial=0, min_value=-(2**31), max_value=2**31 - 1 - 8)
    question = forms.CharField(max_length=200, initial="Which video looks better?")
    instructions = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        initial="Watch both clips to the end, then choose the one that looks better: "
        "smoother, steadier, and closer to its description.",
    )
    allow_tie = forms.BooleanField(required=False, initial=True, label='offer "Can\'t tell"')
    gold_rate = forms.FloatField(
        min_value=0,
        max_value=0.5,
        initial=0.1,
        help_text="share of a volunteer's trials that are gold (one clip visibly degraded); "
        "at least one per volunteer when above 0",
    )
    votes_per_trial = forms.IntegerField(min_value=1, max_value=1000, initial=5)
    trials_per_participant = forms.IntegerField(min_value=1, max_value=500, initial=10)
    completion_url = forms.URLField(
        required=False,
        assume_scheme="https",
        help_text="optional: where volunteers go after their last vote (e.g. Prolific's completion link)",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["systems"].choices = system_choices(user)
        self.user = user

    def clean_systems(self):
        systems = self.cleaned_data["systems"]
        if len(systems) < 2:
            raise forms.ValidationError("choose two or more systems to compare")
        return systems

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        if data["prompt_set"] == "file":
            upload = data.get("prompts_file")
            if not upload:
                self.add_error("prompts_file", "choose a prompt file, or a built-in prompt set")
                return data
            try:
                text = read_prompt_file(upload)
            except forms.ValidationError as e:
                self.add_error("prompts_file", e)
                return data
            prompts = parse_prompts(text)
        else:
            prompts = read_prompts(data["prompt_set"])
        systems = data["systems"]  # add_error drops a field from data
        data["image_set"], data["base_backbone"] = self.image_to_video(systems, data["prompt_set"])
        if data["gold_rate"] > 0 and data["trials_per_participant"] < 2:
            self.add_error(
                "trials_per_participant", "with gold trials each volunteer needs two or more trials (one is gold)"
            )
        data["prompts"] = prompts[: data["prompt_limit"]]
        clips = len(data["prompts"]) * data["videos_per_prompt"] * len(systems)
        if clips > MAX_CLIPS:
            self.add_error("prompt_limit", f"that is {clips:,} clips to render; the limit is {MAX_CLIPS:,}")
        return data

    def image_to_video(self, systems: list[str], prompt_set: str) -> tuple[str, str]:
        """(the image set, the base system's backbone) of a study of these systems on this prompt
        set: an image-to-video study's systems share one image-to-video backbone (the base is its
        untuned weights) and an image prompt set, whose first frames both clips of a trial start
        from; a text-to-video study takes no image set. A mismatch is an error on its field."""
        pks = [choice.split(":")[0] for choice in systems if choice != BASE]
        backbones = {e.config["backbone"] for e in Experiment.objects.visible_to(self.user).filter(pk__in=pks)}
        i2v = sorted(backbones & set(I2V_BACKBONES))
        if not i2v:
            if prompt_set in IMAGE_SETS:
                self.add_error(
                    "prompt_set",
                    f"{prompt_set} gives a first frame per prompt, for image-to-video systems; these systems are "
                    "text-to-video: choose a text prompt set",
                )
            return "", "tiny"
        if len(backbones) > 1:
            self.add_error(
                "systems",
                f"image-to-video systems compare only with systems of the same backbone (from the same first "
                f"frames); these are on {', '.join(sorted(backbones))}",
            )
        elif prompt_set not in IMAGE_SETS:
            self.add_error(
                "prompt_set",
                f"image-to-video systems ({i2v[0]}) need a first frame per prompt: choose an image prompt set "
                f"({', '.join(IMAGE_SETS)})",
            )
        return prompt_set, i2v[0]


class ManageForm(forms.Form):
    action = forms.ChoiceField(choices=[("close", "close"), ("reopen", "reopen"), ("settings", "settings")])
    votes_per_trial = forms.IntegerField(min_value=1, max_value=1000, required=False)
    trials_per_participant = forms.IntegerField(min_value=1, max_value=500, required=False)


DAY_MS = 86_400_000


class ChoiceForm(forms.Form):
    """A volunteer's vote, with what the trial page measured (``Vote``'s timing fields; optional)."""

    trial = forms.IntegerField()
    choice = forms.ChoiceField(choices=[("left", "left"), ("right", "right"), ("tie", "tie")])
    onset_ms = forms.IntegerField(required=False, min_value=0, max_value=DAY_MS)
    reaction_ms = forms.IntegerField(required=False, min_value=0, max_value=DAY_MS)
    plays = forms.IntegerField(required=False, min_value=0, max_value=100_000)
    hidden_count = forms.IntegerField(required=False, min_value=0, max_value=100_000)
    hidden_ms = forms.IntegerField(required=False, min_value=0, max_value=DAY_MS)


class ExclusionForm(forms.Form):
    """The researcher excludes a participant (with the reason shown in the results) or takes it back."""

    action = forms.ChoiceField(choices=[("exclude", "exclude"), ("include", "include")])
    reason = forms.CharField(max_length=200, required=False, strip=True)

    def clean(self):
        data = super().clean()
        if data.get("action") == "exclude" and not data.get("reason"):
            self.add_error("reason", "say why: the reason is shown with the results")
        return data


MAX_GUIDE_WEIGHT = 10.0


class GuidedSamplingForm(forms.Form):
    """A prompt, how many seeds, and one slider per dimension of the reward model (Flow-NRG's w_k)."""

    prompt = forms.CharField(max_length=300, initial="a red ball moving right")
    seed = forms.IntegerField(initial=0, min_value=0, max_value=2**31 - 1 - 8)
    seeds = forms.IntegerField(initial=2, min_value=1, max_value=4, help_text="videos, each guided and unguided")
    steps = forms.IntegerField(initial=20, min_value=2, max_value=50, help_text="denoising steps")

    def __init__(self, *args, heads: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.heads = heads
        for h in heads:
            self.fields[f"weight_{h}"] = forms.FloatField(
                label=h,
                initial=1.0,
                min_value=0.0,
                max_value=MAX_GUIDE_WEIGHT,
                widget=forms.NumberInput(attrs={"type": "range", "min": 0, "max": MAX_GUIDE_WEIGHT, "step": 0.5}),
                help_text=f"weight of {h} in r = sum_k w_k r_k (0 = ignore it)",
            )

    def weights(self) -> dict[str, float]:
        return {h: self.cleaned_data[f"weight_{h}"] for h in self.heads}
