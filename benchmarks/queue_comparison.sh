#!/usr/bin/env bash
# Queue the method comparison as DVC experiments, so `dvc exp show` and the MLflow UI
# show the same grid as benchmarks/compare_methods.py:
#   benchmarks/queue_comparison.sh [DATA_ROOT]      then: uv run dvc queue start -j 1
#   uv run dvc exp show --only-changed --drop 'latency.*'
# Every experiment uses the same search + fine-tuning epochs (equal total epochs).
set -euo pipefail
# absolute: queued experiments run in temporary copies under .dvc/tmp/exps
data_root=$(realpath "${1:-../shared/datasets/cifar10-dev}")
search_epochs=${SEARCH_EPOCHS:-12}
finetune_epochs=${FINETUNE_EPOCHS:-6}

common=(
  -S data.dataset=imagefolder -S "data.root=${data_root}" -S data.image_size=32
  -S data.val_fraction=0.1 -S data.test_fraction=0.2
  -S train.batch_size=128 -S train.augment.crop_padding=4 -S train.augment.hflip=true
  -S "search.epochs=${search_epochs}" -S "finetune.epochs=${finetune_epochs}"
)

queue() {  # queue NAME OVERRIDES...
  local name=$1
  shift
  uv run dvc exp run --queue -n "$name" "${common[@]}" "$@"
}

for seed in 0 1 2; do
  for budget in 0.5 0.3; do
    for method in jst scratch l1 slimming random; do
      queue "${method}-b${budget}-s${seed}" -S "seed=${seed}" -S "search.method=${method}" \
        -S "search.target_flops=${budget}"
    done
  done
  # ablations of JST, one mechanism off at a time (as benchmarks/compare_methods.py)
  for ablation in freeze_fraction=0.0 alpha_lr=0.0 perturbation=true thresholding=false; do
    queue "jst-${ablation%%=*}-${ablation##*=}-b0.3-s${seed}" -S "seed=${seed}" -S search.method=jst \
      -S search.target_flops=0.3 -S "search.jst.${ablation}"
  done
done
uv run dvc queue status
