#!/usr/bin/env bash
# Create .venv and install DHR-CLIP into it (editable); --dev adds the test tools.
# TORCH_SPEC picks the PyTorch build (default: the pinned release the test suite runs on).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $TORCH_SPEC
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install --quiet -e ".[dev]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
echo "environment ready: .venv ($(.venv/bin/python -c 'import dhrclip, torch; print("dhrclip", dhrclip.__version__, "torch", torch.__version__)'))"
