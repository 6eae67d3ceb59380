"""Hugging Face encoders from small configs: taps, pools and cuts against the library's own
references (``output_hidden_states``: ``hidden_states[i + 1]`` is block ``i``'s output)."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from headkit import (
    HeadkitError,
    LayerTap,
    default_layers,
    feature_info,
    load_checkpoint,
    truncate_at,
)
from headkit._layers.model import num_prefix_tokens

T = pytest.importorskip("transformers")

SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
VIT = {"image_size": 32, "patch_size": 8, **SMALL}


@dataclass
class Case:
    build: Callable[[], nn.Module]
    inputs: Callable[[], dict[str, torch.Tensor]]
    prefix: int  # class + distillation + register tokens
    kind: str  # "tokens", "text" or "maps"


def _pixels() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, 3, 32, 32)}


def _text() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 50, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0  # padding in the first two rows
    mask[1, 6:] = 0
    ids[mask == 0] = 0  # BERT's pad_token_id
    return {"input_ids": ids, "attention_mask": mask}


CASES: dict[str, Case] = {
    "ViTModel": Case(lambda: T.ViTModel(T.ViTConfig(**VIT)), _pixels, 1, "tokens"),
    "DeiTModel": Case(lambda: T.DeiTModel(T.DeiTConfig(**VIT)), _pixels, 2, "tokens"),
    "Dinov2Model": Case(lambda: T.Dinov2Model(T.Dinov2Config(**VIT)), _pixels, 1, "tokens"),
    "Dinov2WithRegistersModel": Case(
        lambda: T.Dinov2WithRegistersModel(
            T.Dinov2WithRegistersConfig(**VIT, num_register_tokens=4)
        ),
        _pixels,
        5,
        "tokens",
    ),
    "CLIPVisionModel": Case(
        lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**VIT)), _pixels, 1, "tokens"
    ),
    "BertModel": Case(lambda: T.BertModel(T.BertConfig(vocab_size=50, **SMALL)), _text, 0, "text"),
    "ConvNextModel": Case(
        lambda: T.ConvNextModel(
            T.ConvNextConfig(
                num_stages=3, hidden_sizes=[8, 16, 24], depths=[1, 1, 2], image_size=32
            )
        ),
        _pixels,
        0,
        "maps",
    ),
    "SwinModel": Case(
        lambda: T.SwinModel(
            T.SwinConfig(
                image_size=32,
                patch_size=2,
                embed_dim=8,
                depths=[1, 1, 2],
                num_heads=[1, 2, 2],
                window_size=4,
            )
        ),
        _pixels,
        0,
        "tokens",
    ),
}


@dataclass
class Built:
    model: nn.Module
    inputs: dict[str, torch.Tensor]
    layers: list[str]
    hidden: tuple[torch.Tensor, ...]
    last: torch.Tensor


@pytest.fixture(scope="module")
def built() -> dict[str, Built]:
    out = {}
    for name, case in CASES.items():
        torch.manual_seed(0)
        model = case.build().eval()
        inputs = case.inputs()
        with torch.no_grad():
            ref = model(**inputs, output_hidden_states=True)
        layers = [str(x) for x in default_layers(model)]
        out[name] = Built(model, inputs, layers, ref.hidden_states, ref.last_hidden_state)
    return out


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list(CASES))
def test_block_taps_equal_hidden_states(name: str, built: dict[str, Built]) -> None:
    b = built[name]
    assert len(b.layers) == len(b.hidden) - 1
    with torch.no_grad():
        got = LayerTap(b.model, b.layers)(**b.inputs)
        # the same through the with-block around the model's own call, and tap.run
        with LayerTap(b.model, b.layers) as tap:
            b.model(**b.inputs)
            ctx = {k: _first(v) for k, v in tap.outputs.items()}
        out, ran = LayerTap(b.model, b.layers).run(**b.inputs)
    for i, layer in enumerate(b.layers):
        ref = b.hidden[i + 1]
        if i == len(b.layers) - 1 and not torch.equal(_first(got[layer]), ref):
            # the model ties hidden_states[-1] to last_hidden_state (after its final norm)
            assert torch.equal(ref, b.last)
            continue
        assert torch.equal(_first(got[layer]), ref), layer
        assert torch.equal(ctx[layer], ref), layer
        assert torch.equal(_first(ran[layer]), ref), layer
    assert torch.equal(out.last_hidden_state, b.last)


@pytest.mark.parametrize("name", list(CASES))
def test_pools_skip_the_right_tokens(name: str, built: dict[str, Built]) -> None:
    b = built[name]
    case = CASES[name]
    layer = b.layers[1]
    ref = b.hidden[2]
    assert num_prefix_tokens(b.model, layer) == case.prefix
    with torch.no_grad():
        mean = LayerTap(b.model, [layer], pool="mean")(**b.inputs)[layer]
        avg = LayerTap(b.model, [layer], pool="avg")(**b.inputs)[layer]
    if case.kind == "maps":
        torch.testing.assert_close(mean, ref.mean((2, 3)))
        torch.testing.assert_close(avg, ref.mean((2, 3)))
        with pytest.raises(HeadkitError, match="needs token outputs"):
            LayerTap(b.model, [layer], pool="cls")(**b.inputs)
        return
    if case.kind == "text":  # a masked mean: padding never averaged in
        m = b.inputs["attention_mask"].unsqueeze(-1).float()
        expected = (ref * m).sum(1) / m.sum(1)
        torch.testing.assert_close(mean, expected)
        torch.testing.assert_close(avg, expected)
        assert not torch.allclose(mean[0], ref[0].mean(0))
    else:
        torch.testing.assert_close(mean, ref[:, case.prefix :].mean(1))
        torch.testing.assert_close(avg, ref.mean(1))
    if case.prefix or case.kind == "text":
        with torch.no_grad():
            cls = LayerTap(b.model, [layer], pool="cls")(**b.inputs)[layer]
            both = LayerTap(b.model, [layer], pool="cls+mean")(**b.inputs)[layer]
        torch.testing.assert_close(cls, ref[:, 0])
        torch.testing.assert_close(both, torch.cat([ref[:, 0], mean], 1))
    else:  # Swin: no class token to read
        with pytest.raises(HeadkitError, match="no class token"):
            LayerTap(b.model, [layer], pool="cls")(**b.inputs)
    # feature_info says that the block's tuple output was pooled on its first element
    info = (
        feature_info(b.model, [layer], (2, 3, 32, 32), pool="mean") if case.kind != "text" else None
    )
    if info is not None:
        assert info[layer].shape == tuple(mean.shape)
        assert info[layer].num_prefix_tokens == case.prefix


def test_text_without_mask_refuses_to_average_padding(built: dict[str, Built]) -> None:
    b = built["BertModel"]
    layer = b.layers[0]
    with pytest.raises(HeadkitError, match=r"hold padding.*attention_mask"):
        LayerTap(b.model, [layer], pool="mean")(input_ids=b.inputs["input_ids"])
    # no padding and no mask: every token is real
    ids = torch.randint(5, 50, (2, 6))
    with torch.no_grad():
        got = LayerTap(b.model, [layer], pool="mean")(ids)[layer]
        ref = b.model(ids, output_hidden_states=True).hidden_states[1].mean(1)
    torch.testing.assert_close(got, ref)


def test_mask_captured_in_a_with_block(built: dict[str, Built]) -> None:
    b = built["BertModel"]
    layer = b.layers[2]
    m = b.inputs["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad(), LayerTap(b.model, [layer], pool="mean") as tap:
        b.model(b.inputs["input_ids"], b.inputs["attention_mask"])  # positional, too
        got = tap.outputs[layer]
    ref = b.hidden[3]
    torch.testing.assert_close(got, (ref * m).sum(1) / m.sum(1))


@pytest.mark.parametrize("name", list(CASES))
def test_truncate_at_a_block(name: str, built: dict[str, Built]) -> None:
    b = built[name]
    layer = b.layers[1]
    pool = "mean"
    cut = truncate_at(b.model, layer, pool=pool)
    assert cut.route == "blocks"
    assert cut.kept_params < _n_params(b.model)
    assert cut.kept_params == _n_params(cut) and cut.total_params == _n_params(b.model)
    with torch.no_grad():
        ref = LayerTap(b.model, [layer], pool=pool)(**b.inputs)[layer]
        torch.testing.assert_close(cut(**b.inputs), ref)
        torch.testing.assert_close(cut(**b.inputs), ref)  # after the first forward, too
        raw = truncate_at(b.model, layer)(**b.inputs)
    assert torch.equal(_first(raw), b.hidden[2])
    # no block after the cut is held
    later = b.layers[2]
    assert not any(k.startswith(later + ".") for k in cut.state_dict())
    # pickles, deep-copies, saves
    for twin in (
        pickle.loads(pickle.dumps(cut)),
        copy.deepcopy(cut),
        _save_load(cut),
    ):
        with torch.no_grad():
            torch.testing.assert_close(twin(**b.inputs), ref)
    # a full checkpoint (with a DDP prefix) loads into a cut of a fresh model
    torch.manual_seed(1)
    fresh = CASES[name].build().eval()
    other = truncate_at(fresh, layer, pool=pool)
    full = {f"module.{k}": v for k, v in b.model.state_dict().items()}
    res = other.load_state_dict(full)
    assert not res.missing_keys and not res.unexpected_keys and res.skipped_keys
    with torch.no_grad():
        torch.testing.assert_close(other(**b.inputs), ref)
    report = load_checkpoint(truncate_at(fresh, layer), b.model.state_dict())
    assert report.skipped and not report.unexpected and not report.missing


def _save_load(m: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    out: nn.Module = torch.load(buf, weights_only=False)
    return out


def test_calling_conventions(built: dict[str, Built]) -> None:
    b = built["ViTModel"]
    x = b.inputs["pixel_values"]
    layer = b.layers[0]
    with torch.no_grad():
        a = LayerTap(b.model, [layer], pool="cls")(pixel_values=x)[layer]
        c = LayerTap(b.model, [layer], pool="cls")(x)[layer]
        d = LayerTap(b.model, [layer], pool="cls")(**{"pixel_values": x})[layer]
    assert torch.equal(a, c) and torch.equal(a, d)


def test_taps_inside_a_block(built: dict[str, Built]) -> None:
    b = built["ViTModel"]
    blk = b.layers[1]  # x = x + attn(ln_before(x)); x = x + mlp(ln_after(x))
    x = b.inputs["pixel_values"]
    with torch.no_grad():
        got = LayerTap(b.model, [f"{blk}.attention", f"{blk}.layernorm_after:in", f"{blk}.mlp"])(x)
    h_in = b.hidden[1]
    attn = _first(got[f"{blk}.attention"])
    resid = got[f"{blk}.layernorm_after:in"]
    torch.testing.assert_close(resid, h_in + attn)  # the residual sum, a non-module op
    block = b.model.get_submodule(blk)
    torch.testing.assert_close(_first(got[f"{blk}.mlp"]), block.mlp(block.layernorm_after(resid)))
    cut = truncate_at(b.model, f"{blk}.layernorm_after:in")
    with torch.no_grad():
        torch.testing.assert_close(cut(x), resid)


def test_gradient_checkpointing(built: dict[str, Built]) -> None:
    torch.manual_seed(0)
    x = built["ViTModel"].inputs["pixel_values"]

    def grads(model: nn.Module, layer: str, **kw: Any) -> list[torch.Tensor]:
        model.zero_grad()
        LayerTap(model, [layer], **kw)(x)[layer].pow(2).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model = CASES["ViTModel"].build().train()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    inside = f"{default_layers(model)[1]}.mlp"
    ref = grads(model, inside)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is None:  # transformers < 5.x

        def enable(kwargs: dict[str, Any]) -> None:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    enable({"use_reentrant": False})
    for a, c in zip(grads(model, inside), ref, strict=True):
        torch.testing.assert_close(a, c)
    enable({"use_reentrant": True})
    with pytest.raises(HeadkitError, match="use_reentrant=False"):
        grads(model, inside)
    # features only: fine
    LayerTap(model, [inside], detach=True)(x)


def test_feature_info_notes_and_text(built: dict[str, Built]) -> None:
    swin = built["SwinModel"]
    layer = swin.layers[1]
    info = feature_info(swin.model, [layer], (2, 3, 32, 32), pool="mean")[layer]
    assert info.element == "element 0 of a tuple of 3"  # Swin stages return tuples
    assert info.shape == (2, swin.hidden[2].shape[-1])
    bert = built["BertModel"]
    # the meta device cannot run BERT (.item() in its mask code): a copy runs on a constant
    modes = [m.training for m in bert.model.modules()]
    text = feature_info(bert.model, bert.layers, (3, 7), pool="mean", dtype=torch.long)
    assert all(v.shape == (3, 32) for v in text.values())
    assert [m.training for m in bert.model.modules()] == modes
