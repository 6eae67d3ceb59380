"""The ``headkit`` command, run as a user runs it: in a subprocess, checking the exit status and
the one line it prints. One test per trap of issue 12 (and the CLI halves of issues 9 and 10).

Kept quick: 32x32 images, 3 classes, timm's resnet10t (4.9M parameters) or smaller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
timm = pytest.importorskip("timm")


def headkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }
    return subprocess.run(
        [sys.executable, "-m", "headkit", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def one_error_line(res: subprocess.CompletedProcess[str], command: str = "sweep") -> str:
    """The run failed with status 2 and printed exactly one line, and no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"headkit {command}: error: ")]
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.stderr and "weights_only=False" not in res.stderr
    return errors[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 10 images of 32x32 px, sorted by class as a folder is read; the classes
    differ in colour so the probes have something to find."""
    root = tmp_path_factory.mktemp("imgs") / "images"
    g = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for k in range(10):
            arr = g.random((32, 32, 3)) * 60
            arr[..., c] += 150
            Image.fromarray(arr.astype(np.uint8)).save(root / f"class{c}" / f"{k:02d}.png")
    return root


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    r10 = timm.create_model("resnet10t", pretrained=False)
    r18 = timm.create_model("resnet18", pretrained=False)
    r34 = timm.create_model("resnet34", pretrained=False)
    out = {
        "r10": d / "r10.ckpt",
        "r18": d / "r18.ckpt",
        "r34": d / "r34.ckpt",
        "model": d / "whole.pt",
        "random": d / "random.pt",
    }
    # a Lightning-style checkpoint of a lightly-style model: the backbone under "backbone."
    torch.save(
        {"state_dict": {f"backbone.{k}": v for k, v in r10.state_dict().items()}}, out["r10"]
    )
    for name, m in (("r18", r18), ("r34", r34)):
        sd = {f"backbone.{k}": v for k, v in m.state_dict().items()}
        torch.save({"state_dict": sd}, out[name])
    torch.save(r10, out["model"])  # the whole pickled model
    out["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    return out


# ----------------------------------------------------------------------------- basics


def test_version() -> None:
    import headkit as hk

    res = headkit("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"headkit {hk.__version__}"


def test_sweep_says_what_it_did_and_records_it(images: Path, tmp_path: Path) -> None:
    """Images, classes, split, input size and why, device, layers, time; the JSON agrees. The
    32 px images are used at 32 px (the model's pretrained config says 176): never upsampled
    without a word."""
    out = tmp_path / "r.json"
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--data", str(images), "--metrics", "knn",
        "rankme", "--out", str(out), "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "data: 30 images, 3 classes, 32x32 px" in text
    assert "split: stratified 80/20 of --data (seed 0): train 24, test 6" in text
    assert "input: 32x32 (the images' own size; the model's configured size is 176x176" in text
    assert "device: cpu" in text
    assert "layers (default): 0, 1, 2, 3, 4" in text
    assert "random weights" in text and "done in" in text
    info = json.loads(out.read_text())["info"]
    assert info["n_train"] == 24 and info["n_test"] == 6
    assert info["input_size"] == [32, 32] and "own size" in info["input_size_reason"]
    assert info["image_size"] == [32, 32] and info["device"] == "cpu"
    assert sorted(info["class_counts"]["train"]) == [8, 8, 8]
    assert sorted(info["class_counts"]["test"]) == [2, 2, 2]


def test_a_fixed_size_model_gets_its_own_size_and_says_so(images: Path) -> None:
    res = headkit(
        "sweep", "--model", "timm:vit_tiny_patch16_224", "--data", str(images), "--metrics",
        "rankme", "--layers", "0", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "input: 224x224 (the model needs its fixed input size 224x224" in res.stdout


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("model", "ckpt", "words"),
    [
        ("timm:resnet18", "r34", "unexpected"),  # the case: 96 of 218 keys dropped
        ("timm:resnet34", "r18", "missing"),
    ],
)
def test_checkpoint_of_another_architecture_is_an_error(
    images: Path, ckpts: dict[str, Path], model: str, ckpt: str, words: str
) -> None:
    res = headkit(
        "sweep", "--model", model, "--checkpoint", str(ckpts[ckpt]), "--data", str(images),
        "--metrics", "rankme", "--no-progress",
    )  # fmt: skip
    line = one_error_line(res)
    assert words in line and "layer1.2" in line and ckpts[ckpt].name in line


def test_non_strict_loads_and_lists_what_was_left_out(images: Path, ckpts: dict[str, Path]) -> None:
    res = headkit(
        "sweep", "--model", "timm:resnet18", "--checkpoint", str(ckpts["r34"]),
        "--non-strict", "--data", str(images), "--metrics", "rankme", "--layers", "1",
        "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "unexpected" in res.stdout and "layer1.2" in res.stdout
    assert "warning: --non-strict" in res.stdout


@pytest.mark.parametrize(
    ("which", "words"),
    [("random", "not a PyTorch checkpoint"), ("model", "not a state_dict")],
)
def test_unreadable_checkpoint_is_one_line(
    images: Path, ckpts: dict[str, Path], which: str, words: str
) -> None:
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--checkpoint", str(ckpts[which]),
        "--data", str(images), "--no-progress",
    )  # fmt: skip
    line = one_error_line(res)
    assert words in line and ckpts[which].name in line


# ----------------------------------------------------------------------------- data


def test_max_samples_is_a_seeded_stratified_draw(
    images: Path, ckpts: dict[str, Path], tmp_path: Path
) -> None:
    """The folder is sorted by class: the first 12 images would be one class and a bit. (With a
    matching Lightning-style checkpoint, which loads.)"""
    out = tmp_path / "r.json"
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--checkpoint", str(ckpts["r10"]), "--data",
        str(images), "--max-samples", "12", "--metrics", "knn", "--layers", "1", "--out",
        str(out), "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "checkpoint: loaded" in res.stdout and "backbone." in res.stdout
    assert "a seeded stratified draw of 12 of 30 (seed 0)" in res.stdout
    info = json.loads(out.read_text())["info"]
    assert info["n_train"] + info["n_test"] == 12
    assert sorted(info["class_counts"]["train"]) == [3, 3, 3]
    assert sorted(info["class_counts"]["test"]) == [1, 1, 1]


def test_non_image_file_is_left_out_with_a_warning(images: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(images, root)
    (root / "class1" / "notes.txt").write_text("labels were checked by hand")
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--data", str(root), "--metrics", "rankme",
        "--layers", "1", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "warning: left out 1 file(s)" in res.stdout and "notes.txt" in res.stdout
    assert "data: 30 images" in res.stdout


def test_corrupt_image_is_one_line(images: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(images, root)
    (root / "class2" / "zz.png").write_text("this is not a png")
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--data", str(root), "--metrics", "rankme",
        "--layers", "1", "--no-progress", "--workers", "1",
    )  # fmt: skip
    line = one_error_line(res)
    assert "zz.png" in line and "remove the file" in line


def test_an_image_as_data_is_one_line(images: Path) -> None:
    res = headkit("sweep", "--model", "timm:resnet10t", "--data", str(images / "class0" / "00.png"))
    assert "single image" in one_error_line(res)


def test_test_data_that_is_the_training_data_is_one_line(images: Path) -> None:
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--data", str(images), "--test-data", str(images)
    )  # fmt: skip
    assert "trained on" in one_error_line(res)


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("spec", "near"),
    [
        ("timm:resnt10t", "did you mean resnet10t"),
        ("open_clip:ViT-B-33", "did you mean ViT-B-32"),
        ("tim:resnet10t", "did you mean timm:resnet10t"),
        ("hf:google/vit-base-patch16-224", "never downloads"),
        ("open_clip:RN50/openai", "never downloads"),
    ],
)
def test_misspelled_or_remote_model_is_one_line(images: Path, spec: str, near: str) -> None:
    line = one_error_line(headkit("sweep", "--model", spec, "--data", str(images)))
    assert near in line


def test_torchvision_resnet18_default_layers(images: Path) -> None:
    res = headkit(
        "sweep", "--model", "torchvision:resnet18", "--data", str(images), "--metrics",
        "rankme", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    layers = next(ln for ln in res.stdout.splitlines() if ln.startswith("layers"))
    assert "layer4" in layers and "bn1" not in layers and "relu" not in layers


def test_hf_model_from_a_local_config(images: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    cfg.save_pretrained(tmp_path / "vit")
    res = headkit(
        "sweep", "--model", f"hf:{tmp_path / 'vit'}", "--data", str(images), "--metrics",
        "rankme", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "input: 32x32" in res.stdout and "random weights" in res.stdout
    assert "pool: mean (mean over the patch tokens: the model has 1" in res.stdout


def test_open_clip_image_tower(images: Path) -> None:
    pytest.importorskip("open_clip")
    res = headkit(
        "sweep", "--model", "open_clip:RN50", "--data", str(images), "--metrics", "rankme",
        "--layers", "layer1", "--max-samples", "15", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "image tower" in res.stdout and "input: 32x32" in res.stdout


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_one_line(images: Path) -> None:
    res = headkit("sweep", "--model", "timm:resnet10t", "--data", str(images), "--device", "cuda")
    assert "CUDA is not available" in one_error_line(res)


def test_amp_batch_size_workers_and_size(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--data", str(images), "--metrics", "knn",
        "--layers", "1", "2", "--amp", "--batch-size", "7", "--workers", "2", "--size", "48",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "batch 7, workers 2, bf16 autocast" in res.stdout
    assert "input: 48x48 (--size)" in res.stdout
    info = json.loads(out.read_text())["info"]
    assert info["amp"] is True and info["batch_size"] == 7


# ----------------------------------------------------------------------------- demo


def test_demo_makes_its_argument_from_the_numbers() -> None:
    """In process, tiny: the structure of the argument, not its result (the full run is in the
    README). The reweighting head's pre = post holds exactly, by construction."""
    from headkit._app.demo import run_demo

    lines: list[str] = []
    res = run_demo(
        seeds=2, epochs=1, n_train=300, n_test=150, workers=1, plot=False, progress=False,
        print_fn=lines.append,
    )  # fmt: skip
    text = "\n".join(lines)
    assert res.gaps["reweight"] == (0.0, 0.0, 0.0)
    assert "equal by construction" in text and "kappa^-i" in text
    m, lo, hi = res.gaps["mlp"]
    assert lo <= m <= hi
    assert "linear probe acc % (higher is better)" in text
    assert "unevenness (spectrum Gini; lower is better" in text
    assert "recommend_layer" in text and "oracle" in text
    for h in ("none", "mlp", "reweight"):
        assert len(res.reports[h]) == 2 and len(res.choices[h]) == 2
        summ = res.summary[h]
        assert all(
            b is not None and b[0] <= v <= b[1]
            for v, b in zip(summ.metrics["linear"], summ.bounds["linear"], strict=True)
        )
    assert "In short: " in text and "done in" in text
