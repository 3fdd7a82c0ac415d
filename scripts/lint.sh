#!/usr/bin/env bash
# Style and type checks (configured in pyproject.toml): ruff's lint rules, ruff's formatting, and
# mypy on the library. CI runs this before the tests (.ci/run); run it before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # files = ["vpo"] in pyproject.toml
