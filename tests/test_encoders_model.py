"""`headkit._layers.model`: the facts about a user's model (M1 of issue 9) and `load_checkpoint`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import headkit
from headkit import (
    HeadkitError,
    LayerTap,
    default_layers,
    feature_info,
    load_checkpoint,
    truncate_at,
)
from headkit._layers.model import block_lists, check_module, num_prefix_tokens, unwrap

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


# ----------------------------------------------------------------------------- check_module

NOT_MODULES: list[tuple[object, str]] = [
    ((nn.Linear(2, 2), lambda x: x, lambda x: x), "first element"),
    ("resnet18", "build the model first"),
    (None, "got None"),
    ({"weight": torch.zeros(2)}, "load_checkpoint"),
    (42, "got builtins.int"),
]

ENTRY_POINTS: list[tuple[str, Callable[[Any], object]]] = [
    ("LayerTap", lambda m: LayerTap(m, ["0"])),
    ("truncate_at", lambda m: truncate_at(m, "0")),
    ("feature_info", lambda m: feature_info(m, ["0"], (1, 2))),
    ("load_checkpoint", lambda m: load_checkpoint(m, {})),
    ("default_layers", lambda m: default_layers(m)),
]


@pytest.mark.parametrize(("obj", "hint"), NOT_MODULES, ids=["tuple", "str", "none", "dict", "int"])
@pytest.mark.parametrize(("where", "call"), ENTRY_POINTS, ids=[w for w, _ in ENTRY_POINTS])
def test_every_entry_point_rejects_a_non_module(
    obj: object, hint: str, where: str, call: Callable[[Any], object]
) -> None:
    with pytest.raises(HeadkitError, match=f"{where} needs an nn.Module.*{hint}"):
        call(obj)


def test_open_clip_tuple_is_rejected_with_the_fix() -> None:
    open_clip = pytest.importorskip("open_clip")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        triple = open_clip.create_model_and_transforms("RN50", pretrained=None)
    with pytest.raises(HeadkitError, match=r"tuple of 3 \(CLIP, Compose, Compose\).*first element"):
        truncate_at(triple, "visual.layer1")
    assert check_module(triple[0], "x") is triple[0]


# ----------------------------------------------------------------------------- unwrap


def test_unwrap_compile_dataparallel_ddp_fsdp(tmp_path: os.PathLike[str]) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.nn.parallel import DistributedDataParallel as DDP

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert unwrap(net) is net
    assert unwrap(torch.compile(net, backend="eager")) is net
    assert unwrap(nn.DataParallel(net)) is net
    dist.init_process_group(
        "gloo", init_method=f"file://{os.path.join(tmp_path, 'init')}", rank=0, world_size=1
    )
    try:
        assert unwrap(DDP(net)) is net
        assert unwrap(torch.compile(DDP(net), backend="eager")) is net
        fsdp = FSDP(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), device_id=torch.device("cpu"))
        inner = unwrap(fsdp)
        assert isinstance(inner, nn.Sequential)
        # names without FSDP's inserted segment resolve
        out = LayerTap(fsdp, ["0"])(torch.randn(2, 4))["0"]
        assert out.shape == (2, 8)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- prefix tokens


@pytest.fixture(scope="module")
def hf() -> Any:
    return pytest.importorskip("transformers")


SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}


def _hf_models(T: Any) -> dict[str, tuple[nn.Module, int]]:
    vit = {"image_size": 32, "patch_size": 8, **SMALL}
    return {
        "ViTModel": (T.ViTModel(T.ViTConfig(**vit)), 1),
        "DeiTModel": (T.DeiTModel(T.DeiTConfig(**vit)), 2),
        "Dinov2Model": (T.Dinov2Model(T.Dinov2Config(**vit)), 1),
        "Dinov2WithRegistersModel": (
            T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**vit, num_register_tokens=4)),
            5,
        ),
        "CLIPVisionModel": (T.CLIPVisionModel(T.CLIPVisionConfig(**vit)), 1),
        "BertModel": (T.BertModel(T.BertConfig(vocab_size=50, **SMALL)), 0),
        "SwinModel": (
            T.SwinModel(
                T.SwinConfig(
                    image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2]
                )
            ),
            0,
        ),
    }


def test_prefix_tokens_read_from_the_model(hf: Any) -> None:
    for name, (model, expected) in _hf_models(hf).items():
        assert num_prefix_tokens(model) == expected, name
        first = default_layers(model)[0]
        assert isinstance(first, str) and num_prefix_tokens(model, first) == expected, name
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, reg_tokens=4)
    assert num_prefix_tokens(vit) == 5
    assert num_prefix_tokens(torchvision.models.resnet18()) == 0
    assert num_prefix_tokens(torchvision.models.vit_b_16()) == 1


def test_prefix_tokens_per_tower_of_a_clip_model(hf: Any) -> None:
    clip = hf.CLIPModel(
        hf.CLIPConfig(
            text_config={"vocab_size": 50, **SMALL},
            vision_config={"image_size": 32, "patch_size": 8, **SMALL},
        )
    )
    assert num_prefix_tokens(clip, "vision_model.encoder.layers.1") == 1
    assert num_prefix_tokens(clip, "vision_model.encoder.layers.1.mlp.fc1") == 1
    assert num_prefix_tokens(clip, "text_model.encoder.layers.0") == 0


def test_prefix_tokens_unknown_is_none() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.summary_token = nn.Parameter(torch.zeros(1, 1, 4))  # not a name headkit knows
            self.blocks = nn.Sequential(nn.Linear(4, 4))

    assert num_prefix_tokens(Odd()) is None

    class Learned(nn.Module):  # (1, k, D) learned rows, whatever their name: not guessed
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Parameter(torch.zeros(1, 3, 4))
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))  # a known kind: fine
            self.blocks = nn.Sequential(nn.Linear(4, 4))

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.blocks(torch.cat([self.extra.expand(t.shape[0], -1, -1), t], 1))

    assert num_prefix_tokens(Learned()) is None
    with pytest.raises(HeadkitError, match="num_prefix_tokens="):
        LayerTap(Learned(), ["blocks"], pool="mean")(torch.randn(2, 8, 4))


def test_prefix_tokens_added_later_are_not_skipped() -> None:
    """CaiT adds its class token after the self-attention blocks: their outputs have none."""
    cait = timm.create_model("cait_xxs24_224", pretrained=False, depth=2).eval()
    x = torch.randn(1, 3, 224, 224)
    with pytest.raises(HeadkitError, match=r"196 tokens, a square grid.*num_prefix_tokens=0"):
        LayerTap(cait, ["blocks.1"], pool="mean")(x)
    with torch.no_grad():
        raw = LayerTap(cait, ["blocks.1"])(x)["blocks.1"]
        got = LayerTap(cait, ["blocks.1"], pool="mean", num_prefix_tokens=0)(x)["blocks.1"]
    torch.testing.assert_close(got, raw.mean(1))


# ----------------------------------------------------------------------------- default layers


def _param_free_leaf(m: nn.Module) -> bool:
    return not list(m.children()) and not list(m.parameters())


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet50", "vit_b_16", "mobilenet_v2", "mobilenet_v3_small"]
)
def test_default_layers_torchvision_run_and_skip_inplace_and_leaves(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    layers = default_layers(model)
    assert "bn1" not in layers
    modules = dict(model.named_modules())
    assert all(not _param_free_leaf(modules[str(n)]) for n in layers)
    assert len(layers) >= 4
    size = 224 if name == "vit_b_16" else 64
    with torch.no_grad():
        out = LayerTap(model, layers, pool="avg", stop_early=False)(torch.randn(2, 3, size, size))
    assert list(out) == layers and all(v.shape[0] == 2 for v in out.values())


def test_default_layers_resnet18_are_the_stages() -> None:
    layers = default_layers(torchvision.models.resnet18())
    assert layers == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert default_layers(torchvision.models.vit_b_16())[1:13] == [
        f"encoder.layers.encoder_layer_{i}" for i in range(12)
    ]


def test_default_layers_timm_hf_open_clip(hf: Any) -> None:
    assert default_layers(timm.create_model("resnet18", pretrained=False)) == [0, 1, 2, 3, 4]
    models = _hf_models(hf)
    assert default_layers(models["ViTModel"][0]) == ["layers.0", "layers.1"]
    assert default_layers(models["Dinov2Model"][0]) == ["encoder.layer.0", "encoder.layer.1"]
    assert default_layers(models["BertModel"][0]) == ["encoder.layer.0", "encoder.layer.1"]
    assert default_layers(models["SwinModel"][0]) == ["encoder.layers.0", "encoder.layers.1"]
    assert block_lists(models["SwinModel"][0]) == ["encoder.layers"]  # not the per-stage blocks
    albert = hf.AlbertModel(hf.AlbertConfig(vocab_size=50, embedding_size=16, **SMALL))
    assert default_layers(albert) == [
        "encoder.albert_layer_groups.0@0",
        "encoder.albert_layer_groups.0@1",
    ]


def test_default_layers_open_clip() -> None:
    open_clip = pytest.importorskip("open_clip")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rn = open_clip.create_model("RN50", pretrained=None)
    layers = default_layers(rn.visual)
    assert layers == ["conv1", "conv2", "conv3", "layer1", "layer2", "layer3", "layer4", "attnpool"]
    assert "bn1" not in layers  # followed by ReLU(inplace=True)
    # a whole CLIP model: the vision tower's blocks
    assert default_layers(rn)[0] == "visual.conv1"


# ----------------------------------------------------------------------------- load_checkpoint


def _save(obj: object, path: str) -> str:
    torch.save(obj, path)
    return path


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def test_load_state_dict_with_prefixes(tmp_path: os.PathLike[str]) -> None:
    src = torchvision.models.resnet18()
    sd = src.state_dict()
    for prefix, ckpt in [
        ("", sd),
        ("module.", {f"module.{k}": v for k, v in sd.items()}),
        (
            "state_dict.model.backbone.",
            {"state_dict": {f"model.backbone.{k}": v for k, v in sd.items()}, "epoch": 3},
        ),
    ]:
        dst = torchvision.models.resnet18()
        path = _save(ckpt, os.path.join(tmp_path, "c.pt"))
        report = load_checkpoint(dst, path)
        assert report.prefix == prefix and report.loaded == len(sd)
        assert not report.missing and not report.unexpected
        assert all(
            torch.equal(a, b) for a, b in zip(dst.state_dict().values(), sd.values(), strict=True)
        )
        assert f"loaded {len(sd)} tensors" in str(report)


def test_resnet34_into_resnet18_is_an_error_listing_both(tmp_path: os.PathLike[str]) -> None:
    path = _save(torchvision.models.resnet34().state_dict(), os.path.join(tmp_path, "r34.pt"))
    with pytest.raises(HeadkitError, match=r"96 unexpected keys \(layer1\.2\.") as err:
        load_checkpoint(torchvision.models.resnet18(), path)
    assert "r34.pt" in str(err.value) and "strict=False" in str(err.value)
    dst = torchvision.models.resnet18()
    report = load_checkpoint(dst, path, strict=False)
    assert report.loaded == 122 and len(report.unexpected) == 96 and not report.missing
    assert "96 unexpected" in str(report)


def test_missing_keys_and_classifier_hint(tmp_path: os.PathLike[str]) -> None:
    sd = {
        k: v
        for k, v in torchvision.models.resnet18().state_dict().items()
        if not k.startswith("fc.")
    }
    with pytest.raises(HeadkitError, match=r"2 model keys missing.*fc\.weight.*classifier"):
        load_checkpoint(torchvision.models.resnet18(), sd, drop_classifier=False)
    report = load_checkpoint(torchvision.models.resnet18(), sd, strict=False, drop_classifier=False)
    assert report.missing == ["fc.weight", "fc.bias"]
    # by default a checkpoint without the classifier is a backbone: fc is removed (issue 17)
    model = torchvision.models.resnet18()
    report = load_checkpoint(model, sd)
    assert isinstance(model.fc, nn.Identity) and not report.missing and "fc" in report.removed


def test_shape_mismatch_always_raises() -> None:
    sd = nn.Linear(4, 3).state_dict()
    with pytest.raises(
        HeadkitError, match=r"shape mismatch.*weight: checkpoint \(3, 4\), model \(5, 4\)"
    ):
        load_checkpoint(nn.Linear(4, 5), sd, strict=False)


def test_skipped_keys_outside_the_prefix_are_reported() -> None:
    backbone, head = nn.Linear(4, 8), nn.Linear(8, 2)
    ckpt = {
        **{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
        **{f"projection_head.{k}": v for k, v in head.state_dict().items()},
    }
    report = load_checkpoint(nn.Linear(4, 8), ckpt)
    assert report.prefix == "backbone." and report.loaded == 2
    assert sorted(report.skipped) == ["projection_head.bias", "projection_head.weight"]


def test_two_copies_need_a_prefix() -> None:
    sd = nn.Linear(4, 8).state_dict()
    ckpt = {
        "teacher": {f"backbone.{k}": v for k, v in sd.items()},
        "student": {f"backbone.{k}": v + 1 for k, v in sd.items()},
    }
    with pytest.raises(
        HeadkitError, match=r"2 times.*student\.backbone\..*teacher\.backbone\..*prefix="
    ):
        load_checkpoint(nn.Linear(4, 8), ckpt)
    dst = nn.Linear(4, 8)
    assert load_checkpoint(dst, ckpt, prefix="teacher.backbone.").loaded == 2
    assert torch.equal(dst.weight, sd["weight"])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda p: _save(torchvision.models.resnet18(), p),
            r"not a state_dict: .*c\.pt.* a whole pickled model \(torchvision\.models\.resnet\.ResNet\); save model\.state_dict\(\)",
        ),
        (
            lambda p: _write(p, os.urandom(2000)),
            r"cannot read checkpoint .*c\.pt.*not a PyTorch checkpoint; save model\.state_dict\(\)",
        ),
        (lambda p: _write(p, b""), r"an empty file"),
        (lambda p: _save(torch.zeros(3), p), r"not a state_dict: .*holds a Tensor"),
        (lambda p: None, r"does not exist"),
    ],
    ids=["pickled-model", "random-bytes", "empty", "tensor", "missing"],
)
def test_unreadable_inputs_get_one_line(
    tmp_path: os.PathLike[str], make: Callable[[str], object], match: str
) -> None:
    path = os.path.join(tmp_path, "c.pt")
    make(path)
    with pytest.raises(HeadkitError, match=match) as err:
        load_checkpoint(nn.Linear(2, 2), path)
    msg = str(err.value)
    assert "\n" not in msg and "weights_only" not in msg
    with pytest.raises(HeadkitError, match="is a folder"):
        load_checkpoint(nn.Linear(2, 2), str(tmp_path))


def test_safetensors_file(tmp_path: os.PathLike[str]) -> None:
    st = pytest.importorskip("safetensors.torch")
    src = nn.Linear(3, 2)
    path = os.path.join(tmp_path, "model.safetensors")
    st.save_file({f"encoder.{k}": v for k, v in src.state_dict().items()}, path)
    dst = nn.Linear(3, 2)
    assert load_checkpoint(dst, path).prefix == "encoder."
    assert torch.equal(dst.weight, src.weight)


def test_public_names() -> None:
    assert headkit.load_checkpoint is load_checkpoint
    assert "LoadReport" in headkit.__all__
