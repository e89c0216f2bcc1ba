#!/usr/bin/env bash
# Train the HRTEM detector's network on a GPU, for a fixed time, and stop there (--train-only).
#
# Made for a session's lent GPU machine (the `device` tool), where python3 holds torch with CUDA
# and this package runs from src/ without being installed:
#     bash scripts/train_hrtem_gpu.sh MINUTES        # writes $OUT/atomnet-hrtem.{pt,training.json}
# The recipe is the README's CPU recipe for atomnet-hrtem (same simulator draws, network and
# loss) with a bigger pool and batch, trained for MINUTES of steps; the step count it reaches is
# recorded (pass it as --steps to repeat the run). The evaluation, the thresholds and the ONNX
# export then run on the CPU machine, against the weights and the record:
#     .venv/bin/python -m napari_atomnet.training.train_detector --out DIR --name atomnet-hrtem \
#         --weights atomnet-hrtem.pt --record atomnet-hrtem.training.json
# DEVICE=cpu POOL=8 BATCH=4 runs the same command here, small, as a check of the command itself.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: train_hrtem_gpu.sh MINUTES}
out=${OUT:-/tmp/atomnet-gpu}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
"$python" -m napari_atomnet.training.train_detector --out "$out" --seed 0 --name atomnet-hrtem \
    --mix graphene=1 --aligned-share 1 --graphene-holes 0.2,0.4,0.4 --channels 16,48,72,96 \
    --graphene-sampling 0.108,0.132 --threshold-images 32 \
    --pool "${POOL:-8000}" --workers "${WORKERS:-$(nproc)}" --batch "${BATCH:-64}" \
    --precision bf16 --device "${DEVICE:-cuda}" --time-budget "$minutes" \
    --train-only --save-torch "$out/atomnet-hrtem.pt" 2>&1 | tee "$out/train.log"
