#!/usr/bin/env bash
# The paper's prcc run(s), every seed, evaluated and tabled (rlq/reproduce.py has the settings; docs/reproducing.md).
#   bash scripts/reproduce_prcc.sh --root DATA [...] [--dry-run]      # --help lists the arguments
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then [[ -x .venv/bin/python ]] && PY=.venv/bin/python || PY=python; fi
exec "$PY" -m rlq.reproduce prcc "$@"
