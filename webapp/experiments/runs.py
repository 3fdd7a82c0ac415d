"""Run management on the experiments list (issue 18, point 8): search, filters and sorting of the
runs table from the query string, and what an owner changes about a run after launch — its name,
tags, notes and group, archiving, deleting it with its files, downloading its folder."""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from django import forms
from django.db.models import F, Q, QuerySet

from webapp.experiments.models import Experiment, Status

# the table's sortable columns: query-string name -> model field
SORTS = {
    "id": "pk",
    "name": "name",
    "status": "status",
    "group": "run_group",
    "step": "last_step",
    "last": "last_reward",
    "best": "best_reward",
    "created": "created",
}
MAX_TAGS, MAX_TAG_CHARS = 12, 32


def parse_tags(text: str) -> list[str]:
    """'Seed sweep, baseline ,baseline' -> ['seed sweep', 'baseline']: lower case, trimmed, unique."""
    tags = list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    too_long = [t for t in tags if len(t) > MAX_TAG_CHARS]
    if too_long:
        raise forms.ValidationError(f"a tag has at most {MAX_TAG_CHARS} characters: {too_long[0][:40]!r}…")
    if len(tags) > MAX_TAGS:
        raise forms.ValidationError(f"at most {MAX_TAGS} tags, got {len(tags)}")
    return tags


class RunDetailsForm(forms.ModelForm):
    """What an owner may change about a run after launch (the config is what ran: not this)."""

    tags = forms.CharField(required=False, max_length=500, label="Tags", help_text="comma-separated")

    class Meta:
        model = Experiment
        fields = ["name", "tags", "run_group", "notes"]
        labels = {"name": "Name", "run_group": "Group", "notes": "Notes"}
        help_texts = {"run_group": "runs of one group show together on the list (e.g. the seeds of one setting)"}
        widgets = {"notes": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial["tags"] = ", ".join(self.instance.tags or [])

    def clean_tags(self) -> list[str]:
        return parse_tags(self.cleaned_data.get("tags") or "")

    def clean_run_group(self) -> str:
        return (self.cleaned_data.get("run_group") or "").strip()


def filtered(experiments: QuerySet, params) -> tuple[QuerySet, dict]:
    """The list's rows for the query string (q, status, tag, group, archived, sort) and the
    filters as applied (for the page to show them)."""
    q = (params.get("q") or "").strip()[:200]
    status = params.get("status") or ""
    tag = (params.get("tag") or "").strip().lower()
    group = (params.get("group") or "").strip()
    archived = params.get("archived") or ""
    sort = params.get("sort") or "-created"
    if q:
        words = Q()
        for word in q.split():
            words &= (
                Q(name__icontains=word)
                | Q(notes__icontains=word)
                | Q(run_group__icontains=word)
                | Q(config__algorithm__icontains=word)
                | Q(config__reward__icontains=word)
                | Q(config__dimension__icontains=word)
                | Q(config__backbone__icontains=word)
                | (Q(pk=int(word.lstrip("#"))) if word.lstrip("#").isdecimal() and len(word) < 12 else Q(pk__in=[]))
                | Q(pk__in=_tagged(experiments, word.lower(), exact=False))
            )
        experiments = experiments.filter(words)
    if status in Status.values:
        experiments = experiments.filter(status=status)
    if tag:
        experiments = experiments.filter(pk__in=_tagged(experiments, tag, exact=True))
    if group:
        experiments = experiments.filter(run_group=group)
    if archived == "only":
        experiments = experiments.filter(archived=True)
    elif archived != "all":
        experiments = experiments.filter(archived=False)
    key = sort.lstrip("-")
    if key not in SORTS:
        sort, key = "-created", "created"
    field = F(SORTS[key])
    order = field.desc(nulls_last=True) if sort.startswith("-") else field.asc(nulls_last=True)
    experiments = experiments.order_by(order, "-pk")
    applied = {"q": q, "status": status, "tag": tag, "group": group, "archived": archived, "sort": sort}
    return experiments, applied


def _tagged(experiments: QuerySet, tag: str, exact: bool) -> list[int]:
    """Ids of the rows with ``tag`` (or a tag containing it): tags are a JSON list, searched here
    rather than with ``__contains``, which SQLite lacks for JSON."""
    rows = experiments.exclude(tags=[]).values_list("pk", "tags")
    return [pk for pk, tags in rows if any(t == tag if exact else tag in t for t in tags or [])]


def sort_links(applied: dict) -> dict[str, str]:
    """Per sortable column, the sort its header link asks for: the other direction when the table
    is sorted by it, else descending for numbers and dates and ascending for words."""
    current = applied["sort"]
    links = {}
    for key in SORTS:
        if current == key:
            links[key] = f"-{key}"
        elif current == f"-{key}":
            links[key] = key
        else:
            links[key] = key if key in ("name", "status", "group") else f"-{key}"
    return links


def delete_with_files(experiment: Experiment) -> None:
    """The row (its metric points, samples and evaluations go with it) and its run folder."""
    folder = experiment.run_dir
    experiment.delete()
    shutil.rmtree(folder, ignore_errors=True)


SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def zip_folder(folder: Path, prefix: str):
    """A temporary file holding ``folder`` as a zip (stored, not compressed: checkpoints and mp4s
    do not shrink), each entry under ``prefix/``; the caller streams it and it goes when closed."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 (returned open: the response closes it)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                z.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
    out.seek(0)
    return out


def download_name(experiment: Experiment, what: str) -> str:
    return f"{SAFE_NAME.sub('-', experiment.name).strip('-')[:60] or 'run'}-{experiment.pk}-{what}.zip"
