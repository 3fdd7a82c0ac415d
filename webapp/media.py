"""Serving the media files the apps guard themselves (run videos, study clips)."""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

from django.http import FileResponse, HttpResponse

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def ranged_file_response(request, file: Path):
    """FileResponse that honours a single ``Range: bytes=a-b`` (browsers seek videos with it)."""
    size = file.stat().st_size
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    match = _RANGE.match(request.headers.get("Range", ""))
    if not match or match.groups() == ("", ""):
        response = FileResponse(open(file, "rb"), content_type=content_type)  # noqa: SIM115 (the response closes it)
        response["Accept-Ranges"] = "bytes"
        return response
    start, end = match.groups()
    if start:
        start, end = int(start), min(int(end) if end else size - 1, size - 1)
    else:  # "bytes=-N": the last N bytes
        start, end = max(0, size - int(end)), size - 1
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
