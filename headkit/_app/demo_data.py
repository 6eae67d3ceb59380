"""The demo's data: scikit-learn's digits and the disrupted-feature task built from them.

- `digits`: 1,797 real 8x8 digits that ship inside the scikit-learn wheel;
- `disrupted_digits`: two digits side by side, the right one removed by the views half the time;
- `drop_right`, `augment`: SimCLR-style views of small images.

Everything here is private (``headkit._app.demo_data``); the demo and the examples import it
(the examples through ``examples/_common.py``).
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._errors import HeadkitError
from .draws import stratified_split

__all__ = ["DisruptedDigits", "augment", "digits", "disrupted_digits", "drop_right"]


def digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits: ``(1797, 1, 8, 8)`` images in [0, 1] and ``(1797,)`` labels.

    Read from the data file inside the scikit-learn wheel (importing scikit-learn itself costs
    seconds); `sklearn.datasets.load_digits` where that file is not found.

    Returns:
        ``(images, labels)``: a fresh copy each call.

    Raises:
        HeadkitError: scikit-learn is not installed.

    Example:
        >>> from headkit.data import digits
        >>> x, y = digits()
        >>> tuple(x.shape), int(y.max())
        ((1797, 1, 8, 8), 9)
    """
    x, y = _digits_arrays()
    return x.clone(), y.clone()


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[Tensor, Tensor]:
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise HeadkitError('the digits need scikit-learn: pip install "headkit[demo]"')
    path = os.path.join(
        next(iter(spec.submodule_search_locations)), "datasets", "data", "digits.csv.gz"
    )
    data = None
    if os.path.isfile(path):
        with gzip.open(path, "rt") as fh:
            data = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    if data is None or data.shape != (1797, 65):
        from sklearn.datasets import load_digits

        xs, ys = load_digits(return_X_y=True)
        data = np.concatenate([xs, ys[:, None]], axis=1).astype(np.float32)
    imgs = torch.from_numpy(data[:, :64].copy()).view(-1, 1, 8, 8) / 16.0
    return imgs, torch.from_numpy(data[:, 64].astype(np.int64))


@dataclass(frozen=True)
class DisruptedDigits:
    """The demo's task: two digits side by side; augmentation removes the right one.

    Attributes:
        x_train: ``(N, 1, 8, 16)`` images in [0, 1], left digit in columns 0-7.
        right_train: ``(N,)`` class of the right digit (the disrupted feature, the task).
        left_train: ``(N,)`` class of the left digit (kept in every view, the control).
        x_test: ``(M, 1, 8, 16)`` images made from digits no training image uses.
        right_test: ``(M,)``.
        left_test: ``(M,)``.

    Example:
        >>> from headkit.data import disrupted_digits
        >>> d = disrupted_digits(10, 4)
        >>> tuple(d.x_test.shape), tuple(d.left_train.shape)
        ((4, 1, 8, 16), (10,))
    """

    x_train: Tensor
    right_train: Tensor
    left_train: Tensor
    x_test: Tensor
    right_test: Tensor
    left_test: Tensor


def disrupted_digits(n_train: int = 2000, n_test: int = 600, seed: int = 0) -> DisruptedDigits:
    """Pairs of scikit-learn digits, 8x16 pixels, for the disrupted-feature setting.

    The paper's disrupted-feature setting (Xue et al., ICLR 2024, Sec. 5): augmentation removes
    a feature the downstream task needs. Here each image holds two real digits side by side;
    pretraining views drop the right digit (`drop_right`), and the downstream task is to name
    it. The 1,797 digits are split per class (80/20, seeded) before pairing, so no test image
    shares a digit with a training image.

    Args:
        n_train: training images (pairs drawn with replacement from the training digits).
        n_test: test images.
        seed: seed of the split and the pairing.

    Returns:
        `DisruptedDigits`.

    Example:
        >>> d = disrupted_digits(100, 40, seed=0)
        >>> tuple(d.x_train.shape), tuple(d.right_test.shape)
        ((100, 1, 8, 16), (40,))
    """
    x, y = digits()
    tr, te = stratified_split(y, 0.2, seed)
    g = torch.Generator().manual_seed(seed)

    def pairs(pool: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        a = pool[torch.randint(pool.numel(), (n,), generator=g)]
        b = pool[torch.randint(pool.numel(), (n,), generator=g)]
        return torch.cat([x[a], x[b]], dim=-1), y[b], y[a]

    xtr, rtr, ltr = pairs(tr, n_train)
    xte, rte, lte = pairs(te, n_test)
    return DisruptedDigits(xtr, rtr, ltr, xte, rte, lte)


def drop_right(views: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Blank the right half of each view with probability ``p`` (the disrupting augmentation).

    Args:
        views: ``(B, C, H, W)`` views.
        generator: the random source.
        p: probability of removing the right half.

    Returns:
        ``(B, C, H, W)`` views.

    Example:
        >>> import torch
        >>> from headkit.data import drop_right
        >>> v = drop_right(torch.ones(3, 1, 8, 16), p=1.0)
        >>> v[..., 8:].abs().sum().item(), v[..., :8].mean().item()
        (0.0, 1.0)
    """
    b, _, _, w = views.shape
    gone = torch.rand(b, 1, 1, 1, generator=generator) < p
    right = torch.arange(w) >= w // 2
    return views.masked_fill(gone & right.view(1, 1, 1, w), 0.0)


# ----------------------------------------------------------------------------- augmentation


def augment(x: Tensor, generator: torch.Generator | None = None, drop: float = 0.25) -> Tensor:
    """SimCLR-style views of small images: random shift, contrast, noise and cut-out.

    Args:
        x: ``(B, C, H, W)`` images.
        generator: the random source (seeded for repeatable views).
        drop: share of pixels cut out.

    Returns:
        ``(B, C, H, W)`` views.

    Example:
        >>> import torch
        >>> from headkit.data import augment
        >>> g = torch.Generator().manual_seed(0)
        >>> augment(torch.rand(4, 1, 8, 8), g).shape
        torch.Size([4, 1, 8, 8])
    """
    b, _, h, w = x.shape
    g = generator
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).clamp(max=h + 2 * pad - 1)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp(max=w + 2 * pad - 1)
    out = xp[
        torch.arange(b)[:, None, None, None],
        torch.arange(x.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    scale = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=g)
    out = out * scale + 0.1 * torch.randn(out.shape, generator=g)
    keep = torch.rand(b, 1, h, w, generator=g) > drop
    views: Tensor = out * keep
    return views
