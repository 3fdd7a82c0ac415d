#!/usr/bin/env bash
# README command B: set up (with the browser the UI tests drive), then run the whole test suite
# (extra arguments go to pytest).
set -euo pipefail
export VPO_BROWSER=1
source "$(dirname "$0")/setup.sh"
exec .venv/bin/python -m pytest "$@"
