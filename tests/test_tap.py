from __future__ import annotations

import copy
import gc
import io
import os
import weakref

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from headkit import HeadkitError, LayerTap, feature_info, truncate_at

from ._tol import magnitude, tol

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

# 17 timm architectures from different families
TIMM_MODELS = [
    "resnet18",
    "convnext_atto",
    "efficientnet_b0",
    "regnetx_002",
    "mobilenetv3_small_050",
    "densenet121",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "levit_128s",
    "edgenext_xx_small",
    "ghostnet_050",
    "efficientvit_b0",
    "poolformer_s12",
    "pvt_v2_b0",
    "repvit_m1",
    "mobilevit_xxs",
]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def storages(m: nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in m.parameters()}


@pytest.fixture(scope="module")
def timm_cache() -> dict[str, nn.Module]:
    return {}


def get_timm(name: str, cache: dict[str, nn.Module]) -> nn.Module:
    if name not in cache:
        torch.manual_seed(0)
        cache[name] = timm.create_model(name, pretrained=False).eval()
    return cache[name]


def timm_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    return torch.randn(batch, *size)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_parity_every_index(name: str, timm_cache: dict[str, nn.Module]) -> None:
    model = get_timm(name, timm_cache)
    x = timm_input(model)
    n = len(model.feature_info)
    sd_keys = list(model.state_dict())
    total = n_params(model)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        full = model(x)
        got = LayerTap(model, list(range(n)))(x)
        prev = 0
        for i in range(n):
            assert torch.equal(got[i], ref[i]), i
            single = LayerTap(model, [i - n])(x)[i - n]  # negative index = same layer
            assert torch.equal(single, ref[i])
            cut = truncate_at(model, i)
            # timm's stop_early route sums in the same order; a pruned copy may not
            torch.testing.assert_close(
                cut(x), ref[i], **tol(torch.float32, magnitude(ref[i]), 3 * 3 * 512)
            )
            assert storages(cut) <= storages(model)  # shares, no copies
            kept = n_params(cut)
            assert kept <= total and kept >= prev
            prev = kept
        assert n_params(truncate_at(model, 0)) < total
        # the original is untouched
        assert list(model.state_dict()) == sd_keys
        torch.testing.assert_close(model(x), full)


def test_timm_vit_pools_and_prefix_tokens(timm_cache: dict[str, nn.Module]) -> None:
    model = get_timm("vit_tiny_patch16_224", timm_cache)
    x = timm_input(model)
    with torch.no_grad():
        spatial, prefix = model.forward_intermediates(
            x, indices=[5], intermediates_only=True, return_prefix_tokens=True
        )[0]
        tokens = LayerTap(model, ["blocks.5"])(x)["blocks.5"]  # raw (B, 1 + 196, C)
        out = {
            p: LayerTap(model, [5, "blocks.5"], pool=p)(x)
            for p in ("cls", "mean", "cls+mean", "avg")
        }
    torch.testing.assert_close(tokens[:, 1:].transpose(1, 2).reshape(spatial.shape), spatial)
    torch.testing.assert_close(out["cls"][5], prefix[:, 0])
    torch.testing.assert_close(out["cls"]["blocks.5"], tokens[:, 0])
    torch.testing.assert_close(out["mean"][5], spatial.mean((2, 3)))
    torch.testing.assert_close(out["mean"]["blocks.5"], tokens[:, 1:].mean(1))  # CLS excluded
    torch.testing.assert_close(
        out["cls+mean"][5], torch.cat([prefix[:, 0], spatial.mean((2, 3))], 1)
    )
    torch.testing.assert_close(out["avg"]["blocks.5"], tokens.mean(1))
    cut = truncate_at(model, 5, pool="cls+mean")
    torch.testing.assert_close(cut(x), out["cls+mean"][5])
    cut_name = truncate_at(model, "blocks.5", pool="mean")
    torch.testing.assert_close(cut_name(x), out["mean"]["blocks.5"])
    assert n_params(cut_name) < n_params(model) * 0.6


@pytest.mark.parametrize(
    ("name", "layers", "shape"),
    [
        ("resnet50", ["layer1", "layer2", "layer3.2.conv1", "layer4"], (2, 3, 64, 64)),
        ("vit_b_16", ["encoder.layers.encoder_layer_3", "encoder.ln"], (2, 3, 224, 224)),
        ("mobilenet_v3_small", ["features.3", "features.8.block"], (2, 3, 64, 64)),
        ("swin_t", ["features.2", "features.5"], (2, 3, 64, 64)),
        ("convnext_tiny", ["features.3"], (2, 3, 64, 64)),
        ("efficientnet_b0", ["features.4.1"], (2, 3, 64, 64)),
    ],
)
def test_torchvision_parity(name: str, layers: list[str], shape: tuple[int, ...]) -> None:
    from torchvision.models.feature_extraction import create_feature_extractor

    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(*shape)
    fe = create_feature_extractor(model, return_nodes={layer: layer for layer in layers})
    with torch.no_grad():
        ref = fe(x)
        got = LayerTap(model, layers)(x)
        for layer in layers:
            assert torch.equal(got[layer], ref[layer])
            cut = truncate_at(model, layer, pool="avg")
            r = ref[layer]
            # swin's stages are channels last (B, H, W, C)
            dims = ((1, 2) if name == "swin_t" else (2, 3)) if r.dim() == 4 else (1,)
            expected = r.mean(dims)
            torch.testing.assert_close(cut(x), expected)
            raw = truncate_at(model, layer)
            torch.testing.assert_close(raw(x), ref[layer])
            assert n_params(raw) <= n_params(fe)  # no more than torchvision keeps
            assert storages(raw) <= storages(model)


def test_resnet50_cut_drops_weights_like_torchvision() -> None:
    model = torchvision.models.resnet50()
    cut = truncate_at(model, "layer3")
    assert n_params(cut) == 8_543_296  # 25.6M -> 8.5M, as create_feature_extractor
    assert n_params(model) == 25_557_032


def test_lightly_backbone() -> None:
    lightly_models = pytest.importorskip("lightly.models")
    backbone = lightly_models.ResNetGenerator("resnet-18")
    backbone = nn.Sequential(*list(backbone.children())[:-1], nn.AdaptiveAvgPool2d(1)).eval()
    names = [n for n, _ in backbone.named_children()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        acts = {}
        h = x
        for n, m in backbone.named_children():
            h = m(h)
            acts[n] = h
        got = LayerTap(backbone, names)(x)
        for n in names:
            assert torch.equal(got[n], acts[n])
            cut = truncate_at(backbone, n)
            assert cut.route == "sequential"
            torch.testing.assert_close(cut(x), acts[n])
        got_glob = LayerTap(backbone, ["*"], pool="flatten")(x)
        assert list(got_glob) == names


class Custom(nn.Module):
    """Data-dependent control flow: not traceable by torch.fx."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.mid = nn.Sequential(nn.ReLU(), nn.Linear(8, 8))
        self.tail = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if h.sum() > 0:  # data-dependent
            h = h * 2
        h = self.mid(h)
        return self.tail(h)


def test_untraceable_model_hook_fallback() -> None:
    model = Custom()
    x = torch.randn(4, 6)
    ran_tail = []
    model.tail.register_forward_hook(lambda *a: ran_tail.append(1))
    cut = truncate_at(model, "mid")
    assert cut.route == "hook"
    # the first forward runs to the end to learn that "mid" runs once (a module that runs
    # several times needs call=); from then on the forward stops after it
    ref = LayerTap(model, ["mid"])(x)["mid"]
    torch.testing.assert_close(cut(x), ref)
    ran_tail.clear()
    torch.testing.assert_close(LayerTap(model, ["mid"])(x)["mid"], ref)
    assert not ran_tail  # stop_early skipped the tail
    torch.testing.assert_close(cut(x), ref)
    assert not ran_tail
    assert storages(cut) <= storages(model)
    # the original still works and is untouched
    assert model(x).shape == (4, 3)


class Gated(nn.Module):
    """A block whose own forward has data-dependent control flow."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        if h.mean() > 0:  # data-dependent
            h = -h
        return self.out(h)


class PartlyTraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.aux = nn.Linear(6, 8)  # runs before the cut, used only after it
        self.gated = nn.Sequential(Gated(), Gated())
        self.mid = nn.Linear(8, 8)
        self.tail = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        a = self.aux(x)
        h = self.mid(self.gated(self.stem(x)))
        if scale is not None:  # optional argument: traced with its default
            h = h * scale
        return self.tail(h + a)


@pytest.mark.parametrize("layer", ["mid", "gated.1", "gated.1.inner"])
def test_untraceable_submodules_are_kept_whole_and_the_rest_is_dropped(layer: str) -> None:
    model = PartlyTraceable()
    x = torch.randn(4, 6)
    cut = truncate_at(model, layer)
    ran_tail: list[int] = []
    model.tail.register_forward_hook(lambda *a: ran_tail.append(1))
    ref = LayerTap(model, [layer])(x)[layer]
    ran_tail.clear()
    torch.testing.assert_close(cut(x), ref)
    assert not ran_tail
    names = {n for n, _ in cut.named_parameters()}
    assert not any(n.startswith("tail.") for n in names)  # neither held nor computed
    assert {"stem.weight", "gated.0.inner.weight"} <= names
    assert storages(cut) <= storages(model)
    # a full checkpoint still loads
    fresh = PartlyTraceable()
    cut.load_state_dict(fresh.state_dict())
    torch.testing.assert_close(cut(x), LayerTap(fresh, [layer])(x)[layer])


def test_named_module_with_tuple_output_is_returned_raw() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.view(2, 4, 2, 2), x.view(2, 1, 16)  # looks like timm's (NCHW, prefix) pair

    model = nn.Sequential(nn.Identity(), Pair())
    x = torch.randn(2, 16)
    out = LayerTap(model, ["1"])(x)["1"]
    assert isinstance(out, tuple) and len(out) == 2
    got = truncate_at(model, "1")(x)
    assert isinstance(got, tuple) and all(torch.equal(a, b) for a, b in zip(got, out, strict=True))


def test_state_dict_roundtrip_and_full_checkpoint() -> None:
    model = torchvision.models.resnet18()
    cut = truncate_at(model, "layer2")
    full_sd = model.state_dict()
    assert set(cut.state_dict()) < set(full_sd)
    buf = io.BytesIO()
    torch.save(cut.state_dict(), buf)
    buf.seek(0)
    fresh = truncate_at(torchvision.models.resnet18(), "layer2")
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    cut.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), cut(x))
    # a full-model (and a DDP-prefixed) checkpoint loads into the truncated module
    other = truncate_at(torchvision.models.resnet18(), "layer2").eval()
    other.load_state_dict(full_sd)
    torch.testing.assert_close(other(x), cut(x))
    ddp_sd = {f"module.{k}": v for k, v in full_sd.items()}
    other2 = truncate_at(torchvision.models.resnet18(), "layer2").eval()
    other2.load_state_dict(ddp_sd)
    torch.testing.assert_close(other2(x), cut(x))
    # a key the model never had is still an error
    bad = dict(full_sd)
    bad["not_a_layer.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="not_a_layer"):
        truncate_at(torchvision.models.resnet18(), "layer2").load_state_dict(bad)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("layer", ["layer2", 2])
def test_truncate_deepcopy_compile_timm(layer: int | str, timm_cache: dict[str, nn.Module]) -> None:
    model = get_timm("resnet18", timm_cache)
    x = torch.randn(2, 3, 64, 64)
    cut = truncate_at(model, layer, pool="avg")
    ref = cut(x)
    twin = copy.deepcopy(cut)
    torch.testing.assert_close(twin(x), ref)
    assert storages(twin).isdisjoint(storages(model))
    compiled = torch.compile(cut, backend="aot_eager")
    torch.testing.assert_close(compiled(x), ref, **tol(torch.float32, magnitude(ref), 3 * 3 * 512))
    torch.testing.assert_close(ref, LayerTap(model, [layer], pool="avg")(x)[layer])


def test_truncate_hook_route_deepcopy_and_compile() -> None:
    model = Custom()
    cut = truncate_at(model, "mid", pool=None)
    x = torch.randn(3, 6)
    twin = copy.deepcopy(cut)
    torch.testing.assert_close(twin(x), cut(x))
    torch.testing.assert_close(torch.compile(cut, backend="eager")(x), cut(x))


def test_context_manager_and_gradients() -> None:
    model = torchvision.models.resnet18()
    x = torch.randn(2, 3, 32, 32)
    with LayerTap(model, ["layer3", "layer1"]) as tap:
        y = model(x)
        feats = tap.outputs["layer3"]
        assert feats.shape == (2, 256, 2, 2)
        assert feats.requires_grad
        feats.sum().backward()  # a loss on a lower layer
    assert model.layer3[0].conv1.weight.grad is not None
    assert model.layer4[0].conv1.weight.grad is None
    assert y.shape == (2, 1000)
    assert not model.layer3._forward_hooks  # hooks removed on exit
    assert len(tap.outputs) == 0  # nothing kept after exit
    with LayerTap(model, ["layer3"], detach=True) as tap:
        model(x)
        assert not tap.outputs["layer3"].requires_grad


def test_hooks_removed_on_exception_and_no_tensor_kept() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(RuntimeError), LayerTap(model, ["layer2"]):
        model(torch.randn(2, 7, 32, 32))  # wrong channels
    assert not model.layer2._forward_hooks
    tap = LayerTap(model, ["layer2"])
    out = tap(torch.randn(2, 3, 32, 32))["layer2"]
    ref = weakref.ref(out)
    del out
    gc.collect()
    assert ref() is None  # the tap keeps nothing after returning
    tap.close()
    assert not model.layer2._forward_hooks


def test_one_shot_taps_leave_no_hooks() -> None:
    model = torchvision.models.resnet18()
    for _ in range(5):
        LayerTap(model, ["layer1", "layer2"])(torch.randn(1, 3, 32, 32))
    gc.collect()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_memory_flat_over_1000_forwards() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    tap = LayerTap(model, ["0", "2"])
    alive: list[weakref.ref[torch.Tensor]] = []
    with LayerTap(model, ["1"]) as ctx:
        for _ in range(1000):
            out = tap(torch.randn(4, 16))
            model(torch.randn(4, 16))
            alive.append(weakref.ref(out["0"]))
            alive.append(weakref.ref(ctx.outputs["1"]))
        del out
        gc.collect()
        assert sum(r() is not None for r in alive) <= 1  # only the last context output
    gc.collect()
    assert sum(r() is not None for r in alive) == 0


def test_stop_early_skips_the_rest() -> None:
    model = torchvision.models.resnet18().eval()
    calls: list[str] = []
    model.layer4.register_forward_hook(lambda *a: calls.append("layer4"))
    LayerTap(model, ["layer2"])(torch.randn(1, 3, 32, 32))
    assert calls == []
    LayerTap(model, ["layer2"], stop_early=False)(torch.randn(1, 3, 32, 32))
    assert calls == ["layer4"]


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(torch.relu(self.block(x)))


def test_module_running_twice_is_reported() -> None:
    model = Shared()
    with pytest.raises(HeadkitError, match=r"'block' ran 2 times"):
        LayerTap(model, ["block"], stop_early=False)(torch.randn(2, 4))
    with pytest.raises(HeadkitError, match="ran 2 times"), LayerTap(model, ["block"]):
        model(torch.randn(2, 4))


class Ckpt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(checkpoint(self.a, x, use_reentrant=False))


def test_activation_checkpoint_recompute_is_not_a_second_run() -> None:
    model = Ckpt()
    x = torch.randn(2, 4, requires_grad=True)
    with LayerTap(model, ["a"]) as tap:
        model(x).sum().backward()
        first = tap.outputs["a"]
    torch.testing.assert_close(first, model.a(x))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_layer_that_never_ran_is_named() -> None:
    model = Branchy()
    with pytest.raises(HeadkitError, match=r"\['unused'\] never ran"):
        LayerTap(model, ["used", "unused"])(torch.randn(2, 4))
    with pytest.raises(HeadkitError, match="never ran"), LayerTap(model, ["unused"]) as tap:
        model(torch.randn(2, 4))
        tap.outputs["unused"]


def test_names_ddp_prefix_and_globs() -> None:
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    a = LayerTap(model, ["module.layer2"])(x)["module.layer2"]
    b = LayerTap(nn.DataParallel(model), ["layer2"])(x)["layer2"]
    torch.testing.assert_close(a, b)
    out = LayerTap(model, ["layer*"], pool="avg")(x)
    assert list(out) == ["layer1", "layer2", "layer3", "layer4"]
    blocks = LayerTap(model, ["layer2.*"])(x)
    assert list(blocks) == ["layer2.0", "layer2.1"]


def test_errors_are_precise() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(HeadkitError, match=r"no layer named 'layr3'.*'layer3'"):
        LayerTap(model, ["layr3"])
    with pytest.raises(HeadkitError, match="named_modules"):
        truncate_at(model, "layer9")
    with pytest.raises(HeadkitError, match="no index semantics"):
        LayerTap(model, [2])
    with pytest.raises(HeadkitError, match="matches no module"):
        LayerTap(model, ["block*"])
    with pytest.raises(HeadkitError, match="exactly one layer"):
        truncate_at(model, "layer*")
    with pytest.raises(HeadkitError, match="pool must be"):
        LayerTap(model, ["layer1"], pool="max")  # type: ignore[arg-type]
    with pytest.raises(HeadkitError, match=r"needs token outputs \(B, T, C\)"):
        LayerTap(model, ["layer1"], pool="cls")(torch.randn(1, 3, 32, 32))
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    with pytest.raises(HeadkitError, match=r"valid indices are -2\.\.1"):
        LayerTap(vit, [5])


@pytest.mark.parametrize(
    "name", ["resnet18", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]
)
def test_int_indices_run_and_with_block(name: str, timm_cache: dict[str, nn.Module]) -> None:
    model = get_timm(name, timm_cache)
    x = timm_input(model)
    n = len(model.feature_info)
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        full = model(x)
    stage = model.feature_info[1]["module"]
    tap = LayerTap(model, [0, -1, stage])  # ints mixed with a module name
    y, feats = tap.run(x)
    assert torch.equal(y, full)  # the model's own output, bit-identical
    assert torch.equal(feats[0], ref[0]) and torch.equal(feats[-1], ref[n - 1])
    assert set(feats) == {0, -1, stage}
    (y.sum() + feats[0].sum()).backward()  # gradients flow through output and taps
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    tap.close()
    # model(x) does not run forward_intermediates: ints in a with-block point to tap.run and
    # to the module names, and the model is never patched
    with (
        pytest.raises(HeadkitError, match=rf"tap\.run\(x\).*\['{stage}'\]"),
        LayerTap(model, [1]),
    ):
        pass
    assert "forward" not in model.__dict__


def test_int_indices_in_a_with_block_on_a_compiled_model(
    timm_cache: dict[str, nn.Module],
) -> None:
    compiled = torch.compile(get_timm("resnet18", timm_cache), backend="eager")
    with (
        pytest.raises(HeadkitError, match=r"tap\.run\(x\).*'layer1'"),
        LayerTap(compiled, [1]),
    ):
        pass


def test_describe_meta_dry_run(timm_cache: dict[str, nn.Module]) -> None:
    model = get_timm("convnext_atto", timm_cache)
    info = LayerTap(model, [0, -1, "stem"]).describe((3, 3, 224, 224))
    assert info[0].shape == (3, 40, 56, 56) and info[0].dtype == torch.float32
    assert info[-1].shape == (3, 320, 7, 7)
    assert info["stem"].shape == (3, 40, 56, 56)
    vit = get_timm("vit_tiny_patch16_224", timm_cache)
    pooled = feature_info(vit, ["blocks.2", 3], (2, 3, 224, 224), pool="cls+mean")
    assert pooled["blocks.2"].shape == (2, 384) and pooled[3].shape == (2, 384)
    # the real model was not touched (no meta weights leaked)
    assert all(p.device.type == "cpu" for p in vit.parameters())


def test_compile_tap_set_up_before_compiling() -> None:
    import torch._dynamo

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 8)
    torch._dynamo.reset()
    with LayerTap(model, ["1"]) as tap:
        explain = torch._dynamo.explain(model)(x)
        assert explain.graph_break_count == 0, explain.break_reasons
        compiled = torch.compile(model, backend="eager")
        compiled(x)
        torch.testing.assert_close(tap.outputs["1"], torch.relu(model[0](x)))


def test_tap_on_already_compiled_model_never_silent() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 8)
    compiled(x)  # first compiled call: hooks added later will not fire in PyTorch
    out = LayerTap(compiled, ["1"])(x)["1"]  # tap(x) runs eagerly: works
    torch.testing.assert_close(out, torch.relu(model[0](x)))
    # in a with-block the hooks cannot fire in the already-compiled graph: a clear error, not {}
    with pytest.raises(HeadkitError, match="compiled"), LayerTap(compiled, ["1"]) as tap:
        compiled(x)
        tap.outputs["1"]


def test_truncate_under_ddp(tmp_path: os.PathLike[str]) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    init = f"file://{os.path.join(tmp_path, 'init')}"
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        model = torchvision.models.resnet18()
        cut = truncate_at(model, "layer2", pool="avg")
        ddp = DDP(cut)
        x = torch.randn(2, 3, 32, 32)
        out = ddp(x)
        out.sum().backward()
        assert out.shape == (2, 128)
        assert model.layer2[0].conv1.weight.grad is not None  # shared weights
        torch.testing.assert_close(out, cut(x))
    finally:
        dist.destroy_process_group()
