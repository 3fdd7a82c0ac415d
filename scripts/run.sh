#!/usr/bin/env bash
# README command A: set up, sample the demo videos, then serve the app on http://127.0.0.1:8000
# with a Celery worker and a demo account (its password is printed below; a new one each start).
# Ctrl-C, or INT/TERM/HUP to this script or to its process group, stops all of it (below).
set -euo pipefail

# Started in the background by a shell without job control (`setsid bash scripts/run.sh &` in a
# script), this shell inherits SIGINT ignored, and bash cannot trap a signal ignored on entry:
# start again with INT and TERM at their defaults, so that the traps below take.
ignored=$(awk '/^SigIgn:/ {print $2}' "/proc/$$/status" 2>/dev/null || echo 0)
if (( 16#${ignored:-0} & 16#4002 )); then  # bit 1: SIGINT, bit 14: SIGTERM
  exec env --default-signal=INT,TERM bash "$0" "$@"
fi

source "$(dirname "$0")/setup.sh"

# What users run is served as in production: DEBUG off (the friendly 404/500 pages, no settings
# or URL patterns shown), static files from WhiteNoise after collectstatic. Plain HTTP on loopback:
# no HTTPS redirect, cookies without the Secure flag, no HSTS. The secret key is made once.
mkdir -p runs
if [ ! -s runs/.secret_key ]; then
  (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))' > runs/.secret_key)
fi
export DEBUG=0 SECRET_KEY="$(cat runs/.secret_key)" SECURE_SSL_REDIRECT=0 SECURE_COOKIES=0 SECURE_HSTS_SECONDS=0
.venv/bin/python manage.py collectstatic --noinput -v 0

.venv/bin/vpo demo --out runs/demo
.venv/bin/python manage.py demo --reset

.venv/bin/vpo models  # which real backbones (wan, cogvideox, ltx) have weights under VPO_MODELS_DIR
say "starting a Celery worker (queues gpu, cpu; log: runs/worker.log)"
# Each child in a session of its own, so that a Ctrl-C (SIGINT to this process group) reaches this
# script alone and each child is told to stop exactly once: a second signal would turn the worker's
# warm shutdown (a training run pauses with a checkpoint and goes back to the queue) into a cold one.
setsid .venv/bin/celery -A worker.celery worker -Q gpu,cpu --pool=solo -n "local@%h" -l info > runs/worker.log 2>&1 &
worker=$!
say "VPO Studio on http://${HOST:-127.0.0.1}:${PORT:-8000}/ : log in with the demo account above, then 'Try the demo'"
say "on a GPU host: put diffusers folders under VPO_MODELS_DIR and run one gpu-queue worker per GPU (README: Real models)"
setsid .venv/bin/daphne -b "${HOST:-127.0.0.1}" -p "${PORT:-8000}" webapp.asgi:application &
daphne=$!

stopped=0
stop() {
  [ "$stopped" = 1 ] && return
  stopped=1
  say "stopping VPO Studio (a training run in progress pauses at its next step with a checkpoint)"
  kill -TERM "$daphne" "$worker" 2>/dev/null || true
  wait "$daphne" 2>/dev/null || true
  wait "$worker" 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap 'stop; exit 129' HUP
trap stop EXIT
wait -n "$worker" "$daphne" || true  # one of them ending (a crash) ends the app
