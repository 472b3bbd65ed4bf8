#!/usr/bin/env bash
# Fetch the wheel files that scripts/gpu_check.sh installs on a GPU machine without network access, into wheels/
# (or $RLQ_WHEELS; not tracked by git). Run it where pip reaches PyPI, then copy wheels/ along with the repository.
#
#   bash scripts/fetch_wheels.sh                  # for the GPU machine's Python (default 3.12: PYTHON_VERSION=3.11 ...)
#
# Such machines have torch, accelerate, timm, scikit-learn and onnx but not tyro and what it needs; these are pure
# Python, so one set serves every platform.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${RLQ_WHEELS:-wheels}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PACKAGES=(tyro typeguard docstring-parser typing-extensions)

mkdir -p "$OUT"
rm -f "$OUT"/tyro-*.whl "$OUT"/typeguard-*.whl "$OUT"/docstring_parser-*.whl "$OUT"/typing_extensions-*.whl  # one version each
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" -d "$OUT" "${PACKAGES[@]}"
ls -1 "$OUT"
