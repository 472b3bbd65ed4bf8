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
# every target epoch, beyond this budget (README, "Evidence", gives its effect). Stages already finished (a `.done`
# file beside their log) are skipped, so a killed quickstart picks up where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

# The project venv when there is one (as .ci/run makes it), else the python on PATH.
if [[ -z "${PY:-}" ]]; then [[ -x .venv/bin/python ]] && PY=.venv/bin/python || PY=python; fi
OUT=${OUT:-runs/quickstart}
SEEDS=${SEEDS:-1}
DATA_SEED=${DATA_SEED:-0}            # the generated dataset; the training seeds are $SEEDS
EXTERNAL_EPOCHS=${EXTERNAL_EPOCHS:-10}
EPOCHS=${EPOCHS:-7}                  # every target model
CAL_START=${CAL_START:-3}
MINUTES_PER_SEED=${MINUTES_PER_SEED:-13}   # measured on 2 idle CPU cores (README, "Quickstart")
ROOT=$OUT/data
read -ra SEED_LIST <<< "$SEEDS"

echo "rlq quickstart: ${#SEED_LIST[@]} seed(s) ($SEEDS), about $((MINUTES_PER_SEED * ${#SEED_LIST[@]} + 1)) minutes on 2 idle CPU cores; output in $OUT"
mkdir -p "$OUT"
START=$SECONDS

stage() {  # stage NAME LOG COMMAND...: run one stage, its output in LOG, unless it finished before
  local name=$1 log=$2; shift 2
  if [[ -f "$log.done" ]]; then echo "  $name: done already"; return; fi
  printf '  [%3d s] %s ... ' "$((SECONDS - START))" "$name"
  local begin=$SECONDS
  if ! "$@" > "$log" 2>&1; then
    echo "failed; the last lines of $log:"; tail -n 20 "$log"; exit 1
  fi
  echo "$((SECONDS - begin)) s"
  touch "$log.done"
}

echo "data (seed $DATA_SEED):"
stage "generate the synthetic dataset" "$OUT/generate.log" $PY -m rlq.synthetic --out "$ROOT" --seed "$DATA_SEED"
stage "pose clusters (R_LA, K = 15)" "$OUT/pose.log" $PY preprocess_pose.py --dataset synthetic --root "$ROOT" \
  --keypoints "$ROOT/target/keypoints.json" --out "$OUT/pose.csv" --variants R_LA --ks 15
stage "clothes masks and size buckets" "$OUT/masks.log" $PY preprocess_masks.py --dataset synthetic --root "$ROOT" \
  --parsing "$ROOT/target/parsing" --splits train query gallery --out "$OUT/masks"

# Every model: resnet18 at 64x32 from random init (the external model) or from the external model (--init-from).
COMMON=(--backbone resnet18 --no-pretrained --height 64 --width 32 --batch-size 32 --num-workers 0 --eval-batch-size 128)
ATTRIBUTES=(--gender-csv "$ROOT/target/gender.csv" --pose-csv "$OUT/pose.csv" --pose-column R_LA_15)

for seed in "${SEED_LIST[@]}"; do
  RUN=$OUT/seed$seed
  mkdir -p "$RUN"
  TARGET=(--dataset synthetic --root "$ROOT" --epochs "$EPOCHS" --eval-every "$EPOCHS" --seed "$seed"
          --init-from "$RUN/external/last.pt" "${COMMON[@]}")
  echo "seed $seed:"
  stage "external-part model (synthetic-external, $EXTERNAL_EPOCHS epochs)" "$RUN/external.log" \
    $PY train_base.py --dataset synthetic-external --root "$ROOT" --epochs "$EXTERNAL_EPOCHS" --eval-every "$EXTERNAL_EPOCHS" \
    --seed "$seed" "${COMMON[@]}" --output "$RUN/external"
  stage "base, CAL never started ($EPOCHS epochs)" "$RUN/base_no_cal.log" \
    $PY train_base.py "${TARGET[@]}" --cal-start-epoch "$EPOCHS" --output "$RUN/base_no_cal"
  stage "base, CAL from epoch $CAL_START" "$RUN/base.log" \
    $PY train_base.py "${TARGET[@]}" --cal-start-epoch "$CAL_START" --output "$RUN/base"
  stage "base + CGAL/CAP (gender + pose heads)" "$RUN/cgal.log" \
    $PY train_cgal.py "${TARGET[@]}" "${ATTRIBUTES[@]}" --cal-start-epoch "$CAL_START" --output "$RUN/cgal"
  stage "RLQ (CAP + TAD from the external model)" "$RUN/rlq.log" \
    $PY train_rlq.py "${TARGET[@]}" "${ATTRIBUTES[@]}" --cal-start-epoch "$CAL_START" --teacher "$RUN/external/last.pt" \
    --external-dataset synthetic-external --external-root "$ROOT" --output "$RUN/rlq"
  for model in base_no_cal base cgal rlq; do
    stage "evaluate $model: clean and the degradation mix" "$RUN/$model.eval.log" \
      $PY evaluate.py --checkpoint "$RUN/$model/last.pt" --root "$ROOT" --degrade mix --num-workers 0 \
      --size-buckets "$OUT/masks/sizes.csv" --json "$RUN/$model.eval.json"
  done
done

echo "results ($((SECONDS - START)) s in all):"
$PY -m rlq.report "$OUT" --seeds "${SEED_LIST[@]}" --root "$ROOT" --pose-csv "$OUT/pose.csv"
