# Sourced by scripts/run.sh and scripts/test.sh: one idempotent set-up for a fresh Debian machine.
#   - a virtualenv in .venv (Python >= 3.11), torch==2.13.0 first (the CPU wheel on CPU machines),
#     then this package and its test extras;
#   - a local redis-server on REDIS_URL if none answers (installed from Debian's packages when
#     absent and running as root);
#   - the database migrated (SQLite by default, DATABASE_URL otherwise);
#   - with VPO_BROWSER=1 (command B), Debian's chromium and nginx for the browser and deployment tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Python >= 3.11 is needed (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv .venv
    else
      echo "python venv module missing: apt-get install python3-venv" >&2; exit 1
    fi
  fi
fi
VPY=.venv/bin/python

if ! $VPY -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  say "installing torch==2.13.0"
  # On a CPU machine, point TORCH_INDEX_URL at PyTorch's CPU wheel index to avoid the CUDA build.
  $VPY -m pip install -q --upgrade pip
  $VPY -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi

stamp=.venv/.vpo-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing vpo-studio and its dependencies"
  $VPY -m pip install -q -e '.[test]'
  touch "$stamp"
fi

redis_answers() { $VPY - "$REDIS_URL" <<'PY' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
}
if ! redis_answers; then
  if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing redis-server"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      echo "no Redis answers on $REDIS_URL and redis-server is not installed: apt-get install redis-server" >&2
      exit 1
    fi
  fi
  port=$($VPY -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).port or 6379)' "$REDIS_URL")
  say "starting redis-server on port $port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no
  for _ in $(seq 50); do redis_answers && break; sleep 0.1; done
  redis_answers || { echo "redis-server did not answer on $REDIS_URL" >&2; exit 1; }
fi

if [ "${VPO_BROWSER:-0}" = 1 ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/sbin/nginx ]; }; then
  # the UI tests drive Debian's Chromium with Playwright (Playwright cannot download browsers here);
  # the deployment test runs deploy/nginx.conf in Debian's nginx
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium and nginx (for the browser and deployment tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nginx >/dev/null
  else
    echo "the browser and deployment tests need /usr/bin/chromium and /usr/sbin/nginx:" \
         "apt-get install chromium nginx" >&2
    exit 1
  fi
fi

say "migrating the database"
$VPY manage.py migrate --noinput -v 0
