"""deploy/nginx.conf on this machine, unchanged but for where things are: upstream ports on
loopback instead of compose's service names, and scratch paths nginx may write. Used by
tests/test_deploy.py and ``benchmarks/votes.py --proxy``; needs Debian's nginx."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def render(scratch: Path, port: int, web: int, ws: int) -> Path:
    """The config listening on 127.0.0.1:``port`` with HTTP to ``web`` and websockets to ``ws``."""
    text = CONFIG.read_text()
    for old, new in (
        ("server web:8000;", f"server 127.0.0.1:{web};"),
        ("server ws:8001;", f"server 127.0.0.1:{ws};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
    ):
        if old not in text:  # run the real config or nothing, never a different one
            raise ValueError(f"{CONFIG} has no {old!r}: update {__file__} with it")
        text = text.replace(old, new)
    temp = "".join(
        f"    {kind}_temp_path {scratch}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    path = scratch / "nginx.conf"
    path.write_text(text.replace("http {\n", "http {\n" + temp, 1))
    return path


def start(scratch: Path, port: int, web: int, ws: int) -> subprocess.Popen:
    """nginx in the foreground with that config; its output goes to ``scratch``/nginx.log."""
    config = render(scratch, port, web, ws)
    return subprocess.Popen(
        [NGINX, "-p", str(scratch), "-c", str(config), "-g", f"daemon off; pid {scratch}/nginx.pid;"],
        stdout=(scratch / "nginx.log").open("w"),
        stderr=subprocess.STDOUT,
    )
