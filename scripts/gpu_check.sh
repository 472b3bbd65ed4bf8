#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): every training script end to end with its defaults, and every benchmark at
# the paper's sizes, in about 8 minutes on one GPU; writes gpu_check.md and gpu_check.json and prints the table.
#
#   bash scripts/gpu_check.sh                                 # on a GPU machine (--budget-min 8)
#   bash scripts/gpu_check.sh --report-dir DIR                # the two reports in DIR (default: the work folder)
#   bash scripts/gpu_check.sh --device cpu --tiny             # the same checks at tiny sizes on CPU (about 2-3 minutes)
#
# A GPU machine without network access may lack tyro, typeguard and docstring-parser. What the check needs and does
# not find is installed from the wheel files in wheels/ (or $RLQ_WHEELS) into a temporary folder, never from the
# network; fetch them beforehand on a machine that reaches PyPI with `bash scripts/fetch_wheels.sh`, and copy wheels/
# along with the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# The project venv when there is one (as .ci/run makes it), else the python on PATH.
if [[ -z "${PY:-}" ]]; then [[ -x .venv/bin/python ]] && PY=.venv/bin/python || PY=python3; fi
WHEELS=${RLQ_WHEELS:-wheels}
# The scripts and benchmarks import rlq from this checkout, installed or not.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
MODULES=(torch torchvision timm accelerate numpy sklearn scipy PIL tqdm tensorboard tyro typeguard docstring_parser)

missing() {  # the modules of MODULES that $PY cannot find
  "$PY" -c 'import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "${MODULES[@]}"
}

absent=$(missing)
wheels=()
if [[ -n "$absent" ]]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  if (( ${#wheels[@]} )); then
    # Pure-Python wheels are zip files of the package and its metadata: unpacking them into a folder on PYTHONPATH
    # installs them, with no pip, no index and no network.
    site=$(mktemp -d "${TMPDIR:-/tmp}/rlq-gpu-check-site.XXXXXX")
    trap 'rm -rf "$site"' EXIT
    "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$site" "${wheels[@]}"
    export PYTHONPATH="$PYTHONPATH:$site"
    echo "installed $(basename -a "${wheels[@]}" | tr '\n' ' ')into $site (for: $absent)"
    absent=$(missing)
  fi
fi
if [[ -n "$absent" ]]; then
  echo "error: $PY cannot import: $absent. Install the project (pip install -e .) or use a machine that has them;" \
    "this script brings only tyro, typeguard and docstring-parser, from the wheel files in $WHEELS/" \
    "(${#wheels[@]} there; fetch them where pip reaches PyPI with 'bash scripts/fetch_wheels.sh')" >&2
  exit 1
fi
"$PY" benchmarks/gpu_check.py "$@"
