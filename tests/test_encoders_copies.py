"""Taps and cuts never change the user's model: copies made while a tap is open (an EMA
teacher), pickling, torch.save, and cuts that pickle, deep-copy and save on every route."""

from __future__ import annotations

import copy
import io
import pickle
from typing import Any

import pytest
import torch
from torch import nn

from headkit import HeadkitError, LayerTap, Truncated, truncate_at

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def _save_load(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _roundtrips(m: Any) -> list[Any]:
    return [copy.deepcopy(m), pickle.loads(pickle.dumps(m)), _save_load(m)]


def test_copies_inside_an_open_tap_carry_inert_hooks() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref1, ref2 = model(x1), model(x2)
        with LayerTap(model, ["layer2", "layer3.0.conv1:in"], pool="avg") as tap:
            assert torch.equal(model(x1), ref1)
            seen = {k: v.clone() for k, v in tap.outputs.items()}
            teachers = _roundtrips(model)  # how EMA teachers are made
            for teacher in teachers:
                assert torch.equal(teacher(x2), ref2)  # the copy computes itself ...
                for k, v in tap.outputs.items():  # ... and never records into the tap
                    assert torch.equal(v, seen[k])
        for teacher in teachers:
            assert torch.equal(teacher(x2), ref2)
            # nothing in the copies can record: their hooks are inert, or gone
            for m in teacher.modules():
                for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()):
                    assert hook(m, (x1,), {}) is None
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_ema_teacher_of_a_timm_model_while_training_on_taps() -> None:
    """Int indices never patch forward: tap.run serves training, a deepcopy is a true copy."""
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    tap = LayerTap(model, [2, "layer3"])
    out, feats = tap.run(x)
    with torch.no_grad():
        assert torch.equal(out, model(x))
        assert torch.equal(
            feats[2], model.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
        )
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # the student moves on; the teacher must not follow
        assert not torch.equal(teacher(x), model(x))
    assert "forward" not in model.__dict__ and type(model) is type(teacher)
    tap.close()


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.mid = nn.Sequential(nn.ReLU(), nn.Linear(8, 8))
        self.tail = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if h.sum() > 0:
            h = h * 2
        return self.tail(self.mid(h))


def _cases() -> list[tuple[str, nn.Module, Any, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        (
            "timm",
            timm.create_model("resnet18", pretrained=False).eval(),
            2,
            torch.randn(2, 3, 64, 64),
        ),
        (
            "sequential",
            nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval(),
            "1",
            torch.randn(3, 4),
        ),
        ("fx", torchvision.models.resnet18().eval(), "layer2", torch.randn(2, 3, 32, 32)),
        ("hook", Untraceable().eval(), "mid", torch.randn(3, 6)),
    ]


@pytest.mark.parametrize(
    ("route", "model", "layer", "x"), _cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_route_is_one_wrapper_that_pickles_copies_and_loads(
    route: str, model: nn.Module, layer: Any, x: torch.Tensor
) -> None:
    cut = truncate_at(model, layer)
    assert isinstance(cut, Truncated) and cut.route == route
    assert type(model).__module__ != __name__ or type(model) is Untraceable  # not swapped
    with torch.no_grad():
        ref = cut(x)
        for twin in _roundtrips(cut):
            assert isinstance(twin, Truncated) and twin.route == route
            torch.testing.assert_close(twin(x), ref)
            torch.testing.assert_close(twin(x), ref)
    # original keys; a full checkpoint (DDP prefix too) loads, the removed part reported
    keys = set(cut.state_dict())
    assert keys <= set(model.state_dict())
    assert {n for n, _ in cut.named_parameters()} <= {n for n, _ in model.named_parameters()}
    fresh = copy.deepcopy(model)
    for p in fresh.parameters():
        p.data.add_(1.0)
    other = truncate_at(fresh, layer)
    res = other.load_state_dict({f"module.{k}": v for k, v in model.state_dict().items()})
    assert not res.missing_keys and not res.unexpected_keys
    assert sorted(res.skipped_keys) == sorted(cut.dropped_keys)
    with torch.no_grad():
        torch.testing.assert_close(other(x), ref)
    bad = {**model.state_dict(), "not_a_layer.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="not_a_layer"):
        truncate_at(copy.deepcopy(model), layer).load_state_dict(bad)
    # eval()/train() of the cut never reach the user's modules
    model.eval()
    cut.train()
    assert not any(m.training for m in model.modules())


def test_cut_moves_with_to_and_shares_storage() -> None:
    model = torchvision.models.resnet18()
    cut = truncate_at(model, "layer1")
    assert all(
        any(p is q for q in model.parameters()) for p in cut.parameters()
    )  # the same tensors
    cut.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in cut.parameters())
    with torch.no_grad():
        assert cut(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_tap_error_on_a_closed_tap() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    tap = LayerTap(model, ["0"])
    tap.close()
    with pytest.raises(HeadkitError, match="closed"):
        tap(torch.randn(1, 2))
