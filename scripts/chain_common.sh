# Shared by scripts/quickstart.sh and scripts/fidelity.sh (sourced, not run): the python to use, the stage runner,
# the synthetic data with its pose clusters and masks, and the model settings of every quickstart model.
# Expects OUT set; defines ROOT, COMMON, ATTRIBUTES and START.

# The project venv when there is one (as .ci/run makes it), else the python on PATH.
if [[ -z "${PY:-}" ]]; then [[ -x .venv/bin/python ]] && PY=.venv/bin/python || PY=python; fi
DATA_SEED=${DATA_SEED:-0}            # the generated dataset; the training seeds are $SEEDS
ROOT=$OUT/data
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

prepare_data() {  # the synthetic dataset, its pose clusters (the CAP labels) and clothes masks (the size buckets)
  mkdir -p "$OUT"
  echo "data (seed $DATA_SEED):"
  stage "generate the synthetic dataset" "$OUT/generate.log" $PY -m rlq.synthetic --output "$ROOT" --seed "$DATA_SEED"
  stage "pose clusters (R_LA, K = 15)" "$OUT/pose.log" $PY preprocess_pose.py --dataset synthetic --root "$ROOT" \
    --keypoints "$ROOT/target/keypoints.json" --output "$OUT/pose.csv" --variants R_LA --ks 15
  stage "clothes masks and size buckets" "$OUT/masks.log" $PY preprocess_masks.py --dataset synthetic --root "$ROOT" \
    --parsing "$ROOT/target/parsing" --splits train query gallery --output "$OUT/masks"
}

# Every model: resnet18 at 64x32 from random init (the external model) or from the external model (--init-from).
COMMON=(--backbone resnet18 --no-pretrained --height 64 --width 32 --batch-size 32 --num-workers 0 --eval-batch-size 128)
ATTRIBUTES=(--gender-csv "$ROOT/target/gender.csv" --pose-csv "$OUT/pose.csv" --pose-column R_LA_15)

train_external() {  # train_external RUN SEED EPOCHS: the external-part model (TAD teacher, every target model's start)
  stage "external-part model (synthetic-external, $3 epochs)" "$1/external.log" \
    $PY train_base.py --dataset synthetic-external --root "$ROOT" --epochs "$3" --eval-every "$3" \
    --seed "$2" "${COMMON[@]}" --output "$1/external"
}

evaluate_model() {  # evaluate_model RUN MODEL [OPTION...]: clean and under the degradation mix, with size buckets
  local run=$1 model=$2; shift 2
  stage "evaluate $model: clean and the degradation mix" "$run/$model.eval.log" \
    $PY evaluate.py --checkpoint "$run/$model/last.pt" --root "$ROOT" --degrade mix --num-workers 0 \
    --size-buckets "$OUT/masks/sizes.csv" --json "$run/$model.eval.json" "$@"
}

train_target() {  # train_target RUN SEED MODEL DESCRIPTION SCRIPT [OPTION...]: a target model, from the external one
  local run=$1 seed=$2 model=$3 description=$4 script=$5; shift 5
  stage "$description" "$run/$model.log" \
    $PY "$script" --dataset synthetic --root "$ROOT" --epochs "$EPOCHS" --eval-every "$EPOCHS" --seed "$seed" \
    --init-from "$run/external/last.pt" "${COMMON[@]}" "$@" --output "$run/$model"
}

rlq_options() {  # rlq_options RUN: what train_rlq.py adds to train_cgal.py's options (its teacher, the external data)
  RLQ=(--teacher "$1/external/last.pt" --external-dataset synthetic-external --external-root "$ROOT")
}

begin_seed() {  # begin_seed SEED: RUN=$OUT/seed<SEED>, its external-part model and RLQ's options for it
  RUN=$OUT/seed$1
  mkdir -p "$RUN"
  echo "seed $1:"
  train_external "$RUN" "$1" "$EXTERNAL_EPOCHS"
  rlq_options "$RUN"
}
