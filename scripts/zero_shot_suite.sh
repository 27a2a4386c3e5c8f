#!/usr/bin/env bash
# Test a checkpoint zero-shot on every benchmark dataset under DATA_ROOT and write one combined
# table, laid out like the literature's (suite.md, suite.json under --save_path).
#   scripts/zero_shot_suite.sh CHECKPOINT DATA_ROOT [test flags, e.g. --save_path DIR --datasets kvasir isic]
# DATA_ROOT holds one folder per dataset, named as its generator in generate_dataset_json/
# (mvtec, visa, kvasir, ...); one without a meta.json is indexed first. Absent datasets are listed.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CHECKPOINT DATA_ROOT [flags of dhrclip-suite, see --help]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}
checkpoint=$1 data_root=$2
shift 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout, installed or not
exec "$PYTHON" -c 'import sys; from dhrclip.cli import suite_main; suite_main(sys.argv[1:])' \
  --checkpoint_path "$checkpoint" --data_path "$data_root" "$@"
