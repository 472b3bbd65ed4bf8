#!/usr/bin/env bash
# Teacher, base, CGAL and RLQ on the synthetic dataset with one budget and seed, each evaluated clean and
# under every synthetic degradation; writes markdown tables of top-1 / mAP (CC and standard) to $OUT/results.md.
#
#   scripts/synthetic_results.sh                 # about 30 minutes on 2 idle CPU cores (stages already done are skipped)
#   OUT=runs/x EPOCHS=8 SEED=1 scripts/synthetic_results.sh
#
# Every model: resnet18 from random init (--no-pretrained), 128x64 inputs, batch 32, --epochs $EPOCHS
# (the teacher: $TEACHER_EPOCHS on synthetic-external), CAL from epoch $CAL_START, evaluated once at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# The project venv when there is one (as .ci/run makes it), else the python on PATH.
if [[ -z "${PY:-}" ]]; then [[ -x .venv/bin/python ]] && PY=.venv/bin/python || PY=python; fi
OUT=${OUT:-runs/synthetic-results}
EPOCHS=${EPOCHS:-8}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-10}
CAL_START=${CAL_START:-4}
SEED=${SEED:-1}
ROOT=${ROOT:-$($PY -c "from rlq.synthetic import ensure_synthetic; print(ensure_synthetic())")}
mkdir -p "$OUT"

COMMON=(--no-pretrained --backbone resnet18 --height 128 --width 64 --batch-size 32 --lr 3.5e-4 --cal-start-epoch "$CAL_START"
        --num-workers 0 --seed "$SEED" --eval-batch-size 128)
TARGET=(--dataset synthetic --root "$ROOT" --epochs "$EPOCHS" --eval-every "$EPOCHS")
ATTRIBUTES=(--gender-csv "$ROOT/target/gender.csv" --pose-csv "$OUT/pose.csv" --pose-column R_LA_15)

run() {  # run NAME COMMAND...: skip a stage whose last.pt says it finished
  local name=$1; shift
  if [[ -f "$OUT/$name/done" ]]; then echo "== $name: done already"; return; fi
  echo "== $name: $*"
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  echo "$name: $((SECONDS - start)) s" >> "$OUT/times.txt"
  touch "$OUT/$name/done"
}

# Pose clusters of the target training images (the synthetic set ships AlphaPose-style keypoints).
[[ -f "$OUT/pose.csv" ]] || $PY preprocess_pose.py --dataset synthetic --root "$ROOT" --keypoints "$ROOT/target/keypoints.json" \
  --out "$OUT/pose.csv" --variants R_LA --ks 15 > "$OUT/pose.log"

run teacher $PY train_base.py --dataset synthetic-external --root "$ROOT" --epochs "$TEACHER_EPOCHS" --eval-every "$TEACHER_EPOCHS" \
  "${COMMON[@]}" --output "$OUT/teacher"
run base $PY train_base.py "${TARGET[@]}" "${COMMON[@]}" --output "$OUT/base"
run cgal $PY train_cgal.py "${TARGET[@]}" "${COMMON[@]}" "${ATTRIBUTES[@]}" --output "$OUT/cgal"
run rlq $PY train_rlq.py "${TARGET[@]}" "${COMMON[@]}" "${ATTRIBUTES[@]}" --teacher "$OUT/teacher/last.pt" \
  --external-dataset synthetic-external --external-root "$ROOT" --output "$OUT/rlq"

for name in base cgal rlq; do
  [[ -f "$OUT/$name.eval.json" ]] && continue
  echo "== evaluate $name"
  $PY evaluate.py --checkpoint "$OUT/$name/last.pt" --root "$ROOT" --degrade pixelate motion gaussian mix \
    --num-workers 0 --json "$OUT/$name.eval.json" > "$OUT/$name.eval.log" 2>&1
done

$PY - "$OUT" <<'PYTHON'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
conditions = ["clean", "pixelate", "motion", "gaussian", "mix"]
models = (("base", "base"), ("cgal", "base + CGAL"), ("rlq", "RLQ (CGAL + TAD)"))
evaluations = {name: json.loads((out / f"{name}.eval.json").read_text()) for name, _ in models}

def table(protocol):
    lines = ["| model | " + " | ".join(f"{c} top-1 | {c} mAP" for c in conditions) + " |",
             "|---|" + "---:|" * (2 * len(conditions))]
    for name, label in models:
        results = evaluations[name]
        by = {"clean": results[protocol]} | {k: v[protocol] for k, v in results["degraded"].items()}
        lines.append(f"| {label} | " + " | ".join(f"{100 * by[c]['top1']:.1f} | {100 * by[c]['mAP']:.1f}" for c in conditions) + " |")
    return "\n".join(lines)

teacher = json.loads((out / "teacher" / "metrics.json").read_text())["best"]
queries = evaluations["base"]["cc"]["num_valid_queries"]
text = (f"Synthetic target, last epoch of each run, percent ({queries} CC queries: one query is {100 / queries:.1f} top-1 points).\n\n"
        f"Clothes-changing (CC) protocol:\n\n{table('cc')}\n\nStandard protocol (for reference):\n\n{table('standard')}\n\n"
        f"Teacher (base model on synthetic-external, standard protocol): top-1 {100 * teacher['top1']:.1f}, mAP {100 * teacher['mAP']:.1f}\n")
(out / "results.md").write_text(text)
print(text)
PYTHON
