"""Deployment: cut models, pooled or not, export with a dynamic batch and trace, equal to eager."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.export import Dim, export

from headkit import truncate_at

from ._tol import magnitude, tol

pytestmark = pytest.mark.float_sensitive  # float32 against eager: CI reruns with one thread


def _check(model: nn.Module, layer: Any, pool: Any, shape: tuple[int, ...], n: int) -> None:
    """Export at batch 2 with a dynamic batch and trace at batch 2; both run at batch 5 and
    agree with the eager cut (tolerance from float32 and the longest reduction ``n``)."""
    model.eval()
    cut = truncate_at(model, layer, pool=pool).eval()
    g = torch.Generator().manual_seed(0)
    x2 = torch.randn(2, *shape, generator=g)
    x5 = torch.randn(5, *shape, generator=g)
    with torch.no_grad():
        want = cut(x5)
        ep = export(cut, (x2,), dynamic_shapes={"x": {0: Dim("batch")}})
        got = ep.module()(x5)
        traced = torch.jit.trace(cut, (x2,), check_trace=False)
        got_traced = traced(x5)
    assert got.shape == want.shape and want.shape[0] == 5
    torch.testing.assert_close(got, want, **tol(torch.float32, magnitude(want), n))
    torch.testing.assert_close(got_traced, want, **tol(torch.float32, magnitude(want), n))
    # the positional form of the same dynamic batch (on a new cut)
    cut2 = truncate_at(model, layer, pool=pool).eval()
    with torch.no_grad():
        ep2 = export(cut2, (x2,), dynamic_shapes=({0: Dim("batch")},))
        torch.testing.assert_close(ep2.module()(x5), want, **tol(torch.float32, magnitude(want), n))


@pytest.mark.parametrize("pool", ["avg", None])
def test_resnet18_cut_at_layer3_exports_with_a_dynamic_batch(pool: str | None) -> None:
    tv = pytest.importorskip("torchvision")
    _check(tv.models.resnet18(), "layer3", pool, (3, 64, 64), n=3 * 3 * 256)


@pytest.mark.parametrize(
    ("layer", "pool"),
    [("blocks.5", "mean"), ("blocks.5", "cls"), (5, "mean"), (5, "cls"), ("blocks.5", None)],
)
def test_timm_vit_cut_exports_with_a_dynamic_batch(layer: Any, pool: str | None) -> None:
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    _check(vit, layer, pool, (3, 32, 32), n=4 * 192)


@pytest.mark.parametrize("pool", ["avg", "flatten", None])
def test_sequential_cut_exports_with_a_dynamic_batch(pool: str | None) -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 12 * 12, 4)
    )
    _check(net, "2", pool, (3, 16, 16), n=8 * 9)


def test_token_first_encoder_cut_exports_with_a_dynamic_batch() -> None:
    """A token-first block's layout comes from the module, not from a batch size read as int."""
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    _check(enc, "layers.0", "avg", (5, 8), n=16)


@pytest.mark.parametrize("pool", ["avg", "cls", None])
def test_hf_text_encoder_cut_exports_with_a_dynamic_batch(pool: str | None) -> None:
    """The "blocks" route of a Hugging Face encoder; the padding check (it reads the ids) is
    left out of the exported graph."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, pad_token_id=0,
    )  # fmt: skip
    model = transformers.BertModel(cfg).eval()
    cut = truncate_at(model, "encoder.layer.1", pool=pool).eval()
    g = torch.Generator().manual_seed(0)
    x2, x5 = torch.randint(1, 50, (2, 7), generator=g), torch.randint(1, 50, (5, 7), generator=g)
    with torch.no_grad():
        want = cut(x5)
        got = export(cut, (x2,), dynamic_shapes={"x": {0: Dim("batch")}}).module()(x5)
    assert want.shape[0] == 5
    torch.testing.assert_close(got, want, **tol(torch.float32, magnitude(want), 16 + 7))
