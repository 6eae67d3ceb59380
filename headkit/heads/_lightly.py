"""`from_lightly`: a lightly head instance, weights included, as an `MLPHead`."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from .._errors import HeadkitError
from ._mlp import MLPHead

__all__ = ["from_lightly"]

_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.normalization.RMSNorm,
    nn.LocalResponseNorm,
)


def _describe(m: nn.Module) -> str:
    """A short description of a module for error messages."""
    text = repr(m).splitlines()[0].rstrip("(")
    if hasattr(m, "weight_g") or hasattr(getattr(m, "parametrizations", None), "weight"):
        text = f"a weight-normalised {text}"
    return text


def from_lightly(head: nn.Module) -> MLPHead:
    """Convert a lightly head instance, weights and buffers included, into an `MLPHead`.

    Works for every head built on lightly's ``ProjectionHead`` whose blocks form a plain MLP
    (SimCLR, MoCo, BYOL, SimSiam, Barlow Twins, VICReg, NNCLR, SwaV, SMoG, ...): the result
    gives the same outputs in train and eval mode, has the same state-dict keys, and keeps the
    original's training flag, device and dtype. Lightly's heads take ``(B, D)`` only; the
    converted head also takes ``(B, T, D)``.

    Args:
        head: a ``lightly.models.modules.heads.ProjectionHead`` (or any module with a
            ``layers`` ``nn.Sequential`` of ``Linear [-> BatchNorm1d] [-> activation]`` blocks).

    Returns:
        The equivalent `MLPHead`.

    Raises:
        HeadkitError: the head is not a plain MLP; the message names the layer that cannot be
            mapped (DINO's weight-normalised ``last_layer``, VICRegL's ``LayerNorm`` at
            ``layers[1]``, a forward that does more than apply ``layers``), or its hidden
            widths, norms or biases differ in a way `MLPHead` cannot express.

    Example:
        >>> from lightly.models.modules import SimCLRProjectionHead
        >>> from headkit.heads import from_lightly
        >>> head = from_lightly(SimCLRProjectionHead(512, 512, 128))
        >>> head.output_dim, head.num_layers
        (128, 2)
    """
    layers = getattr(head, "layers", None)
    name = type(head).__name__
    if not isinstance(layers, nn.Sequential):
        raise HeadkitError(
            f"from_lightly expects a lightly ProjectionHead with a `layers` nn.Sequential; "
            f"{name} has none"
        )
    extra = [(n, m) for n, m in head.named_children() if n != "layers"]
    if extra:
        what = "; ".join(f"`{n}` ({_describe(m)})" for n, m in extra)
        raise HeadkitError(
            f"cannot convert {name}: MLPHead has no equivalent of {what}, which {name} applies "
            "besides its `layers` MLP; from_lightly converts plain MLP heads only"
        )
    owner = next(c for c in type(head).__mro__ if "forward" in vars(c))
    if owner.__module__.startswith("lightly") and owner.__name__ != "ProjectionHead":
        raise HeadkitError(
            f"cannot convert {name}: its forward (defined in {owner.__name__}) does more than "
            "apply `layers`, which MLPHead cannot map"
        )
    blocks: list[tuple[nn.Linear, nn.BatchNorm1d | None, nn.Module | None]] = []
    mods = list(layers)
    i = 0
    while i < len(mods):
        lin = mods[i]
        if type(lin) is not nn.Linear:
            raise HeadkitError(
                f"cannot convert {name}: layers[{i}] is {_describe(lin)} where MLPHead expects "
                "the nn.Linear that starts a block (Linear [-> BatchNorm1d] [-> activation])"
            )
        i += 1
        bn: nn.BatchNorm1d | None = None
        act: nn.Module | None = None
        if i < len(mods) and type(mods[i]) is nn.BatchNorm1d:
            bn = mods[i]  # type: ignore[assignment]
            i += 1
        if i < len(mods) and type(mods[i]) is not nn.Linear:
            act = mods[i]
            if isinstance(act, _NORMS):
                raise HeadkitError(
                    f"cannot convert {name}: layers[{i}] is {_describe(act)}; MLPHead supports "
                    "BatchNorm1d as its only norm"
                )
            if any(True for _ in act.parameters()):
                raise HeadkitError(
                    f"cannot convert {name}: layers[{i}] ({_describe(act)}) has parameters, so "
                    "it is not a parameter-free activation MLPHead can rebuild"
                )
            i += 1
        blocks.append((lin, bn, act))
    n = len(blocks)
    if any(b[2] is None for b in blocks[:-1]) or blocks[-1][2] is not None:
        raise HeadkitError(
            f"cannot convert {name}: MLPHead needs an activation after every hidden layer and "
            "none after the last"
        )
    hidden_bns = {b[1] is not None for b in blocks[:-1]}
    if len(hidden_bns) > 1:
        raise HeadkitError(f"cannot convert {name}: only some hidden layers have batch norm")
    batch_norm = hidden_bns.pop() if hidden_bns else True
    last_bn = blocks[-1][1]
    hidden = {b[0].out_features for b in blocks[:-1]}
    if len(hidden) > 1:
        raise HeadkitError(f"cannot convert {name}: hidden widths differ ({sorted(hidden)})")
    for lin, bn, _ in blocks:
        if bn is not None and (bn.num_features != lin.out_features or not bn.track_running_stats):
            raise HeadkitError(f"cannot convert {name}: unsupported BatchNorm1d {bn}")
    acts = [b[2] for b in blocks[:-1]]
    if len({type(a) for a in acts}) > 1:
        raise HeadkitError(f"cannot convert {name}: the hidden activations differ")
    biases = [b[0].bias is not None for b in blocks]
    rule = [b[1] is None for b in blocks]
    if biases == rule:
        bias: bool | None = None
    elif all(biases) or not any(biases):
        bias = biases[0]
    else:
        raise HeadkitError(f"cannot convert {name}: the linear layers mix biases irregularly")
    first = blocks[0][0]
    act = acts[0] if acts else None
    act_layer = functools.partial(copy.deepcopy, act) if act is not None else nn.ReLU
    out = MLPHead(
        first.in_features,
        hidden.pop() if hidden else blocks[-1][0].out_features,
        blocks[-1][0].out_features,
        n,
        batch_norm=batch_norm,
        last_batch_norm=last_bn is not None,
        last_batch_norm_affine=last_bn.affine if last_bn is not None else True,
        act_layer=act_layer,
        bias=bias,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    for b_theirs, b_mine in zip(
        [m for m in layers if isinstance(m, nn.BatchNorm1d)],
        [m for m in out.layers if isinstance(m, nn.BatchNorm1d)],
        strict=True,
    ):
        b_mine.eps = b_theirs.eps
        b_mine.momentum = b_theirs.momentum
    with torch.no_grad():
        out.load_state_dict(head.state_dict(), strict=True)
    out.train(head.training)
    return out
