#!/usr/bin/env bash
# GPU smoke check for configs/happywhale-gpu.yaml: a few hundred training steps at full size
# (EfficientNet-B7 at 768 px, bf16, gradient checkpointing) on synthetic 768 px fin photos,
# on every GPU of the machine (torchrun), then prints images/s. Never needed by the tests.
#
#   bash benchmarks/gpu_smoke.sh            # STEPS=300 by default
#   STEPS=100 GPUS=1 bash benchmarks/gpu_smoke.sh
#   EXTRA="--set train.model.backbone=test_efficientnet --set train.model.img_size=64" ...   # extra `train` options
#
# The B7 weights come from the timm hub, which a lent GPU machine cannot reach, so the
# backbone starts from random weights (--no-pretrained): the speed is the same. Saliency
# crops are off (synthetic fins need none): this measures training alone. Needs the
# project installed (`make install`) with a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
OUT=${OUT:-runs/gpu-smoke}
PY=${PY:-.venv/bin/python}
EPOCHS=3

nvidia-smi --query-gpu=name,memory.total --format=csv
"$PY" -m whaleid synth --out "$OUT/synth" --individuals 300 --min-photos 4 --max-photos 6 --size "${SIZE:-768}"
"$PY" -m torch.distributed.run --nproc_per_node "$GPUS" -m whaleid train "$OUT/synth/train.csv" \
    --config configs/happywhale-gpu.yaml --no-pretrained --folds 1 --set preprocess=null --out "$OUT/model" \
    --set train.epochs=$EPOCHS --set "train.img_size_schedule={0: 768}" \
    --max-steps $(( STEPS / EPOCHS / GPUS + 1 )) ${EXTRA:-}
"$PY" - "$OUT/model/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    print(f"epoch {r['epoch']}: {r['seconds']:.1f} s, {r['images_per_second']:.1f} images/s over {r['processes']} GPU(s) "
          f"at {r['img_size']} px, loss {r['loss']:.3f}")
steady = rows[1:] or rows  # the first epoch includes start-up (cuDNN autotuning, worker start)
print(f"training throughput: {sum(r['images_per_second'] for r in steady) / len(steady):.1f} images/s")
PY
