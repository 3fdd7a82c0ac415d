#!/usr/bin/env bash
# The README's screenshots of the dashboard mid-step (with its phase), a study's results plots and
# the volunteer page, taken by the browser tests of tests/test_web_research_tools.py as they pass
# (real Daphne, Celery worker, database and Redis; Chromium). Needs what command B needs
# (DATABASE_URL, REDIS_URL as for the tests). Writes docs/screenshots/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
VPO_SCREENSHOTS=docs/screenshots .venv/bin/pytest tests/test_web_research_tools.py -q \
  -k "what_the_step_is_doing or pilot_votes_are_kept_apart" "$@"
ls -l docs/screenshots
