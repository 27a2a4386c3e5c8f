#!/usr/bin/env bash
# GPU figures for docs/benchmarks.md on one CUDA device: ViT-L-14-336 (random weights), bf16.
# 1. the pipeline at the paper's test geometry (S=336, P=336, T=672): test, naive and training images/s;
# 2. --grid fixed against auto on mixed shapes; 3. few-shot banks of K = 1, 4, 16 (both at P=336, T=672).
# Needs no network: run it from a checkout whose .venv is already set up (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LARGE=(--device cuda --model ViT-L-14-336-quickgelu --image_size 336 --patch_image_size 336
       --target_image_size 672 --features_list 24 --dpam 20)
"$PY" scripts/benchmark.py --pretrained none "${LARGE[@]}" --images "${IMAGES:-512}" --naive_images 32 \
  --batch_size "${BATCH:-32}" --num_workers "${WORKERS:-8}" --train_epochs 3 "$@"
"$PY" scripts/bench_grid.py --pretrained none "${LARGE[@]}" --images 64 --batch_size 16 \
  --num_workers "${WORKERS:-8}" --precision bf16
"$PY" scripts/bench_fewshot.py --pretrained none "${LARGE[@]}" --images 128 --batch_size 16 \
  --precision bf16
