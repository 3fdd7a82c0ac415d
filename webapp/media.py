"""Serving the media files the apps guard themselves (run videos, study clips)."""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

from django.http import FileResponse, HttpResponse

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _position(digits: str) -> int | None:
    """A byte position of a Range header; one of more than 18 digits (past any file, and past what
    ``int()`` parses without a limit) counts as 10**18: then an answer of 416, never a 500."""
    if not digits:
        return None
    return int(digits) if len(digits) <= 18 else 10**18


def ranged_file_response(request, file: Path):
    """FileResponse that honours a single ``Range: bytes=a-b`` (browsers seek videos with it)."""
    size = file.stat().st_size
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    match = _RANGE.match(request.headers.get("Range", ""))
    if not match or match.groups() == ("", ""):
        response = FileResponse(open(file, "rb"), content_type=content_type)  # noqa: SIM115 (the response closes it)
        response["Accept-Ranges"] = "bytes"
        return response
    start, end = (_position(g) for g in match.groups())
    if start is not None:
        end = min(end if end is not None else size - 1, size - 1)
    else:  # "bytes=-N": the last N bytes
        start, end = max(0, size - end), size - 1
    if start > end or start >= size:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    with open(file, "rb") as f:
        f.seek(start)
        body = f.read(end - start + 1)
    response = HttpResponse(body, status=206, content_type=content_type)
    response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Accept-Ranges"] = "bytes"
    return response
