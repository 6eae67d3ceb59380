"""Dense reference implementations (build the full similarity matrix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sup_con_dense(z: Tensor, labels: Tensor, t: float) -> Tensor:
    b, v, _ = z.shape
    f = F.normalize(z, dim=-1).reshape(b * v, -1)
    lab = labels.repeat_interleave(v)
    logits = f @ f.T / t
    self_mask = torch.eye(b * v, dtype=torch.bool)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (lab[:, None] == lab[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    keep = n_pos > 0
    mean_log_prob_pos = torch.where(pos, log_prob, 0.0).sum(1)[keep] / n_pos[keep]
    return -mean_log_prob_pos.mean()


def info_nce_dense(q: Tensor, k: Tensor, t: float, negatives: Tensor | None = None) -> Tensor:
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    if negatives is None:
        logits = qn @ kn.T / t
        return F.cross_entropy(logits, torch.arange(q.shape[0]))
    bn = F.normalize(negatives, dim=1)
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ bn.T], 1) / t
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def nt_xent_dense(z0: Tensor, z1: Tensor, t: float) -> Tensor:
    n = z0.shape[0]
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    logits = (z @ z.T / t).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, target)
