#!/usr/bin/env bash
# README command A: set up, sample the demo videos, then serve the app on http://127.0.0.1:8000
# with a Celery worker and a demo account (its password is printed below; a new one each start).
set -euo pipefail
source "$(dirname "$0")/setup.sh"

.venv/bin/vpo demo --out runs/demo
.venv/bin/python manage.py demo --reset

.venv/bin/vpo models  # which real backbones (wan, cogvideox, ltx) have weights under VPO_MODELS_DIR
mkdir -p runs
say "starting a Celery worker (queues gpu, cpu; log: runs/worker.log)"
.venv/bin/celery -A worker.celery worker -Q gpu,cpu --pool=solo -n "local@%h" -l info > runs/worker.log 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT
say "VPO Studio on http://${HOST:-127.0.0.1}:${PORT:-8000}/ : log in with the demo account above, then 'Try the demo'"
say "on a GPU host: put diffusers folders under VPO_MODELS_DIR and run one gpu-queue worker per GPU (README: Real models)"
.venv/bin/daphne -b "${HOST:-127.0.0.1}" -p "${PORT:-8000}" webapp.asgi:application
