#!/usr/bin/env bash
# Train ResNet-20 and ResNet-56 on CIFAR-10 side by side on one GPU, inside a time budget.
#
# Run from the repository root on the GPU machine, with .gpu/ carried along:
#   .gpu/cifar10-jpeg.npz   (scripts/pack_cifar10.py)
#   .gpu/whl/*.whl          (torch-pruning, pydantic and their pure dependencies)
#
# Usage: bash scripts/gpu_zoo.sh [TOTAL_SECONDS=420]
# Each training process gets TOTAL_SECONDS - STARTUP_S (default 60) as its --time-budget,
# counted from its own start (data decoding and step timing included). Results go to
# $OUT (default ./gpu_out): <model>-cifar10.safetensors, <model>-cifar10.json, <model>.log.
set -euo pipefail

total="${1:-420}"
startup="${STARTUP_S:-60}"
budget=$((total - startup))
out="${OUT:-gpu_out}"
data=".gpu/cifar10-jpeg.npz"
mkdir -p "$out"

echo "== $(date -u +%FT%TZ) total ${total}s, per-model budget ${budget}s, out $out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:src
export PYTHONUNBUFFERED=1

nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())"
python3 -c "from dualprune import models; print('dualprune models ok')"

# train MODEL EPOCHS: one run, its log in $out/MODEL.log, its stdout lines prefixed.
train() {
    local model="$1" epochs="$2"
    python3 scripts/train_cifar_gpu.py --data "$data" --model "$model" --epochs "$epochs" \
        --batch 256 --lr 0.2 --wd 5e-4 --label-smoothing 0.1 --warmup-epochs 3 --seed 0 \
        --time-budget "$budget" --workers 6 --threads 4 --out "$out" 2>&1 \
        | tee "$out/$model.log" | sed -u "s/^/[$model] /"
}

train resnet20 200 &
pid20=$!
train resnet56 200 &
pid56=$!

status=0
wait "$pid20" || { echo "resnet20 FAILED"; status=1; }
wait "$pid56" || { echo "resnet56 FAILED"; status=1; }

for model in resnet20 resnet56; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); \
print(r['model'], 'complete', r['complete'], 'epochs', r['epochs_used'], '/', r['epochs_asked'], \
'fp32 acc', r.get('final_test_acc_fp32'), 'bf16 acc', r.get('final_test_acc_amp'), \
'total_s', round(r['total_s']))" "$out/$model-cifar10.json" || status=1
done
ls -la "$out"
echo "== $(date -u +%FT%TZ) exit $status"
exit "$status"
