"""Per-layer measures: kNN, the spectral label-free measures, LiDAR, and the one metric registry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._errors import HeadkitError, fmt_shape
from ._checks import (
    check_layer,
    constant,
    degenerate,
    knn_k_for,
    nonfinite,
    nonfinite_rows,
    too_few,
)
from ._rows import Rows

__all__ = [
    "LidarStats",
    "Moments",
    "Spectrum",
    "alpha_req",
    "check_features",
    "check_xy",
    "encode_labels",
    "feature_spectrum",
    "knn_accuracy",
    "knn_predict",
    "lidar",
    "moments",
    "nesum",
    "rankme",
    "unevenness",
]


# ----------------------------------------------------------------------------- checks


def check_features(feats: object, name: str) -> Tensor:
    """An ``(N, D)`` tensor with N, D >= 1, or a clear error (degenerate data: `check_layer`)."""
    if (
        not isinstance(feats, Tensor)
        or feats.dim() != 2
        or feats.shape[0] < 1
        or feats.shape[1] < 1
    ):
        got = fmt_shape(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise HeadkitError(f"{name} needs an (N, D) tensor with N, D >= 1, got {got}")
    return feats


def check_xy(x: object, y: object, layer: object, split: str) -> None:
    """Features ``(N, D)`` and integer labels ``(N,)`` that match."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        got = fmt_shape(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise HeadkitError(f"{split} features of layer {layer!r} must be (N, D), got {got}")
    if not isinstance(y, Tensor) or y.dim() != 1:
        raise HeadkitError(f"{split} labels must be an (N,) integer tensor, got {y!r}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise HeadkitError(f"{split} labels must be integers, got dtype {y.dtype}")
    if x.shape[0] != y.shape[0]:
        raise HeadkitError(
            f"{split} features of layer {layer!r} have {x.shape[0]} rows but there are {y.shape[0]} labels"
        )
    if x.shape[0] == 0:
        raise HeadkitError(f"{split} features of layer {layer!r} are empty")


def encode_labels(train: Tensor, *others: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Class values, train labels as ``0..C-1`` and other labels likewise (-1: unseen class)."""
    classes, ytr = torch.unique(train, sorted=True, return_inverse=True)
    out = []
    for y in others:
        y = y.to(classes.device)
        pos = torch.searchsorted(classes, y).clamp_max(classes.numel() - 1)
        out.append(torch.where(classes[pos] == y, pos, torch.full_like(pos, -1)))
    return classes, ytr, out


# ----------------------------------------------------------------------------- kNN


def knn_predict(
    train: Rows,
    train_classes: Tensor,
    test: Rows,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    device: torch.device | None = None,
    chunk: int = 1024,
    train_chunk: int | None = None,
    exclude_self: bool = False,
) -> Tensor:
    """Weighted cosine kNN predictions ``(M,)`` (class indices), on ``device``.

    Streams the training rows in blocks (``train_chunk`` rows; default about 32 MiB of them, at
    most 16,384) and keeps a running top-k per test row, so memory is ``O(chunk x train_chunk)``
    whatever N. ``exclude_self`` skips the pair (i, i) (leave-one-out
    when train and test are the same rows).
    """
    dev = device if device is not None else train.device
    ytr = train_classes.to(dev)
    kk = min(k, train.n - (1 if exclude_self else 0))
    if kk < 1:
        raise HeadkitError("kNN needs at least one training sample besides the one predicted")
    if train_chunk is None:
        train_chunk = min(16384, train.block_rows(budget=32 << 20))
    preds = []
    for ts in range(0, test.n, chunk):
        te_n = min(test.n, ts + chunk) - ts
        te = F.normalize(test.span(ts, ts + te_n).to(dev), dim=1)
        best_v = torch.full((te_n, kk), -math.inf, device=dev)
        best_i = torch.zeros((te_n, kk), dtype=torch.long, device=dev)
        start = 0
        for block in train.chunks(train_chunk):
            tr = F.normalize(block.to(dev), dim=1)
            sim = te @ tr.T
            if exclude_self:
                # the pairs (i, i) of this block: test row r is training row ts + r
                r = torch.arange(te_n, device=dev)
                c = r + (ts - start)
                hit = (c >= 0) & (c < tr.shape[0])
                sim[r[hit], c[hit]] = -math.inf
            # the block's own top-k first: only (te_n, k) values join the running top-k (a
            # (chunk, train_chunk) index matrix beside the similarities took 3x their memory)
            v, i = sim.topk(min(kk, tr.shape[0]), dim=1)
            best_v, pos = torch.cat([best_v, v], 1).topk(kk, dim=1)
            best_i = torch.cat([best_i, i.add_(start)], 1).gather(1, pos)
            start += tr.shape[0]
        weights = (best_v / temperature).exp()
        votes = torch.zeros(te_n, num_classes, device=dev, dtype=weights.dtype)
        votes.scatter_add_(1, ytr[best_i], weights)
        preds.append(votes.argmax(1))
    test.release()
    return torch.cat(preds)


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    k: int | None = None,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Weighted cosine kNN top-1 accuracy, as in DINO and lightly.

    Each test sample's ``k`` nearest training samples (cosine similarity ``s``) vote for their
    class with weight ``exp(s / temperature)``; the class with the largest total wins. Runs on
    the device of ``train_feats`` (a CUDA tensor keeps all of the work on the GPU) and streams
    the training rows, so memory is ``O(chunk x 16384)`` whatever N.

    Args:
        train_feats: ``(N, D)`` training features.
        train_labels: ``(N,)`` integer labels.
        test_feats: ``(M, D)`` test features.
        test_labels: ``(M,)`` integer labels.
        k: number of neighbours, at most N (more is refused); None: 20, or all N when fewer.
        temperature: vote temperature, > 0.
        chunk: test rows per similarity block.

    Returns:
        Accuracy in [0, 1].

    Raises:
        HeadkitError: mismatched shapes or counts, k or temperature <= 0, degenerate data
            (non-finite or constant features, one class, fewer samples than classes or than
            ``k``: the one policy of ``docs/probe.md``, "Degenerate data").

    Example:
        >>> import torch
        >>> from headkit.probe import knn_accuracy
        >>> x = torch.randn(100, 8); y = (x[:, 0] > 0).long()
        >>> knn_accuracy(x, y, x, y, k=1)
        1.0
    """
    check_xy(train_feats, train_labels, "features", "train")
    check_xy(test_feats, test_labels, "features", "test")
    check_features(train_feats, "knn_accuracy train features")
    check_features(test_feats, "knn_accuracy test features")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise HeadkitError(
            f"train features have D={train_feats.shape[1]}, test features D={test_feats.shape[1]}"
        )
    if (k is not None and k <= 0) or temperature <= 0:
        raise HeadkitError(
            f"k and temperature must be positive, got k={k}, temperature={temperature}"
        )
    check_layer("features", train_feats, train_labels, test_feats, test_labels, k=k)
    k = knn_k_for(k, int(train_feats.shape[0]))
    dev = train_feats.device
    classes, ytr, (yte,) = encode_labels(train_labels.to(dev), test_labels.to(dev))
    pred = knn_predict(
        Rows.of(train_feats),
        ytr,
        Rows.of(test_feats),
        num_classes=classes.numel(),
        k=k,
        temperature=temperature,
        device=dev,
        chunk=chunk,
    )
    return float((pred == yte).double().mean())


# ----------------------------------------------------------------------------- spectra


@dataclass
class Moments:
    """Streaming first and second moments of a layer's features (float64).

    Attributes:
        n: number of rows.
        mean: ``(D,)`` mean.
        scatter: ``(D, D)`` centred scatter ``sum (x - mean)(x - mean)^T`` (for D <= N), or the
            ``(N, N)`` centred Gram matrix when D > N (``wide``).
        uncentred: ``(D, D)`` ``sum x x^T`` (``(N, N)`` ``X X^T`` when wide).
        wide: whether the matrices are N x N.
    """

    n: int
    mean: Tensor
    scatter: Tensor
    uncentred: Tensor
    wide: bool = False

    def eigenvalues(self) -> tuple[Tensor, Tensor]:
        """``(squared singular values of X, eigenvalues of the centred scatter)``, descending.

        The first has ``min(N, D)`` entries, the second ``min(N - 1, D)`` (at least one).
        """
        d = self.uncentred.shape[0]
        r_unc = d if self.wide else min(self.n, d)
        r_cen = max(1, min(self.n - 1, d)) if not self.wide else max(1, self.n - 1)
        unc = torch.linalg.eigvalsh(self.uncentred).flip(0)[:r_unc].clamp_min(0)
        cen = torch.linalg.eigvalsh(self.scatter).flip(0)[:r_cen].clamp_min(0)
        return unc, cen


def moments(rows: Rows, device: torch.device | None = None, chunk: int | None = None) -> Moments:
    """`Moments` of ``rows``, streamed in blocks (float64 on ``device``)."""
    dev = device if device is not None else rows.device
    chunk = chunk if chunk is not None else rows.block_rows(itemsize=8)
    if rows.d > rows.n:
        return _wide_moments(rows, dev, chunk)
    shift: Tensor | None = None
    s1 = torch.zeros(rows.d, dtype=torch.float64, device=dev)
    s2 = torch.zeros(rows.d, rows.d, dtype=torch.float64, device=dev)
    for block in rows.chunks(chunk):
        b = block.to(dev, torch.float64)
        if shift is None:
            shift = b.mean(0)
        b = b - shift
        s1 += b.sum(0)
        s2.addmm_(b.T, b)
    assert shift is not None
    n = rows.n
    mean_s = s1 / n
    scatter = s2 - torch.outer(s1, mean_s)
    mean = shift + mean_s
    # sum x x^T = sum (x-s)(x-s)^T + s S1^T + S1 s^T + n s s^T
    unc = s2 + torch.outer(shift, s1) + torch.outer(s1, shift) + n * torch.outer(shift, shift)
    return Moments(n, mean, (scatter + scatter.T) / 2, (unc + unc.T) / 2)


def _wide_moments(rows: Rows, dev: torch.device, chunk: int) -> Moments:
    n = rows.n
    gram = torch.zeros(n, n, dtype=torch.float64, device=dev)
    mean = torch.zeros(rows.d, dtype=torch.float64, device=dev)
    starts = list(range(0, n, chunk))
    for i in starts:
        xi = rows.span(i, min(n, i + chunk)).to(dev, torch.float64)
        mean += xi.sum(0)
        for j in starts:
            if j < i:
                continue
            xj = xi if j == i else rows.span(j, min(n, j + chunk)).to(dev, torch.float64)
            blk = xi @ xj.T
            gram[i : i + xi.shape[0], j : j + xj.shape[0]] = blk
            gram[j : j + xj.shape[0], i : i + xi.shape[0]] = blk.T
    rows.release()
    mean /= n
    h = torch.eye(n, dtype=torch.float64, device=dev) - 1.0 / n
    centred = h @ gram @ h
    return Moments(n, mean, (centred + centred.T) / 2, gram, wide=True)


def _rankme_from(sv2: Tensor, eps: float = 1e-7) -> float:
    s = sv2.clamp_min(0).sqrt()
    p = s / s.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def _gini(v: Tensor) -> float:
    asc = v.flip(0)
    n = asc.numel()
    if n <= 1:
        return 0.0
    idx = torch.arange(1, n + 1, dtype=asc.dtype, device=asc.device)
    return float((2 * (idx * asc).sum()) / (n * asc.sum()) - (n + 1) / n)


def _check_variance(ev: Tensor, name: str) -> Tensor:
    total = ev.sum()
    if not bool(total > 0):
        raise HeadkitError(f"{name}: the features are constant (zero variance)")
    return ev / total


def _unevenness_from(ev: Tensor) -> float:
    return _gini(_check_variance(ev, "unevenness"))


def _nesum_from(ev: Tensor) -> float:
    _check_variance(ev, "nesum")
    return float(ev.sum() / ev[0])


def _alpha_from(ev: Tensor, fit_range: tuple[int, int] | None = None) -> float:
    ev = _check_variance(ev, "alpha_req")
    pos = int((ev > ev[0] * 1e-12).sum())
    if fit_range is None and pos < 2:
        raise HeadkitError(
            f"alpha_req needs at least 2 non-zero eigenvalues to fit a decay; the features have "
            f"{pos}"
        )
    lo, hi = (1, pos) if fit_range is None else fit_range
    if not 1 <= lo < hi:
        raise HeadkitError(
            f"alpha_req fit_range must be 1 <= start < stop (ranks), got {fit_range}"
        )
    hi = min(hi, pos)
    if hi - lo + 1 < 2:
        raise HeadkitError(
            f"alpha_req needs at least 2 non-zero eigenvalues in ranks {lo}..{hi}; the features "
            f"have {pos}"
        )
    k = torch.arange(lo, hi + 1, dtype=torch.float64, device=ev.device)
    y = ev[lo - 1 : hi].log()
    x = torch.stack([-k.log(), torch.ones_like(k)], 1)
    w = 1.0 / k  # as in Stringer et al. 2019 and the alpha-ReQ code: ranks equal in log scale
    a = x.T @ (x * w[:, None])
    b = x.T @ (w * y)
    return float(torch.linalg.solve(a, b)[0])


def _spectra(feats: Tensor, name: str) -> tuple[Tensor, Tensor]:
    x = check_features(feats, name)
    check_layer("features", x.float() if not x.is_floating_point() else x)
    return moments(Rows.of(x.float() if not x.is_floating_point() else x)).eigenvalues()


def rankme(feats: Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al., ICML 2023, arXiv 2210.02885).

    ``exp(-sum p_k log p_k)`` with ``p_k = sigma_k / sum(sigma) + eps`` over the singular values
    of the (uncentred) features: between 1 and min(N, D). Higher = more dimensions in use.
    Computed from the streamed ``D x D`` Gram matrix in float64 (``N x N`` when D > N).

    Args:
        feats: ``(N, D)`` features.
        eps: smoothing of the normalised singular values.

    Returns:
        The effective rank (float).

    Example:
        >>> import torch
        >>> from headkit.probe import rankme
        >>> round(rankme(torch.eye(4)), 3)
        4.0
    """
    return _rankme_from(_spectra(feats, "rankme")[0], eps)


@dataclass
class Spectrum:
    """Normalised spectrum of a layer's centred features and how unequal it is.

    Attributes:
        values: variance share of each principal direction (``sigma_k^2 / sum sigma^2`` of the
            centred features), descending, summing to 1.
        effective_rank: ``exp(entropy(values))``, between 1 and ``len(values)``.
        unevenness: Gini coefficient of ``values``: 0 when every direction carries the same
            variance, towards 1 when one direction carries all of it (the paper's "progressive
            feature weighting" grows it with depth).

    Example:
        >>> import torch
        >>> from headkit.probe import feature_spectrum
        >>> s = feature_spectrum(torch.randn(500, 4))
        >>> s.values.shape, s.unevenness < 0.2
        (torch.Size([4]), True)
    """

    values: Tensor
    effective_rank: float
    unevenness: float


def _spectrum_from(ev: Tensor) -> Spectrum:
    v = _check_variance(ev, "feature_spectrum")
    nz = v[v > 0]
    eff = float(torch.exp(-(nz * nz.log()).sum()))
    return Spectrum(values=v.float().cpu(), effective_rank=eff, unevenness=_gini(v))


def feature_spectrum(feats: Tensor) -> Spectrum:
    """Spectrum of the centred features and its unevenness (Xue et al., ICLR 2024).

    The paper (arXiv 2403.11391) finds that training weights features progressively more
    unequally with depth; the Gini coefficient of the variance shares measures it.

    Args:
        feats: ``(N, D)`` features.

    Returns:
        `Spectrum` with ``values`` (``min(N - 1, D)`` variance shares), ``effective_rank`` and
        ``unevenness``.

    Raises:
        HeadkitError: not ``(N, D)``, non-finite or constant features.

    Example:
        >>> import torch
        >>> from headkit.probe import feature_spectrum
        >>> x = torch.randn(1000, 3) * torch.tensor([3.0, 1.0, 1.0])
        >>> s = feature_spectrum(x)
        >>> round(float(s.values[0]), 1)
        0.8
    """
    return _spectrum_from(_spectra(feats, "feature_spectrum")[1])


def unevenness(feats: Tensor) -> float:
    """The paper's spectrum unevenness: Gini of the centred variance shares (lower = more even).

    Xue et al., ICLR 2024 (arXiv 2403.11391): deeper layers weight their features more unequally.
    0 when every principal direction carries the same variance, towards 1 when one carries it
    all. Same as ``feature_spectrum(feats).unevenness``.

    Args:
        feats: ``(N, D)`` features.

    Returns:
        The Gini coefficient in [0, 1).

    Example:
        >>> import torch
        >>> from headkit.probe import unevenness
        >>> unevenness(torch.randn(2000, 4)) < 0.1
        True
    """
    return _unevenness_from(_spectra(feats, "unevenness")[1])


def nesum(feats: Tensor) -> float:
    """NESum: the eigenvalues of the feature covariance summed, normalised by the largest.

    He & Ozay, "Exploring the Gap between Collapsed and Whitened Features in Self-Supervised
    Learning", ICML 2022 (PMLR 162). ``sum_k lambda_k / lambda_1``: 1 for collapsed (rank-one)
    features, D for whitened ones. Higher = more directions in use.

    Args:
        feats: ``(N, D)`` features.

    Returns:
        NESum, between 1 and ``min(N - 1, D)``.

    Example:
        >>> import torch
        >>> from headkit.probe import nesum
        >>> x = torch.cat([torch.eye(4), -torch.eye(4)])  # covariance proportional to I
        >>> round(nesum(x), 6)
        4.0
    """
    return _nesum_from(_spectra(feats, "nesum")[1])


def alpha_req(feats: Tensor, fit_range: tuple[int, int] | None = None) -> float:
    """alpha-ReQ: the power-law decay coefficient of the covariance eigenspectrum.

    Agrawal, Mondal, Ghosh and Richards, "alpha-ReQ: Assessing Representation Quality in
    Self-Supervised Learning by measuring eigenspectrum decay", NeurIPS 2022. Fits
    ``lambda_k ~ k^-alpha`` by least squares of ``log lambda_k`` on ``log k`` with weights
    ``1/k`` (as the authors' code, after Stringer et al. 2019). The paper finds the best
    downstream accuracy in an interval of alpha near 1: small alpha = whitened, noisy features;
    large alpha = few dominant directions. The registry ranks layers by ``|alpha - 1|``.

    Args:
        feats: ``(N, D)`` features.
        fit_range: ``(first, last)`` 1-based ranks to fit (default: every non-zero eigenvalue;
            the authors fit ranks 6 to 100 of 2048-wide features).

    Returns:
        alpha.

    Example:
        >>> import torch
        >>> from headkit.probe import alpha_req
        >>> a = torch.randn(400, 50, dtype=torch.float64)
        >>> q, _ = torch.linalg.qr(a - a.mean(0))  # orthonormal, centred columns
        >>> x = q * torch.arange(1, 51, dtype=torch.float64).pow(-1.5).sqrt()
        >>> round(alpha_req(x), 6)  # covariance eigenvalues k^-1.5
        1.5
    """
    return _alpha_from(_spectra(feats, "alpha_req")[1], fit_range)


# ----------------------------------------------------------------------------- LiDAR


class LidarStats:
    """Streaming between-sample and within-sample (across views) scatter of one layer."""

    def __init__(self) -> None:
        self.n = 0
        self.nq = 0
        self.q: int | None = None
        self.s_mu: Tensor | None = None
        self.ss_mu: Tensor | None = None
        self.ss_w: Tensor | None = None
        self.bad = 0  # samples with a NaN/inf view (not kept by `merge`: the sums show them)

    def update(self, z: Tensor) -> None:
        """Add ``(B, Q, D)`` features of ``Q`` views of ``B`` samples."""
        if z.dim() != 3 or z.shape[1] < 2:
            raise HeadkitError(
                f"LiDAR needs (B, Q, D) features of Q >= 2 views per sample, got {fmt_shape(z.shape)}"
            )
        self.bad += nonfinite_rows(z.flatten(1))
        z = z.double()
        mu = z.mean(1)
        dev = z.shape[-1]
        if self.s_mu is None:
            self.s_mu = torch.zeros(dev, dtype=torch.float64, device=z.device)
            self.ss_mu = torch.zeros(dev, dev, dtype=torch.float64, device=z.device)
            self.ss_w = torch.zeros(dev, dev, dtype=torch.float64, device=z.device)
        assert self.ss_mu is not None and self.ss_w is not None
        w = (z - mu[:, None]).reshape(-1, dev)
        self.s_mu += mu.sum(0)
        self.ss_mu.addmm_(mu.T, mu)
        self.ss_w.addmm_(w.T, w)
        self.n += int(z.shape[0])
        self.nq += int(z.shape[0] * z.shape[1])

    def tensors(self) -> list[Tensor]:
        """The sums, for an all-reduce."""
        assert self.s_mu is not None and self.ss_mu is not None and self.ss_w is not None
        return [self.s_mu, self.ss_mu, self.ss_w]

    def value(self, delta: float = 1e-4, eps: float = 1e-7, layer: object = "features") -> float:
        """LiDAR of the accumulated views (degenerate views of ``layer`` refused, `check_layer`)."""
        if self.s_mu is None or self.ss_mu is None or self.ss_w is None or self.n < 2:
            raise degenerate(layer, too_few(self.n))
        if self.bad or not all(bool(torch.isfinite(t).all()) for t in self.tensors()):
            raise degenerate(
                layer,
                nonfinite(self.bad, self.n)
                if self.bad
                else f"the views of {self.n} samples have NaN/inf features",
            )
        mean = self.s_mu / self.n
        sigma_b = self.ss_mu / self.n - torch.outer(mean, mean)
        d = sigma_b.shape[0]
        sigma_w = self.ss_w / self.nq + delta * torch.eye(
            d, dtype=torch.float64, device=mean.device
        )
        ew, vw = torch.linalg.eigh((sigma_w + sigma_w.T) / 2)
        inv_sqrt = (vw * ew.clamp_min(1e-300).rsqrt()) @ vw.T
        lam = torch.linalg.eigvalsh(inv_sqrt @ ((sigma_b + sigma_b.T) / 2) @ inv_sqrt).clamp_min(0)
        total = lam.sum()
        if not bool(total > 0):  # every sample's views are every other sample's
            raise degenerate(layer, constant(self.n, d))
        p = lam / total + eps
        return float(torch.exp(-(p * p.log()).sum()))


def check_views(layer: object, z: Tensor) -> None:
    """The one policy of degenerate data (`check_layer`) for ``(N, Q, D)`` views: a sample is
    all of its views; constant = every sample's views equal the first sample's."""
    n, d = int(z.shape[0]), int(z.shape[-1])
    bad = nonfinite_rows(z.flatten(1))
    if bad:
        raise degenerate(layer, nonfinite(bad, n))
    if n < 2:
        raise degenerate(layer, too_few(n))
    if z.numel() and bool((z == z[:1]).all()):
        raise degenerate(layer, constant(n, d))


def lidar(views: Tensor | Sequence[Tensor], *, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR: effective rank of the linear discriminant between augmented views of a sample.

    Thilak et al., "LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL
    Architectures", ICLR 2024 (arXiv 2312.04000). Each sample is a class, its views the class
    members: ``Sigma_b`` = covariance of the per-sample means, ``Sigma_w`` = mean covariance of
    the views around their sample's mean + ``delta * I``; LiDAR = ``exp(entropy(p))`` with
    ``p = lambda / sum(lambda) + eps`` over the eigenvalues of
    ``Sigma_w^-1/2 Sigma_b Sigma_w^-1/2``. Higher = more directions that separate samples
    beyond what augmentation moves them. Needs positive pairs (Q >= 2 views per sample).

    Args:
        views: ``(N, Q, D)`` features of Q views of N samples, or a sequence of Q ``(N, D)``
            tensors (view q of sample i in row i of tensor q).
        delta: ridge added to ``Sigma_w``.
        eps: smoothing of the normalised eigenvalues.

    Returns:
        LiDAR, between 1 and D.

    Example:
        >>> import torch
        >>> from headkit.probe import lidar
        >>> x = torch.randn(200, 8)
        >>> views = torch.stack([x + 0.01 * torch.randn(200, 8) for _ in range(2)], 1)
        >>> lidar(views) > 7.5  # views barely move: every direction separates samples
        True
    """
    if isinstance(views, Tensor):
        z = views
    else:
        if len(views) < 2 or not all(isinstance(v, Tensor) for v in views):
            raise HeadkitError(
                "lidar needs a (N, Q, D) tensor or a sequence of Q >= 2 (N, D) tensors"
            )
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) != 1:
            raise HeadkitError(f"every view must have the same (N, D) shape, got {sorted(shapes)}")
        z = torch.stack(list(views), 1)
    if z.dim() != 3:
        raise HeadkitError(f"lidar needs (N, Q, D) features, got {fmt_shape(z.shape)}")
    check_views("features", z)
    stats = LidarStats()
    stats.update(z)
    return stats.value(delta, eps)
