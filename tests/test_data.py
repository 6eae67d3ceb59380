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
    # every header is read when the folder is opened: named before any work starts
    with pytest.raises(HeadkitError, match=r"z_broken\.png.*remove the file"):
        open_images(root)


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


# ----------------------------------------------------------------------------- image modes

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from headkit._app.images import conversion_message, pixels_of, read_pixels  # noqa: E402

# mode -> the file format it is saved in (None: Pillow saves it in no format; read in memory)
_SAVED = {
    "1": ".png",
    "L": ".png",
    "LA": ".png",
    "La": None,
    "P": ".png",
    "PA": ".tif",
    "RGB": ".png",
    "RGBA": ".png",
    "RGBa": None,
    "RGBX": ".tif",
    "CMYK": ".tif",
    "YCbCr": ".tif",
    "HSV": None,
    "I;16": ".png",
    "I;16B": ".tif",
    "I;16L": ".tif",
    "I;16N": None,
    "I": ".tif",
    "F": ".tif",
}


def _image_of(mode: str, h: int, w: int, g: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A Pillow image of ``mode`` with random pixels, and the numpy reference ``(C, H, W)``
    float64 in [0, 1] of what it shows (computed from the raw values, not by Pillow)."""
    u8 = lambda *s: g.integers(0, 256, size=(h, w, *s), dtype=np.uint8)  # noqa: E731
    if mode == "1":
        a = g.random((h, w)) < 0.5
        return Image.fromarray(a), a[None].astype(np.float64)
    if mode == "L":
        a = u8()
        return Image.fromarray(a), a[None] / 255.0
    if mode in ("LA", "RGBA", "RGBX"):
        a = u8(2 if mode == "LA" else 4)
        return Image.frombytes(mode, (w, h), a.tobytes()), np.moveaxis(a[..., :-1], -1, 0) / 255.0
    if mode in ("La", "RGBa"):
        n = 1 if mode == "La" else 3
        alpha = u8(1)
        colour = (g.random((h, w, n)) * (alpha.astype(np.float64) + 1)).astype(np.uint8)
        colour = np.minimum(colour, alpha)  # premultiplied: colour <= alpha
        a = np.concatenate([colour, alpha], -1)
        ref = np.where(alpha > 0, colour / np.maximum(alpha, 1), 0.0)
        return Image.frombytes(mode, (w, h), a.tobytes()), np.moveaxis(ref, -1, 0)
    if mode in ("P", "PA"):
        idx = g.integers(0, 16, size=(h, w), dtype=np.uint8)
        pal = g.integers(0, 256, size=(16, 3), dtype=np.uint8)
        im = Image.fromarray(idx, "L").convert("P")
        im.putpalette(pal.tobytes())
        if mode == "PA":
            im = im.convert("PA")
            im.putalpha(Image.fromarray(u8()))
        return im, np.moveaxis(pal[idx], -1, 0) / 255.0
    if mode == "RGB":
        a = u8(3)
        return Image.fromarray(a), np.moveaxis(a, -1, 0) / 255.0
    if mode == "CMYK":
        a = u8(4)
        c = a / 255.0
        return Image.frombytes(mode, (w, h), a.tobytes()), np.moveaxis(
            (1 - c[..., :3]) * (1 - c[..., 3:]), -1, 0
        )
    if mode == "YCbCr":
        a = u8(3).astype(np.float64)
        y, cb, cr = a[..., 0], a[..., 1] - 128, a[..., 2] - 128
        # JFIF (ITU-T T.871) full-range inverse
        ref = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb])
        return Image.frombytes(mode, (w, h), a.astype(np.uint8).tobytes()), np.clip(
            ref / 255.0, 0, 1
        )
    if mode == "HSV":
        import colorsys

        a = u8(3)
        ref = np.array(
            [[colorsys.hsv_to_rgb(*(px / 255.0)) for px in row] for row in a.astype(np.float64)]
        )
        return Image.frombytes(mode, (w, h), a.tobytes()), np.moveaxis(ref, -1, 0)
    if mode.startswith("I;16"):
        a = g.integers(0, 65536, size=(h, w)).astype(np.uint16)
        raw = a.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
        if mode == "I;16N":
            raw = a.tobytes()
        return Image.frombytes(mode, (w, h), raw), a[None] / 65535.0
    if mode == "I":
        a = g.integers(0, 65536, size=(h, w)).astype(np.int32)
        return Image.fromarray(a), a[None] / 65535.0
    assert mode == "F"
    a = g.random((h, w)).astype(np.float32)
    return Image.fromarray(a), a[None].astype(np.float64)


# one 8-bit step, and the float32 rounding of the formula conversions
_TOL = 1.0 / 255.0 + 8 * float(np.finfo(np.float32).eps)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(sorted(_SAVED)),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_mode_reads_at_its_own_scale(mode: str, h: int, w: int, seed: int) -> None:
    """Each Pillow mode, saved to a file where Pillow can save it, reads back as the numpy
    reference: 16-bit grey divided by 65535 (not clipped to 8 bits), palettes expanded, alpha
    dropped (premultiplied undone), CMYK / YCbCr / HSV converted."""
    import tempfile

    im, ref = _image_of(mode, h, w, np.random.default_rng(seed))
    assert im.mode == mode
    ext = _SAVED[mode]
    if ext is None:
        got = np.moveaxis(pixels_of(im, "<memory>"), -1, 0)
    else:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x" + ext)
            im.save(path)
            got = read_pixels(path, 3)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert float(got.min(initial=0)) >= 0.0 and float(got.max(initial=0)) <= 1.0
    # exact modes: one float32 rounding; formula conversions: one 8-bit step at most
    exact = mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "I", "F") or "16" in mode
    tol = 4 * float(np.finfo(np.float32).eps) if exact else _TOL
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


@pytest.mark.parametrize("ext", [".png", ".tif", ".pgm"])
def test_16_bit_grey_is_not_clipped_and_is_said_once(tmp_path: Path, ext: str) -> None:
    """A folder of 16-bit grey images reads at 1/65535 (0.2 read them almost all white)."""
    g = np.random.default_rng(0)
    root = tmp_path / "d"
    arrays = {}
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(3):
            a = g.integers(1000, 60000, size=(5, 7)).astype(np.uint16)
            Image.fromarray(a).save(root / c / f"{k}{ext}")
            arrays[(c, k)] = a
    src = open_images(root)
    mode = "I" if ext == ".pgm" else "I;16"  # Pillow opens 16-bit PGM as mode I
    assert src.facts.modes == {mode: 6} and src.facts.channels == 1
    msg = conversion_message(src.facts.modes)
    assert msg.startswith("converted 6 ") and "at 1/65535 scale" in msg and f"({mode})" in msg
    x, _ = src.dataset(channels=3)[4]  # b/1
    ref = torch.from_numpy(arrays[("b", 1)] / 65535.0).float()
    assert x.shape == (3, 5, 7)
    torch.testing.assert_close(x[0], ref, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    assert float(x.max()) < 60000 / 65535 + 1e-6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_images(root)
    said = [w for w in caught if "at 1/65535 scale" in str(w.message)]
    assert len(said) == 1


def test_colour_to_one_channel_is_luma(tmp_path: Path) -> None:
    a = np.random.default_rng(1).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    got = read_pixels(str(tmp_path / "x.png"), 1)
    ref = (a / 255.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(got[0], ref, rtol=0, atol=8 * float(np.finfo(np.float32).eps))


def test_modes_that_cannot_be_read_faithfully_are_refused_with_the_file_named(
    tmp_path: Path,
) -> None:
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / c / "ok.png")
    # CIELAB: refused when the folder is opened (header), named
    Image.new("LAB", (4, 4)).save(root / "b" / "lab.tif")
    with pytest.raises(HeadkitError, match=r"lab\.tif.*'LAB'"):
        open_images(root)
    (root / "b" / "lab.tif").unlink()
    # 32-bit integers beyond 16 bits, floats outside [0, 1]: refused when read, named
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(root / "b" / "big.tif")
    Image.fromarray(np.full((4, 4), 3.5, np.float32)).save(root / "a" / "hdr.tif")
    ds = open_images(root).dataset()
    names = [ds.files[i] for i in range(len(ds))]  # type: ignore[attr-defined]
    with pytest.raises(HeadkitError, match=r"big\.tif.*0\.\.65535"):
        ds[names.index(str(root / "b" / "big.tif"))]
    with pytest.raises(HeadkitError, match=r"hdr\.tif.*\[0, 1\]"):
        ds[names.index(str(root / "a" / "hdr.tif"))]
    nan = np.full((4, 4), np.nan, np.float32)
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    with pytest.raises(HeadkitError, match=r"nan\.tif.*non-finite"):
        read_pixels(str(tmp_path / "nan.tif"), 3)


# ----------------------------------------------------------------------------- links, hidden


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)


def _tree(root: Path) -> None:
    for c in ("a", "b"):
        for k in range(2):
            _png(root / c / f"{k}.png", 10 * k)


def _why(facts: object) -> dict[str, str]:
    return dict(zip(facts.skipped, facts.reasons, strict=True))  # type: ignore[attr-defined]


def test_link_to_the_root_is_not_a_class_and_nothing_is_read_twice(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _tree(root)
    (root / "loop").symlink_to(root, target_is_directory=True)  # at the top: would be a class
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # inside a class: a loop
    (root / "a" / "above").symlink_to(tmp_path, target_is_directory=True)  # above the root
    (root / "b" / "self").symlink_to(root / "b", target_is_directory=True)  # its own folder
    src = open_images(root)
    assert src.facts.classes == ["a", "b"]
    assert src.facts.n == 4 and src.labels == [0, 0, 1, 1]
    why = _why(src.facts)
    assert "above the data folder" in why["loop/"] or "data folder" in why["loop/"]
    assert "data folder" in why[os.path.join("a", "up") + "/"]
    assert "data folder" in why[os.path.join("a", "above") + "/"]
    assert "already read" in why[os.path.join("b", "self") + "/"]
    from headkit._app.images import skipped_message

    assert "loop/" in skipped_message(src.facts)


def test_links_to_files_and_outside_folders_are_followed_once(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _tree(root)
    outside = tmp_path / "elsewhere"
    _png(outside / "x.png")
    _png(outside / "y.png", 50)
    (root / "c").symlink_to(outside, target_is_directory=True)  # a class kept elsewhere
    (root / "alias").symlink_to(root / "a", target_is_directory=True)  # the same folder twice
    (root / "0_first").symlink_to(root / "b", target_is_directory=True)  # sorts before b
    (root / "a" / "z_link.png").symlink_to(root / "b" / "0.png")  # a file of class b again
    os.link(root / "b" / "1.png", root / "a" / "hard.png")  # a hard link: same inode
    (root / "b" / "more").symlink_to(outside, target_is_directory=True)  # class c's folder again
    (root / "b" / "dangling.png").symlink_to(tmp_path / "gone.png")
    src = open_images(root)
    assert src.facts.classes == ["a", "b", "c"]
    real = [os.path.realpath(f) for f in src.dataset().files]  # type: ignore[attr-defined]
    inodes = [os.stat(f).st_ino for f in real]
    assert len(inodes) == len(set(inodes)) == 6  # a/0, a/1, b/0, b/1 (once), c/x, c/y
    # a file reached through its own folder keeps that folder's class, the link is left out;
    # of two hard links (two real names of one file) the first in class order is kept
    assert src.labels == [0, 0, 0, 1, 2, 2]
    why = _why(src.facts)
    assert "same folder as class 'a'" in why["alias/"]
    assert "same folder as class 'b'" in why["0_first/"]  # the real folder keeps its name

    # a class that is a link into another class's folder brings nothing new: left out
    (root / "x_sub").symlink_to(root / "a", target_is_directory=True)
    (root / "a" / "sub").mkdir()
    _png(root / "a" / "sub" / "s.png", 90)
    (root / "y").symlink_to(root / "a" / "sub", target_is_directory=True)
    src = open_images(root)
    assert src.facts.classes == ["a", "b", "c"] and src.labels == [0, 0, 0, 0, 1, 2, 2]
    assert "images already taken" in _why(src.facts)["y/"]
    assert why[os.path.join("a", "z_link.png")] == "the same file as " + os.path.join("b", "0.png")
    assert why[os.path.join("b", "1.png")] == "the same file as " + os.path.join("a", "hard.png")
    assert "already read" in why[os.path.join("b", "more") + "/"]
    assert "broken link" in why[os.path.join("b", "dangling.png")]


def test_hidden_files_and_folders_are_left_out_and_listed(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _tree(root)
    (root / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # macOS metadata
    (root / ".DS_Store").write_bytes(b"\x00")
    _png(root / "b" / ".cache" / "thumb.png")
    _png(root / ".trash" / "old.png")
    src = open_images(root)
    assert src.facts.n == 4 and src.facts.classes == ["a", "b"]
    why = _why(src.facts)
    for name in (os.path.join("a", "._0.png"), ".DS_Store", os.path.join("b", ".cache") + "/"):
        assert why[name] == "hidden"
    assert why[".trash/"] == "hidden"
    with pytest.warns(UserWarning, match=r"left out 4 file\(s\).*4 hidden"):
        load_images(root)


def test_non_utf8_names_print_in_any_locale(tmp_path: Path) -> None:
    from headkit._app.images import skipped_message

    root = tmp_path / "d"
    _tree(root)
    bad = os.fsdecode(b"caf\xe9.txt")  # Latin-1 bytes: not UTF-8
    (root / "a" / bad).write_text("x")
    src = open_images(root)
    msg = skipped_message(src.facts)
    msg.encode("ascii")  # printable anywhere: the byte is written \xe9
    assert "caf\\xe9.txt" in msg
