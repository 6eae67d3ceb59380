#!/usr/bin/env bash
# Run every example in smoke mode (CI does this). Needs the dev extras installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
out=$(mktemp -d)
run() { echo "-- $*"; "$@"; }
# (headkit demo --smoke itself runs in the test suite: tests/test_docs.py runs the docs' commands)
run python examples/quickstart.py --smoke --no-progress --out "$out"
run python examples/lightly_simclr.py --smoke
run python examples/timm_layer_tap.py --smoke
run python examples/lightning_online_probe.py --smoke
run torchrun --standalone --nproc_per_node=2 examples/ddp_simclr.py --smoke
run torchrun --standalone --nproc_per_node=2 examples/ddp_sweep.py --smoke --out "$out"
for f in examples/paper/[0-9]*.py; do
  run python "$f" --smoke --out "$out"
done
echo "all examples ran"
