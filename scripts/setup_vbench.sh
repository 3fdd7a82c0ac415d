# The official VBench (PyPI `vbench` 0.1.5) in a virtualenv of its own: it pins transformers 4.33.2 and
# numpy < 2 and imports decord and torchvision, none of which fit the main .venv. Idempotent.
#
#   bash scripts/setup_vbench.sh            # -> .venv-vbench (VBENCH_VENV overrides the folder)
#
# torch and torchvision are installed first and pinned as a pair (torch 2.13.0 / torchvision 0.28.0), so that
# vbench's requirements do not pull another torch: on a CPU machine set TORCH_INDEX_URL to PyTorch's CPU index
# (or have the CPU wheel in pip's find-links), or pip takes the multi-GB CUDA build. Model weights are never
# downloaded here or at run time: place them under VBENCH_CACHE_DIR and check with `vpo vbench check`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${VBENCH_VENV:-.venv-vbench}
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
VPY=$VENV/bin/python
stamp=$VENV/.vbench-installed
if [ -f "$stamp" ] && $VPY vpo/vbench_runner.py --check >/dev/null 2>&1; then
  say "$VENV already has vbench"; exit 0
fi
say "installing torch 2.13.0 + torchvision 0.28.0 into $VENV"
$VPY -m pip install -q --upgrade pip
$VPY -m pip install -q "torch==2.13.0" "torchvision==0.28.0" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
say "installing vbench==0.1.5 and its pinned dependencies"
# the constraint keeps the torch pair just installed whatever vbench's dependencies ask for
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
$VPY -c 'from importlib.metadata import version as v; print("torch==" + v("torch")); print("torchvision==" + v("torchvision"))' \
  > "$constraints"
PIP_CONSTRAINT="$constraints" $VPY -m pip install -q "vbench==0.1.5"
$VPY vpo/vbench_runner.py --check
touch "$stamp"
