"""Reading a prompt file uploaded to a form (the new-experiment and new-study forms share it)."""

from __future__ import annotations

from django import forms
from django.core.files.uploadedfile import UploadedFile

from vpo.data.prompts import parse_prompts

MAX_PROMPT_FILE_BYTES = 64 * 1024
MAX_PROMPTS = 1000
MAX_PROMPT_CHARS = 300


def read_prompt_file(upload: UploadedFile) -> str:
    """The text of an uploaded prompt file, or a ValidationError saying what is wrong with it."""
    size = upload.size or 0
    if size > MAX_PROMPT_FILE_BYTES:
        raise forms.ValidationError(f"the file is {size:,} bytes; the limit is {MAX_PROMPT_FILE_BYTES:,}")
    raw = upload.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise forms.ValidationError(f"the file is not UTF-8 text (byte {e.start} cannot be decoded)") from None
    if "\x00" in text:
        raise forms.ValidationError("the file is binary, not text (it contains NUL bytes)")
    prompts = parse_prompts(text)
    if not prompts:
        raise forms.ValidationError("the file has no prompts: put one prompt per line ('#' starts a comment)")
    if len(prompts) > MAX_PROMPTS:
        raise forms.ValidationError(f"the file has {len(prompts):,} prompts; the limit is {MAX_PROMPTS:,}")
    longest = max(prompts, key=len)
    if len(longest) > MAX_PROMPT_CHARS:
        raise forms.ValidationError(
            f"a prompt has {len(longest)} characters; the limit is {MAX_PROMPT_CHARS} ({longest[:40]!r}...)"
        )
    return text
