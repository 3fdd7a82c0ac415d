#!/usr/bin/env bash
# README command B: set up (with the browser the UI tests drive), then run the whole test suite
# (extra arguments go to pytest), with the official VBench in .venv-vbench (scripts/setup_vbench.sh).
# VPO_LINT=1 runs scripts/lint.sh (ruff, mypy) before the tests.
set -euo pipefail
export VPO_BROWSER=1
source "$(dirname "$0")/setup.sh"
# the official VBench in its own virtualenv: tests compare our measures with it (never skipped here)
bash scripts/setup_vbench.sh
export VPO_REQUIRE_VBENCH=1
# CI (.ci/run) checks style and types first: a failure there stops before the slow tests
if [[ "${VPO_LINT:-0}" == 1 ]]; then
  bash scripts/lint.sh
fi
exec .venv/bin/python -m pytest "$@"
