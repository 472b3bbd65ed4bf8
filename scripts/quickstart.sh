#!/usr/bin/env bash
# The whole RLQ chain on the embedded synthetic dataset, on CPU, ending with a table of what each stage does:
#   generate the data -> pose clusters (the CAP pose labels) -> clothes masks and size buckets -> a model of the
#   external part (the TAD teacher, and the starting point of every target model, as ImageNet weights are for real
#   runs) -> on the target part: base with CAL never started, base (CAL), base + CGAL/CAP, RLQ (CAP + TAD) ->
#   evaluation of each, clean and under the degradation mix (with per-query-size buckets).
#
#   bash scripts/quickstart.sh                    # one seed; ends with $OUT/results.md and $OUT/results.json
#   SEEDS="1 2 3" bash scripts/quickstart.sh      # three seeds, plus mean +- std rows
#   OUT=runs/qs EPOCHS=12 bash scripts/quickstart.sh
#
# Every model is a resnet18 at 64x32. The masks feed the size buckets only: the recolouring augmentation doubles
# every target epoch, beyond this budget (docs/synthetic-results.md gives its effect). Stages already finished (a `.done`
# file beside their log) are skipped, so a killed quickstart picks up where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/quickstart}
SEEDS=${SEEDS:-1}
EXTERNAL_EPOCHS=${EXTERNAL_EPOCHS:-10}
EPOCHS=${EPOCHS:-7}                  # every target model
CAL_START=${CAL_START:-3}
MINUTES_PER_SEED=${MINUTES_PER_SEED:-13}   # measured on 2 idle CPU cores (README)
source scripts/chain_common.sh
read -ra SEED_LIST <<< "$SEEDS"

echo "rlq quickstart: ${#SEED_LIST[@]} seed(s) ($SEEDS), about $((MINUTES_PER_SEED * ${#SEED_LIST[@]} + 1)) minutes on 2 idle CPU cores; output in $OUT"
prepare_data

for seed in "${SEED_LIST[@]}"; do
  begin_seed "$seed"
  train_target "$RUN" "$seed" base_no_cal "base, CAL never started ($EPOCHS epochs)" train_base.py --cal-start-epoch "$EPOCHS"
  train_target "$RUN" "$seed" base "base, CAL from epoch $CAL_START" train_base.py --cal-start-epoch "$CAL_START"
  train_target "$RUN" "$seed" cgal "base + CGAL/CAP (gender + pose heads)" train_cgal.py "${ATTRIBUTES[@]}" \
    --cal-start-epoch "$CAL_START"
  train_target "$RUN" "$seed" rlq "RLQ (CAP + TAD from the external model)" train_rlq.py "${ATTRIBUTES[@]}" "${RLQ[@]}" \
    --cal-start-epoch "$CAL_START"
  for model in base_no_cal base cgal rlq; do
    evaluate_model "$RUN" "$model"
  done
done

echo "results ($((SECONDS - START)) s in all):"
$PY -m rlq.report "$OUT" --seeds "${SEED_LIST[@]}" --root "$ROOT" --pose-csv "$OUT/pose.csv"
