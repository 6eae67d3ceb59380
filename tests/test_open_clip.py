"""open_clip ViT-B-32 and RN50 image towers (random weights): taps and cuts against open_clip's
own ``forward_intermediates``."""

from __future__ import annotations

import copy
import pickle
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from headkit import HeadkitError, LayerTap, default_layers, load_checkpoint, truncate_at
from headkit._layers.model import num_prefix_tokens

open_clip = pytest.importorskip("open_clip")


def _build(name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return open_clip.create_model(name, pretrained=None).eval()


@pytest.fixture(scope="module")
def vit() -> Any:
    return _build("ViT-B-32")


@pytest.fixture(scope="module")
def rn50() -> Any:
    return _build("RN50")


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_vit_blocks_and_pools(vit: Any, image: torch.Tensor) -> None:
    visual = vit.visual
    idx = [0, 5, 11]
    layers = [f"transformer.resblocks.{i}" for i in idx]
    assert default_layers(visual) == [f"transformer.resblocks.{i}" for i in range(12)]
    assert num_prefix_tokens(visual, layers[0]) == 1  # class_embedding
    with torch.no_grad():
        ref = visual.forward_intermediates(
            image, indices=idx, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
        )
        raw = LayerTap(visual, layers)(image)
        mean = LayerTap(visual, layers, pool="mean")(image)
        cls = LayerTap(visual, layers, pool="cls")(image)
    for j, layer in enumerate(layers):
        patches, prefix = ref["image_intermediates"][j], ref["image_intermediates_prefix"][j]
        assert torch.equal(raw[layer], torch.cat([prefix, patches], 1))
        torch.testing.assert_close(mean[layer], patches.mean(1))  # the class token left out
        torch.testing.assert_close(cls[layer], prefix[:, 0])


def test_vit_truncate(vit: Any, image: torch.Tensor) -> None:
    visual = vit.visual
    layer = "transformer.resblocks.5"
    cut = truncate_at(visual, layer, pool="mean")
    assert cut.route == "blocks"
    assert cut.kept_params < 0.55 * _n(visual)  # 6 of 12 blocks
    with torch.no_grad():
        ref = LayerTap(visual, [layer], pool="mean")(image)[layer]
        torch.testing.assert_close(cut(image), ref)
        torch.testing.assert_close(pickle.loads(pickle.dumps(cut))(image), ref)
        torch.testing.assert_close(copy.deepcopy(cut)(image), ref)
    fresh = _build("ViT-B-32").visual
    other = truncate_at(fresh, layer, pool="mean")
    report = load_checkpoint(other, visual.state_dict())
    assert report.skipped and not report.missing and not report.unexpected
    with torch.no_grad():
        torch.testing.assert_close(other(image), ref)


def test_whole_clip_model_cut_in_the_image_tower(vit: Any, image: torch.Tensor) -> None:
    layer = "visual.transformer.resblocks.3"
    cut = truncate_at(vit, layer, pool="cls")
    assert cut.route == "blocks"
    assert not any(k.startswith("transformer.") for k in cut.state_dict())  # text tower gone
    assert cut.kept_params < 0.4 * _n(vit)
    with torch.no_grad():
        torch.testing.assert_close(cut(image), LayerTap(vit, [layer], pool="cls")(image)[layer])


def test_rn50_stages(rn50: Any, image: torch.Tensor) -> None:
    visual = rn50.visual
    layers = ["layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        ref = visual.forward_intermediates(image, indices=[1, 2, 3, 4], intermediates_only=True)
        got = LayerTap(visual, layers, pool=None)(image)
        avg = LayerTap(visual, layers, pool="avg")(image)
    for j, layer in enumerate(layers):
        assert torch.equal(got[layer], ref["image_intermediates"][j])
        torch.testing.assert_close(avg[layer], ref["image_intermediates"][j].mean((2, 3)))
    with pytest.raises(HeadkitError, match="needs token outputs"):
        LayerTap(visual, ["layer1"], pool="cls")(image)


def test_rn50_truncate(rn50: Any, image: torch.Tensor) -> None:
    visual = rn50.visual
    cut = truncate_at(visual, "layer2", pool="avg")
    assert cut.kept_params < 0.1 * _n(visual)
    with torch.no_grad():
        ref = LayerTap(visual, ["layer2"], pool="avg")(image)["layer2"]
        torch.testing.assert_close(cut(image), ref)
        torch.testing.assert_close(pickle.loads(pickle.dumps(cut))(image), ref)
    fresh = truncate_at(_build("RN50").visual, "layer2", pool="avg")
    res = fresh.load_state_dict({f"module.{k}": v for k, v in visual.state_dict().items()})
    assert res.skipped_keys and not res.missing_keys and not res.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(fresh(image), ref)
