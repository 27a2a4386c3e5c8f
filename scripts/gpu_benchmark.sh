#!/usr/bin/env bash
# GPU figures for docs/benchmarks.md: ViT-L-14-336 (random weights), S=336, P=336, T=672, bf16, on one CUDA device.
# Needs no network: run it from a checkout whose .venv is already set up (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" scripts/benchmark.py --device cuda --pretrained none --model ViT-L-14-336-quickgelu \
  --image_size 336 --patch_image_size 336 --target_image_size 672 --features_list 24 \
  --images "${IMAGES:-512}" --naive_images 32 --batch_size "${BATCH:-32}" --num_workers "${WORKERS:-8}" \
  --train_epochs 3 "$@"
