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


# ----------------------------------------------------------------------------- issue 17: output paths

QUICK = ("--metrics", "rankme", "--layers", "1", "--no-progress", "--device", "cpu")


@pytest.mark.parametrize("case", ["missing folder", "a folder", "not a regular file", "plot type"])
def test_a_bad_output_path_is_refused_before_any_work(
    images: Path, tmp_path: Path, case: str
) -> None:
    """0.2 ran the whole sweep, then lost it in a traceback."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "sock").symlink_to("/dev/null")
    flag, path, words = {
        "missing folder": ("--out", tmp_path / "nope" / "r.json", "does not exist"),
        "a folder": ("--out", tmp_path / "dir", "is a folder"),
        "not a regular file": ("--out", tmp_path / "sock", "not a regular file"),
        "plot type": ("--plot", tmp_path / "sweep.xyz", "end the name with"),
    }[case]
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--data", str(images), *QUICK, flag, str(path)
    )
    line = one_error_line(res)
    assert flag in line and words in line
    assert "model:" not in res.stdout and "data:" not in res.stdout  # before any work


def test_store_that_is_a_file_and_demo_out_that_is_a_file(images: Path, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--data", str(images), *QUICK, "--store", str(f)
    )
    assert "--store" in one_error_line(res) and "is a file" in one_error_line(res)
    res = headkit("demo", "--smoke", "--no-progress", "--out", str(f))
    line = one_error_line(res, "demo")
    assert "--out" in line and "is a file" in line


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from headkit.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_store_without_the_space_is_refused_before_the_sweep(
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    code, _, err = _in_process(
        capsys, "sweep", "--model", "timm:resnet10t", "--data", str(images), *QUICK,
        "--store", str(tmp_path / "feats"),
    )  # fmt: skip
    assert code == 2
    assert "--store" in err and "needs about" in err and "MiB free" in err
    assert not (tmp_path / "feats").exists()


def test_a_full_disk_at_the_end_keeps_the_results(
    images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The report cannot be written: the table is printed, the JSON goes to a fallback file
    the one error line names, and nothing half-written is left behind."""
    import errno

    from headkit._app import cli as _cli
    from headkit._app import outputs

    real = _cli.write_text
    out = tmp_path / "out" / "r.json"
    out.parent.mkdir()

    def full(path: str, text: str) -> None:
        if os.path.abspath(path) == str(out):

            def write(tmp: str) -> None:
                with open(tmp, "w") as fh:
                    fh.write(text[:10])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            outputs.write_atomic(path, write)
        real(path, text)

    monkeypatch.setattr(_cli, "write_text", full)
    monkeypatch.chdir(tmp_path)
    code, stdout, err = _in_process(
        capsys, "sweep", "--model", "timm:resnet10t", "--data", str(images), *QUICK,
        "--out", str(out),
    )  # fmt: skip
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("headkit sweep: error: ")]
    assert len(lines) == 1 and "No space left on device" in lines[0]
    saved = lines[0].rsplit("the report was saved to ", 1)[1].strip()
    assert os.path.dirname(saved) == str(tmp_path)
    assert json.loads(Path(saved).read_text())["info"]["n_test"] == 6
    assert "rankme" in stdout.lower() and "best layer" in stdout  # the results were printed
    assert not out.exists() and os.listdir(out.parent) == []  # no half-written file


def test_an_existing_report_is_replaced_with_a_word(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("{}")
    plot = tmp_path / "p.png"
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--data", str(images), *QUICK, "--out", str(out),
        "--plot", str(plot),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"replaced the existing file {str(out)!r}" in res.stderr
    assert res.stderr.count("replaced the existing file") == 1  # the plot was new
    assert json.loads(out.read_text())["info"]["n_train"] == 24
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == ["p.png", "r.json"]  # no temporary file left


@pytest.mark.parametrize(
    "setting",
    ["LC_ALL=C.UTF-8", "LC_ALL=C", "PYTHONIOENCODING=utf-8:strict", "PYTHONIOENCODING=ascii"],
)
def test_non_utf8_file_names_print_in_any_locale(
    images: Path, tmp_path: Path, setting: str
) -> None:
    """0.2 crashed on the "left out" line where stdout is strict UTF-8 (a UTF-8 locale), and
    wrote bytes that are not UTF-8 elsewhere; every line is now valid text in any locale."""
    import shutil

    root = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/d\xe9ta"))
    shutil.copytree(images, root)
    (root / "class0" / os.fsdecode(b"caf\xe9.txt")).write_text("x")
    shutil.copy(root / "class1" / "00.png", root / "class1" / os.fsdecode(b"\xff.png"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("PYTHONIOENCODING", "PYTHONUTF8", "LC_ALL"):
        env.pop(k, None)
    key, value = setting.split("=")
    env[key] = value
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "headkit",
            "sweep",
            "--model",
            "timm:resnet10t",
            "--data",
            os.fsencode(str(root)),
            *QUICK,
        ],
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr.decode("utf-8", "backslashreplace")
    out = res.stdout.decode("utf-8")  # strict: no stray bytes
    assert "caf\\xe9.txt" in out and "d\\xe9ta" in out
    assert "data: 31 images" in out


def test_links_and_hidden_files_in_the_sweep(images: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(images, root)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "class0" / ".DS_Store").write_bytes(b"\x00")
    res = headkit("sweep", "--model", "timm:resnet10t", "--data", str(root), *QUICK)
    assert res.returncode == 0, res.stderr
    assert "data: 30 images, 3 classes" in res.stdout
    assert "loop/" in res.stdout and "1 hidden: " in res.stdout


def test_16_bit_grey_images_are_scaled_and_said_once(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    root = tmp_path / "d"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(8):
            a = (g.random((24, 24)) * 8000 + 20000 * c).astype(np.uint16)
            Image.fromarray(a).save(root / f"c{c}" / f"{k}.png")
    res = headkit("sweep", "--model", "timm:resnet10t", "--data", str(root), *QUICK)
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stdout.splitlines() if "1/65535" in ln]
    assert said == ["images: converted 24 16-bit grey images (I;16) at 1/65535 scale"]


# ----------------------------------------------------------------------------- checkpoints


def test_a_backbone_saved_without_its_classifier_loads(images: Path, tmp_path: Path) -> None:
    """timm's num_classes=0 (the docs' example): 0.2 refused it without --non-strict."""
    b = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    ckpt = tmp_path / "b.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in b.state_dict().items()}}, ckpt)
    res = headkit(
        "sweep", "--model", "timm:resnet10t", "--checkpoint", str(ckpt), "--data", str(images),
        *QUICK,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "the checkpoint has no classifier: fc removed from the model" in res.stdout


def _wrap(sd: dict[str, torch.Tensor], how: str) -> dict[str, object]:
    if how == "plain":
        return dict(sd)
    if how in ("module.", "_orig_mod.", "module._orig_mod."):
        return {how + k: v for k, v in sd.items()}
    if how == "lightning":
        return {"state_dict": {f"model.backbone.{k}": v for k, v in sd.items()}, "epoch": 3}
    assert how == "model"
    return {"model": dict(sd), "optimizer": {"lr": 0.1}}


def _timm_pair() -> tuple[nn.Module, nn.Module, nn.Module]:
    return (
        timm.create_model("resnet10t", num_classes=0),
        timm.create_model("resnet10t"),
        timm.create_model("resnet10t"),
    )


def _tv_pair() -> tuple[nn.Module, nn.Module, nn.Module]:
    tv = pytest.importorskip("torchvision")
    src = tv.models.mobilenet_v3_small()
    src.classifier = nn.Identity()
    return src, tv.models.mobilenet_v3_small(), tv.models.mobilenet_v3_small()


def _hf_pair() -> tuple[nn.Module, nn.Module, nn.Module]:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8,
    )  # fmt: skip
    return (
        transformers.ViTModel(cfg, add_pooling_layer=False),
        transformers.ViTModel(cfg),
        transformers.ViTModel(cfg),
    )


from torch import nn  # noqa: E402

from headkit import HeadkitError  # noqa: E402


@pytest.mark.parametrize(
    "how", ["plain", "module.", "_orig_mod.", "module._orig_mod.", "lightning", "model"]
)
@pytest.mark.parametrize("lib", ["timm", "torchvision", "hf"])
def test_load_checkpoint_of_a_backbone_without_classifier(lib: str, how: str) -> None:
    """Every wrapper layout, with the classifier absent: the classifier is removed (said), the
    rest loads strictly and the model computes the source's features."""
    from headkit import load_checkpoint

    torch.manual_seed(0)
    src, dst, keep = {"timm": _timm_pair, "torchvision": _tv_pair, "hf": _hf_pair}[lib]()
    rep = load_checkpoint(dst, _wrap(src.state_dict(), how))
    assert rep.removed and "no classifier" in str(rep)
    assert not rep.missing and not rep.unexpected
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = src.eval()(x), dst.eval()(x)
    if lib == "hf":
        a, b = a.last_hidden_state, b.last_hidden_state
        assert dst.pooler is None
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    # the classifier stays where the checkpoint has one; drop_classifier=False keeps the error
    assert load_checkpoint(keep, _wrap(keep.state_dict(), how)).removed == ""
    with pytest.raises(HeadkitError, match="missing"):
        load_checkpoint(keep, _wrap(src.state_dict(), how), drop_classifier=False)


def test_a_partial_classifier_is_not_removed() -> None:
    from headkit import load_checkpoint

    m = timm.create_model("resnet10t")
    sd = {k: v for k, v in m.state_dict().items() if k != "fc.bias"}
    with pytest.raises(HeadkitError, match=r"fc\.bias"):
        load_checkpoint(timm.create_model("resnet10t"), sd)


def _doc_checkpoint_cases() -> list[tuple[str, str, str]]:
    """``(page, python block that saves FILE, headkit command with --checkpoint FILE)``."""
    import re
    import shlex

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    cases = []
    blocks = {p: re.findall(r"```(\w+)\n(.*?)```", p.read_text(), flags=re.S) for p in pages}
    saves: dict[str, str] = {}  # a file name -> the block that saves it (any page)
    for page in pages:
        for lang, code in blocks[page]:
            if lang in ("python", "py"):
                for name in re.findall(r"torch\.save\([^\n]*,\s*[\"']([^\"']+)[\"']\)", code):
                    saves.setdefault(name, code)
    for page in pages:
        for lang, code in blocks[page]:
            if lang not in ("bash", "sh", "shell", "console"):
                continue
            for line in re.sub(r"\\\n\s*", " ", code).splitlines():
                if line.strip().startswith("headkit ") and "--checkpoint" in line:
                    args = shlex.split(line)
                    name = args[args.index("--checkpoint") + 1]
                    assert name in saves, f"{page.name}: no docs block saves {name} for `{line}`"
                    cases.append((page.name, saves[name], line.strip()))
    return cases


DOC_CASES = _doc_checkpoint_cases()


def test_the_docs_have_checkpoint_examples() -> None:
    assert any(page == "examples.md" for page, _, _ in DOC_CASES)


@pytest.mark.parametrize(("page", "code", "cmd"), DOC_CASES, ids=[c[2][:50] for c in DOC_CASES])
def test_documented_checkpoint_example_runs(
    page: str, code: str, cmd: str, tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block that saves the checkpoint, run as written, then the command beside it."""
    import shlex
    import shutil

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, f"{page} (checkpoint block)", "exec"), {"__name__": "__main__"})
    shutil.copytree(images, tmp_path / "images")
    res = headkit(*shlex.split(cmd)[1:], "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, (cmd, res.stdout, res.stderr)
    assert "checkpoint: loaded" in res.stdout
