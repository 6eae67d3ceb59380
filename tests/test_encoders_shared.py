"""Modules that run several times in one forward (ALBERT's shared layer, weight-tied blocks) and
activation checkpointing: the same answer, or the same error, from tap(x), the with-block,
tap.run and truncate_at."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from headkit import HeadkitError, LayerTap, default_layers, truncate_at

T = pytest.importorskip("transformers")

GROUP = "encoder.albert_layer_groups.0"


@pytest.fixture(scope="module")
def albert() -> tuple[nn.Module, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    cfg = T.AlbertConfig(
        vocab_size=50,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
    )
    model = T.AlbertModel(cfg).eval()
    inputs = {"input_ids": torch.randint(5, 50, (2, 6)), "attention_mask": torch.ones(2, 6)}
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    return model, inputs, hidden


def test_shared_layer_raises_everywhere_by_default(albert: Any) -> None:
    model, inputs, _ = albert
    msg = rf"'{GROUP}' ran 4 times.*call="
    for stop in (True, False):
        with pytest.raises(HeadkitError, match=msg):
            LayerTap(model, [GROUP], stop_early=stop)(**inputs)
    with pytest.raises(HeadkitError, match=msg):
        LayerTap(model, [GROUP]).run(**inputs)
    with pytest.raises(HeadkitError, match=msg), torch.no_grad(), LayerTap(model, [GROUP]):
        model(**inputs)
    cut = truncate_at(model, GROUP)
    with pytest.raises(HeadkitError, match=r"ran 4 times.*call="):
        cut(**inputs)


def test_shared_layer_each_call(albert: Any) -> None:
    model, inputs, hidden = albert
    with torch.no_grad():
        for k in range(4):
            got = LayerTap(model, [GROUP], call=k)(**inputs)[GROUP]
            assert torch.equal(got, hidden[k + 1])
            assert torch.equal(
                LayerTap(model, [f"{GROUP}@{k - 4}"])(**inputs)[f"{GROUP}@{k - 4}"], got
            )
            cut = truncate_at(model, GROUP, call=k)
            assert cut.route == "hook"
            torch.testing.assert_close(cut(**inputs), got)
            torch.testing.assert_close(cut(**inputs), got)  # stops early from then on
        every = LayerTap(model, [f"{GROUP}@*"])(**inputs)[f"{GROUP}@*"]
        assert len(every) == 4 and all(
            torch.equal(a, b) for a, b in zip(every, hidden[1:], strict=True)
        )
        with LayerTap(model, [f"{GROUP}@-1"], pool="mean") as tap:
            model(**inputs)
            torch.testing.assert_close(tap.outputs[f"{GROUP}@-1"], hidden[4].mean(1))
        with pytest.raises(HeadkitError, match=r"asks for call 7.*ran 4 time"):
            LayerTap(model, [GROUP], call=7)(**inputs)
    # the default layers of ALBERT read every call
    layers = default_layers(model)
    assert layers == [f"{GROUP}@{k}" for k in range(4)]
    with torch.no_grad():
        out = LayerTap(model, layers)(**inputs)
    assert all(torch.equal(out[lay], hidden[k + 1]) for k, lay in enumerate(layers))


def test_submodule_inside_a_shared_layer(albert: Any) -> None:
    """Other modules run between its calls: still counted, never silently the first call."""
    model, inputs, _ = albert
    ffn = f"{GROUP}.albert_layers.0.ffn"
    seen: list[torch.Tensor] = []
    h = model.get_submodule(ffn).register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        model(**inputs)
    h.remove()
    with pytest.raises(HeadkitError, match="ran 4 times"):
        LayerTap(model, [ffn])(**inputs)
    with torch.no_grad():
        got = LayerTap(model, [ffn], call=-1)(**inputs)[ffn]
        again = LayerTap(model, [ffn], call=-1)(**inputs)[ffn]  # counts known: stops early
    assert torch.equal(got, seen[-1]) and torch.equal(again, seen[-1])


class Tied(nn.Module):
    """One block applied three times, with a different norm after each use."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.block = nn.Linear(8, 8)
        self.norms = nn.ModuleList(nn.LayerNorm(8) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for norm in self.norms:
            h = norm(torch.relu(self.block(h)))
        return self.head(h)


def test_weight_tied_block_is_consistent() -> None:
    model = Tied()
    x = torch.randn(4, 6)
    outs: list[torch.Tensor] = []
    h = model.block.register_forward_hook(lambda m, a, o: outs.append(o.detach()))
    model(x)
    h.remove()
    with pytest.raises(HeadkitError, match="'block' ran 3 times"):
        LayerTap(model, ["block"])(x)
    with pytest.raises(HeadkitError, match="'block' runs 3 times"):
        truncate_at(model, "block")  # traced: the graph has 3 calls
    for k in (0, 1, 2, -1):
        got = LayerTap(model, ["block"], call=k)(x)["block"]
        torch.testing.assert_close(got, outs[k])
        cut = truncate_at(model, "block", call=k)
        assert cut.route == "fx"
        torch.testing.assert_close(cut(x), outs[k])
        with LayerTap(model, [f"block@{k}"]) as tap:
            model(x)
            torch.testing.assert_close(tap.outputs[f"block@{k}"], outs[k])


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.stem = nn.Linear(6, 8)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for blk in self.blocks:
            if self.reentrant is None:
                h = blk(h)
            else:
                h = checkpoint(blk, h, use_reentrant=self.reentrant)
        return self.head(h)


def _grads(model: nn.Module, layer: str, x: torch.Tensor, **kw: Any) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    LayerTap(model, [layer], **kw)(x)[layer].pow(2).sum().backward()
    return [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()
    ]


@pytest.mark.parametrize("layer", ["blocks.1.fc1", "blocks.1", "blocks.2.fc2:in"])
def test_checkpointing_gives_the_right_gradient_or_raises(layer: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    plain = Checkpointed(None)
    ref = _grads(plain, layer, x)
    for reentrant in (False, True):
        model = Checkpointed(reentrant)
        model.load_state_dict(plain.state_dict())
        inside = layer != "blocks.1"
        if reentrant and inside:  # no gradient could flow: a clear error, never silence
            with pytest.raises(HeadkitError, match="use_reentrant=False"):
                _grads(model, layer, x)
            with torch.no_grad():  # reading features is fine
                feats = LayerTap(model, [layer], detach=True)(x)[layer]
                torch.testing.assert_close(feats, LayerTap(plain, [layer])(x)[layer])
            continue
        for a, b in zip(_grads(model, layer, x), ref, strict=True):
            torch.testing.assert_close(a, b)
        # in a with-block around the user's own forward and backward, too
        model.zero_grad(set_to_none=True)
        with LayerTap(model, [layer]) as tap:
            model(x)
            tap.outputs[layer].pow(2).sum().backward()
        for p, b in zip(model.parameters(), ref, strict=True):
            torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p), b)
