"""Layouts are never guessed: token-first blocks are pooled over their tokens, even when the
batch size equals the number of tokens; an undeclared layout that could be confused is refused."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from headkit import HeadkitError, LayerTap, truncate_at

T = B = 6
C = 8


def _encoder(batch_first: bool) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        C, 2, dim_feedforward=16, dropout=0.0, batch_first=batch_first
    )
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def _tokens(batch_first: bool, b: int = B, t: int = T) -> Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn((b, t, C) if batch_first else (t, b, C), generator=g)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("pool", ["avg", "flatten", None])
def test_transformer_layer_pooled_over_its_tokens_when_batch_equals_tokens(
    batch_first: bool, pool: str | None
) -> None:
    enc = _encoder(batch_first)
    x = _tokens(batch_first)
    with torch.no_grad():
        h = enc.layers[0](x)  # the manual reference
        hb = h if batch_first else h.transpose(0, 1)  # (B, T, C)
        want = {"avg": hb.mean(1), "flatten": hb.flatten(1), None: h}[pool]
        got = LayerTap(enc, ["layers.0"], pool=pool)(x)["layers.0"]
        cut = truncate_at(enc, "layers.0", pool=pool)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(cut, want, rtol=0, atol=0)


def test_the_layer_declared_inside_a_block_decides_not_the_batch_size() -> None:
    """A token-first block's own attention module says so; (T, B) sizes 6 x 6 change nothing."""
    enc = _encoder(False)
    x = _tokens(False)
    with torch.no_grad():
        got = LayerTap(enc, ["layers.1.self_attn", "layers.1"], pool="avg")(x)
        ref = enc(x).mean(0)
    torch.testing.assert_close(got["layers.1"], ref, rtol=0, atol=0)
    assert got["layers.1.self_attn"].shape == (B, C)


class _OldStyle(nn.Module):
    """A block whose linear layer runs on token-first tokens, as in older open_clip blocks:
    only the parent's attention declares batch_first=False."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(C, 2)  # batch_first=False
        self.mlp = nn.Linear(C, C)

    def forward(self, x: Tensor) -> Tensor:  # (T, B, C)
        return self.mlp(x + self.attn(x, x, x, need_weights=False)[0])


def test_an_undeclared_layout_that_could_be_confused_is_refused_and_can_be_given() -> None:
    net = _OldStyle().eval()
    x = _tokens(False)
    with pytest.raises(
        HeadkitError, match=r"\(6, 6, 8\) and the model does not say.*batch_first=False"
    ):
        LayerTap(net, ["mlp"], pool="avg")(x)
    with pytest.raises(HeadkitError, match="batch_first="):
        truncate_at(net, "mlp", pool="avg")(x)
    with torch.no_grad():
        ref = net(x).mean(0)
        got = LayerTap(net, ["mlp"], pool="avg", batch_first=False)(x)["mlp"]
        cut = truncate_at(net, "mlp", pool="avg", batch_first=False)(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(cut, ref, rtol=0, atol=0)
    # sizes that differ do not make a guess safe: the input is token-first too
    with pytest.raises(HeadkitError, match="does not say whether its batch comes first"):
        LayerTap(net, ["mlp"], pool="avg")(_tokens(False, b=3))


def test_batch_first_is_checked() -> None:
    with pytest.raises(HeadkitError, match="batch_first must be True, False or None"):
        LayerTap(nn.Linear(2, 2), [""], batch_first="yes")  # type: ignore[arg-type]


def test_a_conv_net_declares_nothing_and_is_batch_first() -> None:
    """(B, C, L) maps with C == B: no module of the model has batch_first, so no question."""
    net = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU()).eval()
    x = torch.randn(4, 3, 10)
    with torch.no_grad():
        got = LayerTap(net, ["0"], pool="avg")(x)["0"]
    torch.testing.assert_close(got, net[0](x).mean(-1), rtol=0, atol=0)
