#!/usr/bin/env bash
# How far the two differences from the authors' runs move results (docs/differences.md),
# measured on the embedded synthetic data with the quickstart's models and budget (scripts/quickstart.sh):
#   - RLQ with and without --adam-steps-idle-parameters (fp32 both);
#   - base (CAL), base + CGAL/CAP and RLQ trained and evaluated in fp32 (--mixed-precision no, the authors')
#     against bf16 autocast (--mixed-precision bf16, our GPU default).
# Per seed, one external-part model (fp32) is the start of every target model and RLQ's teacher, so each pair differs
# only in the option compared. Ends with $OUT/fidelity.md and $OUT/fidelity.json (python -m rlq.fidelity).
#
#   SEEDS="1 2 3" bash scripts/fidelity.sh       # about 20 minutes per seed on 2 idle CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/fidelity}
SEEDS=${SEEDS:-"1 2 3"}
EXTERNAL_EPOCHS=${EXTERNAL_EPOCHS:-10}
EPOCHS=${EPOCHS:-7}
CAL_START=${CAL_START:-3}
source scripts/chain_common.sh
read -ra SEED_LIST <<< "$SEEDS"

echo "rlq fidelity: ${#SEED_LIST[@]} seed(s) ($SEEDS), about $((20 * ${#SEED_LIST[@]} + 1)) minutes on 2 idle CPU cores; output in $OUT"
prepare_data

for seed in "${SEED_LIST[@]}"; do
  begin_seed "$seed"
  for precision in no bf16; do
    suffix=$([[ $precision == no ]] && echo "" || echo "_bf16")
    name=$([[ $precision == no ]] && echo "fp32" || echo "bf16 autocast")
    train_target "$RUN" "$seed" "base$suffix" "base (CAL), $name" train_base.py --cal-start-epoch "$CAL_START" \
      --mixed-precision "$precision"
    train_target "$RUN" "$seed" "cgal$suffix" "base + CGAL/CAP, $name" train_cgal.py "${ATTRIBUTES[@]}" \
      --cal-start-epoch "$CAL_START" --mixed-precision "$precision"
    train_target "$RUN" "$seed" "rlq$suffix" "RLQ, $name" train_rlq.py "${ATTRIBUTES[@]}" "${RLQ[@]}" \
      --cal-start-epoch "$CAL_START" --mixed-precision "$precision"
  done
  train_target "$RUN" "$seed" rlq_idle "RLQ, fp32, --adam-steps-idle-parameters" train_rlq.py "${ATTRIBUTES[@]}" "${RLQ[@]}" \
    --cal-start-epoch "$CAL_START" --mixed-precision no --adam-steps-idle-parameters
  for model in base cgal rlq rlq_idle; do evaluate_model "$RUN" "$model" --mixed-precision no; done
  for model in base_bf16 cgal_bf16 rlq_bf16; do evaluate_model "$RUN" "$model" --mixed-precision bf16; done
done

echo "results ($((SECONDS - START)) s in all):"
$PY -m rlq.fidelity "$OUT" --seeds "${SEED_LIST[@]}"
