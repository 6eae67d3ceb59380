"""headkit._app.data: stratified draws and splits, image folders, .npz files, the demo's task."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headkit import HeadkitError
from headkit._app.data import ArrayImages, FolderImages
from headkit.data import (
    digits,
    disrupted_digits,
    drop_right,
    load_images,
    open_images,
    stratified_sample,
    stratified_split,
)

# ----------------------------------------------------------------------------- sampling


def test_stratified_sample_keeps_proportions_on_a_class_sorted_set() -> None:
    y = torch.arange(10).repeat_interleave(100)  # sorted by class, as a folder is read
    idx = stratified_sample(y, 300, seed=0)
    assert idx.numel() == 300
    assert torch.bincount(y[idx]).tolist() == [30] * 10
    assert torch.equal(idx, torch.sort(idx).values)
    assert idx.unique().numel() == 300


def test_stratified_sample_is_seeded_and_varies_with_the_seed() -> None:
    y = torch.arange(5).repeat_interleave(40)
    a, b, c = stratified_sample(y, 50, 0), stratified_sample(y, 50, 0), stratified_sample(y, 50, 1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stratified_sample_imbalanced_keeps_every_class() -> None:
    y = torch.tensor([0] * 900 + [1] * 95 + [2] * 5)
    idx = stratified_sample(y, 100, seed=3)
    counts = torch.bincount(y[idx], minlength=3).tolist()
    assert sum(counts) == 100
    assert counts[2] >= 2 and counts[1] >= 9 and counts[0] >= 85


def test_stratified_sample_all_and_too_few() -> None:
    y = torch.arange(4).repeat_interleave(3)
    assert torch.equal(stratified_sample(y, 100), torch.arange(12))
    with pytest.raises(HeadkitError, match="4 classes"):
        stratified_sample(y, 3)
    with pytest.raises(HeadkitError, match="positive"):
        stratified_sample(y, 0)


def test_stratified_split_disjoint_and_in_proportion() -> None:
    y = torch.arange(3).repeat_interleave(torch.tensor([50, 30, 20]))
    tr, te = stratified_split(y, 0.2, seed=0)
    assert set(tr.tolist()).isdisjoint(te.tolist())
    assert len(tr) + len(te) == 100
    assert torch.bincount(y[te]).tolist() == [10, 6, 4]
    with pytest.raises(HeadkitError, match="test_fraction"):
        stratified_split(y, 1.5)
    with pytest.raises(HeadkitError, match="two classes"):
        stratified_split(torch.zeros(10, dtype=torch.long))


# ----------------------------------------------------------------------------- folders


def _folder(root: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "RGB") -> Path:
    g = np.random.default_rng(0)
    for c, shapes in sizes.items():
        (root / c).mkdir(parents=True)
        for k, (h, w) in enumerate(shapes):
            arr = (g.random((h, w, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).convert(mode).save(root / c / f"{k}.png")
    return root


def test_folder_streams_and_reads_the_right_pixels(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": [(12, 10)] * 3, "b": [(12, 10)] * 2})
    src = open_images(root)
    assert src.facts.n == 5 and src.facts.classes == ["a", "b"]
    assert src.facts.image_size == (12, 10) and src.facts.channels == 3
    assert src.labels == [0, 0, 0, 1, 1]
    ds = src.dataset()
    assert isinstance(ds, FolderImages)
    x, y = ds[3]
    ref = np.asarray(Image.open(root / "b" / "0.png"), dtype=np.float32) / 255
    assert y == 1
    assert torch.allclose(x, torch.from_numpy(ref).permute(2, 0, 1))
    x2, _ = src.dataset(size=(8, 8), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)[0]
    assert x2.shape == (3, 8, 8)


def test_folder_grey_images_repeat_to_three_channels(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": [(6, 6)] * 2, "b": [(6, 6)] * 2}, mode="L")
    src = open_images(root)
    assert src.facts.channels == 1
    x, _ = src.dataset(channels=3)[0]
    assert x.shape == (3, 6, 6) and torch.equal(x[0], x[2])


def test_folder_leaves_out_non_images_and_says_so(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": [(6, 6)] * 2, "b": [(6, 6)] * 2})
    (root / "a" / "notes.txt").write_text("hello")
    (root / "README").write_text("x")
    src = open_images(root)
    assert src.facts.n == 4
    assert sorted(src.facts.skipped) == ["README", os.path.join("a", "notes.txt")]
    with pytest.warns(UserWarning, match="left out 2 file"):
        load_images(root)


def test_folder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": [(6, 6)] * 40, "b": [(6, 6)] * 40})
    (root / "b" / "z_broken.png").write_text("not a png")
    src = open_images(root)  # the header peek samples files; this one may not be among them
    ds = src.dataset()
    with pytest.raises(HeadkitError, match=r"z_broken\.png.*remove the file"):
        for i in range(len(ds)):
            ds[i]


def test_folder_mixed_sizes_need_a_size(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": [(6, 6), (6, 6)], "b": [(6, 6), (9, 7)]})
    src = open_images(root)
    assert src.facts.image_size is None
    ds = src.dataset(size=(6, 6))
    assert all(ds[i][0].shape == (3, 6, 6) for i in range(len(ds)))  # type: ignore[arg-type]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(HeadkitError, match="does not exist"):
        open_images(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(HeadkitError, match="no class sub-folders"):
        open_images(tmp_path / "flat")
    with pytest.raises(HeadkitError, match="single image"):
        open_images(tmp_path / "flat" / "x.png")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(HeadkitError, match="no images"):
        open_images(tmp_path / "empty")


# ----------------------------------------------------------------------------- .npz


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_layouts(tmp_path: Path, layout: str, compressed: bool) -> None:
    g = np.random.default_rng(0)
    base = (g.random((6, 5, 4, 3)) * 255).astype(np.uint8)  # N H W C
    x = {"NHW": base[..., 0], "NHWC": base, "NCHW": base.transpose(0, 3, 1, 2)}[layout]
    y = np.array([3, 3, 7, 7, 9, 9])
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    src = open_images(path)
    assert src.facts.image_size == (5, 4)
    assert src.facts.classes == ["3", "7", "9"] and src.labels == [0, 0, 1, 1, 2, 2]
    assert ("memory-mapped" in src.facts.note) == (not compressed)
    ds = src.dataset()
    assert isinstance(ds, ArrayImages)
    img, lab = ds[2]
    want = torch.from_numpy(base[2].astype(np.float32) / 255).permute(2, 0, 1)
    if layout == "NHW":
        want = want[:1]
    assert lab == 1 and torch.allclose(img, want)
    batch = ds.__getitems__([0, 5])
    assert torch.allclose(batch[1][0], ds[5][0])


def test_npz_float_scaling_and_bad_values(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.full((4, 3, 3), 128.0), y=np.arange(4) % 2)
    src = open_images(tmp_path / "a.npz")
    assert "1/255" in src.facts.note
    assert torch.allclose(src.dataset()[0][0], torch.full((1, 3, 3), 128 / 255))
    np.savez(tmp_path / "b.npz", x=np.full((4, 3, 3), 1000.0), y=np.arange(4) % 2)
    with pytest.raises(HeadkitError, match="up to 1000"):
        open_images(tmp_path / "b.npz")


def test_npz_own_test_split_keeps_the_class_map(tmp_path: Path) -> None:
    x = np.zeros((6, 4, 4), np.uint8)
    np.savez(
        tmp_path / "s.npz",
        x_train=x,
        y_train=np.array([1, 1, 5, 5, 8, 8]),
        x_test=x[:2],
        y_test=np.array([8, 5]),  # a test split without class 1 keeps 5 -> 1, 8 -> 2
    )
    src = open_images(tmp_path / "s.npz")
    assert src.test is not None
    assert src.test.labels == [2, 1]
    np.savez(tmp_path / "t.npz", x_train=x, y_train=np.zeros(6), x_test=x[:1], y_test=np.ones(1))
    with pytest.raises(HeadkitError, match="labels the training labels lack"):
        open_images(tmp_path / "t.npz")


def test_npz_errors(tmp_path: Path) -> None:
    (tmp_path / "r.npz").write_bytes(os.urandom(100))
    with pytest.raises(HeadkitError, match="cannot read"):
        open_images(tmp_path / "r.npz")
    np.savez(tmp_path / "k.npz", a=np.zeros(3))
    with pytest.raises(HeadkitError, match="needs arrays 'x'"):
        open_images(tmp_path / "k.npz")
    np.savez(tmp_path / "n.npz", x=np.zeros((3, 4, 4)), y=np.zeros(2))
    with pytest.raises(HeadkitError, match="3 images but y has 2 labels"):
        open_images(tmp_path / "n.npz")


# ----------------------------------------------------------------------------- in memory, demo


def test_load_images_digits_and_draw() -> None:
    x, y, facts = load_images(None, max_samples=100, seed=0)
    assert x.shape == (100, 1, 8, 8) and facts.n == 1797
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.bincount(y).min() >= 9


def test_disrupted_digits_use_disjoint_digits() -> None:
    x, _ = digits()
    d = disrupted_digits(300, 100, seed=0)
    assert d.x_train.shape == (300, 1, 8, 16) and d.x_test.shape == (100, 1, 8, 16)
    flat = x.reshape(len(x), -1)
    train_halves = torch.cat([d.x_train[..., :8], d.x_train[..., 8:]]).reshape(600, -1)
    test_halves = torch.cat([d.x_test[..., :8], d.x_test[..., 8:]]).reshape(200, -1)

    # which digits the halves are: exact match against the 1,797 digits (by their bytes)
    index: dict[bytes, set[int]] = {}
    for i, row in enumerate(flat):
        index.setdefault(row.numpy().tobytes(), set()).add(i)

    def which(halves: torch.Tensor) -> set[int]:
        return set().union(*(index[h.numpy().tobytes()] for h in halves))

    assert which(train_halves).isdisjoint(which(test_halves))
    # the label is the right half's digit
    (i,) = index[d.x_test[0, ..., 8:].reshape(-1).numpy().tobytes()]
    assert int(d.right_test[0]) == int(digits()[1][i])


def test_drop_right_blanks_the_right_half_only() -> None:
    v = torch.ones(2000, 1, 8, 16)
    out = drop_right(v, torch.Generator().manual_seed(0), p=0.5)
    gone = out[..., 8:].sum((1, 2, 3)) == 0
    assert 0.45 < float(gone.float().mean()) < 0.55
    assert torch.equal(out[..., :8], v[..., :8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(drop_right(v, None, p=0.0), v)
