"""Full-batch softmax regression: preconditioned L-BFGS over a grid of L2 penalties at once.

One layer's ``P`` problems (one per penalty) share every pass over its features: the logits of all
of them come from one ``(N, D) x (D, P*C)`` matrix multiply and their gradients from one more.
The features are standardised; the solver works in the eigenbasis of ``S = X^T X / n`` (a
``D x D`` eigendecomposition per layer; a rotation leaves the L2 penalty unchanged), where the
preconditioner ``(a S + lam I)^-1`` is diagonal. ``a`` is the mean curvature ``p (1 - p)`` of the
softmax at the current point: at the start (``W = 0``, every class at ``1/C``) this is the exact
inverse Hessian, so the first step is a Newton step, and L-BFGS corrects the rest as the
probabilities sharpen. Each problem has its own Armijo backtracking line search, stops on its
own at scikit-learn's criterion (largest gradient entry at most ``tol``) and then leaves the
matrix multiplies, so the strongly regularised problems, which converge first, stop costing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

# an L-BFGS pair: s = ((D, P, C), (P, C)), y likewise, rho (P,)
Pair = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor]
# a pass over the (standardised) features: yields consecutive blocks (b, D) and their offsets
Blocks = Callable[[], Iterator[tuple[int, Tensor]]]


@dataclass
class SolveInfo:
    """What the solver did: passes over the features, iterations, final gradient norms."""

    passes: int = 0
    iterations: int = 0
    grad_norm: Tensor = field(default_factory=lambda: torch.zeros(0))  # (P,) max |grad|
    converged: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    stopped_at: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (P,)


def eig_gram(blocks: Blocks, d: int, max_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``(D,)`` and eigenvectors ``(D, D)`` of ``X^T X / n``, in one pass.

    The products in the features' dtype (the preconditioner needs no more), the
    eigendecomposition in float64 (float32 LAPACK fails on degenerate features, e.g. many
    constant ones). ``max_rows`` stops after about that many rows (the second moments of a few
    thousand rows precondition as well as all of them).
    """
    s: Tensor | None = None
    n = 0
    for _, x in blocks():
        if max_rows is not None and n + int(x.shape[0]) > max_rows and n > 0:
            break
        if max_rows is not None and int(x.shape[0]) > max_rows:
            x = x[:max_rows]
        s = x.T @ x if s is None else s.addmm_(x.T, x)
        n += int(x.shape[0])
    assert s is not None
    sd = s.double() / max(1, n)
    try:
        ev, u = torch.linalg.eigh(sd)
    except RuntimeError:  # LAPACK gave up (degenerate features): nudge the diagonal, else skip
        try:
            ev, u = torch.linalg.eigh(
                sd
                + 1e-8
                * float(sd.diagonal().abs().max() + 1)
                * torch.eye(d, dtype=sd.dtype, device=sd.device)
            )
        except RuntimeError:
            ev, u = sd.diagonal().clone(), torch.eye(d, dtype=sd.dtype, device=sd.device)
    return ev.clamp_min(0).to(s.dtype), u.to(s.dtype)


def _loss_grad(
    blocks: Blocks,
    y: Tensor,
    w: Tensor,
    b: Tensor,
    lam: Tensor,
    need_grad: bool,
    curv: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Mean cross-entropy + ``lam/2 ||W||^2`` ``(P,)`` (float64) and its gradient.

    ``w`` is ``(D, P, C)``, ``b`` ``(P, C)``, ``lam`` ``(P,)``; ``y`` class indices ``(N,)``.
    """
    d, p, c = w.shape
    w2 = w.reshape(d, p * c)
    b2 = b.reshape(1, p * c)
    n = int(y.shape[0])
    nll = torch.zeros(p, dtype=torch.float64, device=w.device)
    gw = torch.zeros_like(w2) if need_grad else None
    gb = torch.zeros_like(b2) if need_grad else None
    for s, x in blocks():
        m = int(x.shape[0])
        yy = y[s : s + m]
        logits = torch.addmm(b2, x, w2).view(m, p, c)
        shifted = logits.sub_(logits.amax(-1, keepdim=True))
        picked = shifted.gather(2, yy.view(m, 1, 1).expand(m, p, 1))
        e = shifted.exp_()  # in place: one exponential serves the loss and the gradient
        z = e.sum(-1, keepdim=True)
        nll += (z.log() - picked).double().sum((0, 2))  # -log softmax at the label
        if gw is not None and gb is not None:
            r = e.div_(z)  # probabilities
            if curv is not None:  # sum of p (1 - p) over samples and classes
                curv += (r - r.square()).sum((0, 2)).double()
            r.scatter_add_(
                2,
                yy.view(m, 1, 1).expand(m, p, 1),
                torch.full((m, p, 1), -1.0, device=r.device, dtype=r.dtype),
            )
            r2 = r.view(m, p * c)
            gw.addmm_(x.T, r2, alpha=1.0 / n)
            gb.add_(r2.sum(0, keepdim=True), alpha=1.0 / n)
    sq = w.double().square().sum((0, 2))
    f = nll / n + 0.5 * lam.double() * sq
    if gw is None or gb is None:
        return f, None, None
    gw3 = gw.view(d, p, c).add_(w * lam.view(1, p, 1).to(w.dtype))
    return f, gw3, gb.view(p, c)


def _dot(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> Tensor:
    """Per-problem inner products ``(P,)`` of ``(W (D, P, C), b (P, C))`` pairs (as float64)."""
    return ((a[0] * b[0]).sum((0, 2)) + (a[1] * b[1]).sum(1)).double()


def fit_softmax(
    blocks: Blocks,
    y: Tensor,
    num_classes: int,
    lam: Tensor,
    *,
    eig: tuple[Tensor, Tensor],
    max_iter: int = 100,
    tol: float = 1e-4,
    history: int = 10,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, SolveInfo]:
    """Minimise ``mean CE + lam_p/2 ||W_p||^2`` for every ``p`` at once.

    Args:
        blocks: a pass over the standardised features ``(N, D)`` in blocks (their dtype and device
            are the solver's).
        y: ``(N,)`` class indices on the features' device.
        num_classes: ``C``.
        lam: ``(P,)`` penalties.
        eig: ``(s (D,), U (D, D))``: eigenvalues and eigenvectors of ``X^T X / N``.
        max_iter: the most iterations (each is one pass over the features with gradient, plus
            one pass per backtracking step).
        tol: a problem stops once ``max |grad| <= tol * max(1, max |grad at the start|)`` (the
            criterion of scikit-learn's lbfgs on the same mean-loss objective), or once its
            line search cannot decrease the objective any more (rounding).
        history: L-BFGS memory.
        init: a starting point ``(W (D, P, C), b (P, C))`` (default zero).

    Returns:
        ``W (D, P, C)``, ``b (P, C)`` and a `SolveInfo`.
    """
    s_eig, u = eig
    first = next(iter(blocks()))[1]
    dtype, dev = first.dtype, first.device
    d = int(u.shape[0])
    p = int(lam.shape[0])
    c = num_classes
    lam = lam.to(dev, dtype)
    u = u.to(dev, dtype)
    n_rows = int(y.shape[0])
    # the solver works in S's eigenbasis (W = U V: the penalty is unchanged), where the
    # preconditioner is diagonal: 1 / (a s_j + lam_p) for V and 1 / a for the biases, with a the
    # mean curvature p (1 - p) of the softmax at the current point (1/C at W = 0, where this is
    # the exact inverse Hessian)
    curv_now = [torch.full((p,), 1.0 / c, dtype=dtype, device=dev)]
    s_col = s_eig.to(dev, dtype).clamp_min(0).view(d, 1, 1)
    s_floor = 1e-6 * max(1e-30, float(s_eig.max()))

    def rot(a: Tensor) -> Tensor:  # U @ a, a (D, P, C)
        return (u @ a.reshape(d, -1)).view(a.shape)

    def unrot(a: Tensor) -> Tensor:  # U^T @ a
        return (u.T @ a.reshape(d, -1)).view(a.shape)

    def evaluate(v: Tensor, b: Tensor, lam: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        cv = torch.zeros(v.shape[1], dtype=torch.float64, device=dev)
        f, gw, gb = _loss_grad(blocks, y, rot(v), b, lam, True, cv)
        assert gw is not None and gb is not None
        gmax = torch.maximum(gw.abs().amax((0, 2)), gb.abs().amax(1))
        curv_now[0] = (cv / (n_rows * (c - 1))).clamp_min(1e-6).to(dtype)
        return f, (unrot(gw), gb), gmax

    if init is None:
        v = torch.zeros(d, p, c, dtype=dtype, device=dev)
        b = torch.zeros(p, c, dtype=dtype, device=dev)
    else:
        v, b = unrot(init[0].to(dev, dtype)), init[1].to(dev, dtype).clone()
    info = SolveInfo()
    f, g, gm = evaluate(v, b, lam)
    info.passes += 1
    g0 = gm.clamp_min(1.0)
    done = gm <= tol * g0
    out_v, out_b, out_gm = v.clone(), b.clone(), gm.clone()
    out_done = done.clone()
    out_it = torch.zeros(p, dtype=torch.long, device=dev)
    alive = torch.arange(p, device=dev)
    hist: list[Pair] = []

    for _ in range(max_iter):
        if bool(done.any()):  # retire the problems that are done: the rest run narrower
            out_v[:, alive] = v
            out_b[alive] = b
            out_gm[alive] = gm
            out_done[alive] = done
            out_it[alive] = info.iterations
            k = ~done
            alive, v, b, f, gm, g0, lam = alive[k], v[:, k], b[k], f[k], gm[k], g0[k], lam[k]
            g = (g[0][:, k], g[1][k])
            curv_now[0] = curv_now[0][k]
            hist = [((s[0][:, k], s[1][k]), (y_[0][:, k], y_[1][k]), r[k]) for s, y_, r in hist]
            done = done[k]
        na = int(alive.numel())
        if na == 0:
            break
        info.iterations += 1
        # two-loop recursion, per problem
        q = (g[0].clone(), g[1].clone())
        alphas = []
        for sk, yk, rho in reversed(hist):
            a = rho * _dot(sk, q)
            alphas.append(a)
            at = a.to(dtype)
            q[0].sub_(yk[0] * at.view(1, na, 1))
            q[1].sub_(yk[1] * at.view(na, 1))
        a = curv_now[0]  # the mean curvature of the softmax now: the preconditioner follows it
        # (floored for a zero penalty on directions the features do not span)
        pw = 1.0 / (a.view(1, na, 1) * s_col + lam.view(1, na, 1)).clamp_min(
            a.view(1, na, 1) * s_floor
        )
        pb = (1.0 / a).view(na, 1)
        r = (q[0] * pw, q[1] * pb)
        if hist:  # scale H0 by s^T y / y^T H0 y of the newest pair
            sk, yk, _ = hist[-1]
            gamma = (_dot(sk, yk) / _dot(yk, (yk[0] * pw, yk[1] * pb)).clamp_min(1e-300)).clamp(
                1e-3, 1e3
            )
            gt = gamma.to(dtype)
            r = (r[0] * gt.view(1, na, 1), r[1] * gt.view(na, 1))
        for (sk, yk, rho), a in zip(hist, reversed(alphas), strict=True):
            coef = (a - rho * _dot(yk, r)).to(dtype)
            r[0].add_(sk[0] * coef.view(1, na, 1))
            r[1].add_(sk[1] * coef.view(na, 1))
        dv, db = -r[0], -r[1]
        slope = _dot(g, (dv, db))
        bad = slope >= 0  # not a descent direction: the preconditioned gradient
        if bool(bad.any()):
            dv = torch.where(bad.view(1, na, 1), -g[0] * pw, dv)
            db = torch.where(bad.view(na, 1), -g[1] * pb, db)
            slope = _dot(g, (dv, db))
            hist.clear()
        t = torch.ones(na, dtype=torch.float64, device=dev)
        for _ls in range(12):
            tt = t.to(dtype)
            v1 = v + dv * tt.view(1, na, 1)
            b1 = b + db * tt.view(na, 1)
            f1, g1, gm1 = evaluate(v1, b1, lam)
            info.passes += 1
            ok = f1 <= f + 1e-4 * t * slope
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t * 0.5)
        # a problem whose line search found no decrease is at the rounding floor: it stops
        # where it was
        stuck = ~ok
        if bool(stuck.any()):
            m = stuck.to(dtype)
            v1 = v1 - dv * (tt * m).view(1, na, 1)
            b1 = b1 - db * (tt * m).view(na, 1)
            f1 = torch.where(stuck, f, f1)
            g1 = (
                torch.where(stuck.view(1, na, 1), g[0], g1[0]),
                torch.where(stuck.view(na, 1), g[1], g1[1]),
            )
            gm1 = torch.where(stuck, gm, gm1)
        sk = (v1 - v, b1 - b)
        yk = (g1[0] - g[0], g1[1] - g[1])
        sy = _dot(sk, yk)
        v, b, f, g, gm = v1, b1, f1, g1, gm1
        done = stuck | (gm <= tol * g0)
        pos = sy > 1e-10 * _dot(yk, yk)  # keep the curvature pairs that are positive
        if bool(pos.any()):
            good = pos.to(dtype)
            rho = torch.where(pos, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
            hist.append(((sk[0] * good.view(1, na, 1), sk[1] * good.view(na, 1)), yk, rho))
            if len(hist) > history:
                hist.pop(0)
    if alive.numel():
        out_v[:, alive] = v
        out_b[alive] = b
        out_gm[alive] = gm
        out_done[alive] = done
        out_it[alive] = info.iterations
    info.stopped_at = out_it.cpu()
    info.grad_norm = out_gm.cpu()
    info.converged = out_done.cpu()
    return rot(out_v), out_b, info
