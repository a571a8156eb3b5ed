"""Tests of the ``frgnet-wsi`` command line: guide, train, evaluate, predict and their
user-error handling (one ``Error: ...`` line on stderr, exit status 2, no traceback)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
import torch
from click.testing import CliRunner, Result
from conftest import (
    MICRONS_PER_PIXEL,
    TINY_TRAIN_OPTIONS,
    synthetic_image,
    write_data_dir,
    write_label_png,
)
from PIL import Image
from wsi_frgnet.cli.main import main

from wsi_frgnet import __version__
from wsi_frgnet.config import ModelConfig
from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.model.model_file import load_checkpoint

TINY_CROP = 64
assert TINY_CROP % 32 == 0 and TINY_CROP % ModelConfig.tiny().size_multiple == 0


# ----------------------------------------------------------------------------- helpers


def invoke(*args: object) -> Result:
    """Run ``frgnet-wsi ARGS`` in-process; stdout and stderr are kept apart (click >= 8.2)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"


def assert_user_error(result: Result, *, usage: bool = False, contains: str | None = None) -> str:
    """The command failed cleanly: non-zero exit (2), no traceback, no escaped exception and
    exactly one ``Error...`` line on stderr. For an InputError (``usage`` False) that line
    is the whole of stderr; click usage errors add their Usage/Try lines. Returns the line."""
    details = f"exit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}\nexception: {result.exception!r}"
    assert result.exit_code != 0, details
    assert result.exception is None or isinstance(result.exception, SystemExit), details
    assert result.exit_code == 2, details
    assert "Traceback" not in result.output, details
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert len(errors) == 1, details
    if not usage:
        assert lines == errors, details
    if contains is not None:
        assert contains in errors[0], details
    return errors[0]


def garbage(size: int, seed: int = 0) -> bytes:
    """Fixed (seeded) random bytes: no image format recognises them."""
    return np.random.default_rng(seed).bytes(size)


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in Path(folder).rglob("*"))


def read_log(model_path: Path) -> list[dict]:
    log = model_path.with_name(model_path.stem + ".log.jsonl")
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def save_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def train_args(data: Path, output: Path, epochs: int = 1, *extra: object) -> list[object]:
    return ["train", data, "-o", output, "--epochs", epochs, *TINY_TRAIN_OPTIONS, *extra]


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    """Two 64x64 labelled images (one crop each): the cheapest data that trains."""
    return write_data_dir(tmp_path / "small", count=2, size=64)


# ----------------------------------------------------------------------------- group


def test_help_lists_commands() -> None:
    result = invoke("--help")
    assert_ok(result)
    for name in ("guide", "train", "evaluate", "predict"):
        assert name in result.stdout
    assert invoke("-h").stdout == result.stdout


def test_version() -> None:
    result = invoke("--version")
    assert_ok(result)
    assert "frgnet-wsi" in result.stdout
    assert __version__ in result.stdout


@pytest.mark.parametrize("command", ["guide", "train", "evaluate", "predict"])
def test_command_help(command: str) -> None:
    result = invoke(command, "--help")
    assert_ok(result)
    assert f"{command} [OPTIONS]" in result.stdout


def test_unknown_command_is_usage_error() -> None:
    assert_user_error(invoke("segment"), usage=True)


# ----------------------------------------------------------------------------- guide


def test_guide_writes_bright_nuclei(tmp_path: Path) -> None:
    height, width = 80, 112  # not square: catches a transposed output
    rgb, labels = synthetic_image(3, (height, width))
    image = save_png(tmp_path / "he.png", rgb)
    out = tmp_path / "g.png"
    result = invoke("guide", image, "-o", out)
    assert_ok(result)
    assert str(out) in result.stdout
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.mode == "L"  # 8-bit grey
        assert img.size == (width, height)
        guide = np.asarray(img)
    assert guide.dtype == np.uint8
    inside, outside = guide[labels > 0], guide[labels == 0]
    assert inside.size and outside.size
    assert inside.mean() > outside.mean() + 50
    assert no_temp_files(tmp_path)


def test_guide_missing_image(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    assert_user_error(invoke("guide", missing, "-o", tmp_path / "g.png"), contains=str(missing))
    assert not (tmp_path / "g.png").exists()


def test_guide_garbage_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(garbage(300))
    assert_user_error(invoke("guide", bad, "-o", tmp_path / "g.png"), contains=str(bad))
    assert not (tmp_path / "g.png").exists()


def test_guide_output_folder_missing(tmp_path: Path) -> None:
    image = save_png(tmp_path / "he.png", synthetic_image(0, 32)[0])
    assert_user_error(invoke("guide", image, "-o", tmp_path / "nodir" / "g.png"), contains="nodir")


# ----------------------------------------------------------------------------- train


def test_train_writes_model_log_and_state(tiny_model_path: Path, session_data_dir: Path) -> None:
    folder = tiny_model_path.parent
    assert tiny_model_path.is_file()
    assert (folder / "model.resume.pt").is_file()
    rows = read_log(tiny_model_path)
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert "loss_total" in row and np.isfinite(row["loss_total"])
        assert "val_pq" in row and 0.0 <= row["val_pq"] <= 1.0
    assert no_temp_files(folder)

    checkpoint = load_checkpoint(tiny_model_path)
    assert checkpoint.microns_per_pixel == pytest.approx(MICRONS_PER_PIXEL)
    assert checkpoint.model_config.encoder_widths == ModelConfig.tiny().encoder_widths
    provenance = checkpoint.provenance
    training, validation = provenance["training_images"], provenance["validation_images"]
    assert len(validation) == 1  # round(0.34 * 3)
    assert sorted(training + validation) == ["img0", "img1", "img2"]
    assert provenance["data"] == session_data_dir.name
    assert "command" in provenance
    model = checkpoint.build_model("cpu")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_train_resume_continues(tiny_model_path: Path, session_data_dir: Path, tmp_path: Path) -> None:
    for name in ("model.pt", "model.log.jsonl", "model.resume.pt"):
        shutil.copy2(tiny_model_path.parent / name, tmp_path / name)
    output = tmp_path / "model.pt"
    result = invoke(*train_args(session_data_dir, output, 3, "--validation-fraction", "0.34", "--resume"))
    assert_ok(result)
    rows = read_log(output)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert "val_pq" in rows[-1]
    state = torch.load(tmp_path / "model.resume.pt", map_location="cpu", weights_only=True)
    assert state["epochs_done"] == 3
    load_checkpoint(output)
    assert no_temp_files(tmp_path)


def test_train_resume_without_state(small_data: Path, tmp_path: Path) -> None:
    assert_user_error(invoke(*train_args(small_data, tmp_path / "m.pt", 1, "--resume")), contains="m.resume.pt")


def test_train_validation_name_list(data_dir: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("# held out\nimg1\n\n", encoding="utf-8")
    output = tmp_path / "m.pt"
    result = invoke(*train_args(data_dir, output, 1, "--validation", names))
    assert_ok(result)
    provenance = load_checkpoint(output).provenance
    assert provenance["validation_images"] == ["img1"]
    assert provenance["training_images"] == ["img0", "img2"]
    assert "val_pq" in read_log(output)[0]


def test_train_without_validation_and_mpp_option(small_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "m.pt"
    result = invoke(*train_args(small_data, output, 1, "--mpp", "0.5"))
    assert_ok(result)
    assert "no validation data" in result.stdout
    checkpoint = load_checkpoint(output)
    assert checkpoint.microns_per_pixel == pytest.approx(0.5)  # --mpp beats the manifest
    assert checkpoint.provenance["validation_images"] == []
    assert "val_pq" not in read_log(output)[0]
    assert no_temp_files(tmp_path)


def test_train_fourier_order_option(small_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "m.pt"
    assert_ok(invoke(*train_args(small_data, output, 1, "--fourier-order", "4")))
    checkpoint = load_checkpoint(output)
    assert checkpoint.model_config.fourier_order == 4
    assert load_model(output).network.config.fourier_order == 4


def test_train_tiny_architecture_refuses_another_encoder(small_data: Path, tmp_path: Path) -> None:
    result = invoke(*train_args(small_data, tmp_path / "m.pt", 1, "--encoder", "efficientnet-lite0"))
    assert "--architecture default" in assert_user_error(result, usage=True)
    assert not (tmp_path / "m.pt").exists()


def test_fresh_train_restarts_log(small_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "m.pt"
    assert_ok(invoke(*train_args(small_data, output, 1)))
    assert_ok(invoke(*train_args(small_data, output, 1), "--overwrite"))
    assert [row["epoch"] for row in read_log(output)] == [1]


def test_train_refuses_to_replace_a_model_without_overwrite(small_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "m.pt"
    output.write_bytes(b"precious")
    result = invoke(*train_args(small_data, output, 1))
    assert result.exit_code == 2 and "--overwrite" in result.output and "\n" not in result.output.strip()
    assert output.read_bytes() == b"precious"


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_model_json(tiny_model_path: Path, session_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = invoke("evaluate", session_data_dir, "--model", tiny_model_path, "--json", out, "--device", "cpu", "--quiet")
    assert_ok(result)
    lines = result.stdout.splitlines()
    for key in ("PQ", "DQ", "SQ", "AJI"):
        assert any(line.split()[:1] == [key] for line in lines), result.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["images"]) == {"img0", "img1", "img2"}
    assert report["mean"]["n_images"] == 3
    for key in ("pq", "dq", "sq", "aji"):
        assert 0.0 <= report["mean"][key] <= 1.0
        for scores in report["images"].values():
            assert 0.0 <= scores[key] <= 1.0
    assert no_temp_files(tmp_path)


def test_evaluate_threshold_overrides(tiny_model_path: Path, session_data_dir: Path) -> None:
    result = invoke("evaluate", session_data_dir, "-m", tiny_model_path, "--score-threshold", "0.1",
                    "--nms-threshold", "0.5", "--guide-threshold", "0", "--device", "cpu", "--quiet")
    assert_ok(result)
    assert_user_error(invoke("evaluate", session_data_dir, "-m", tiny_model_path, "--score-threshold", "1.5"), usage=True)


def test_evaluate_guide_baseline(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "guide.json"
    result = invoke("evaluate", data_dir, "--baseline", "guide", "--json", out, "--quiet")
    assert_ok(result)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["images"]) == {"img0", "img1", "img2"}
    # dark ellipses on a flat background: the Fourier guide finds most of them
    assert report["mean"]["pq"] > 0.5
    assert f"PQ      {report['mean']['pq']:.4f}" in result.stdout


def test_evaluate_takes_at_most_one_of_model_and_baseline(tiny_model_path: Path, data_dir: Path) -> None:
    assert_user_error(invoke("evaluate", data_dir, "--model", tiny_model_path, "--baseline", "guide"), usage=True, contains="--model")


def test_commands_default_to_the_shipped_model_and_warn_about_its_training_images(data_dir: Path, tmp_path: Path, caplog) -> None:
    """Without --model, evaluate and predict use the shipped model; evaluate says when images
    were in that model's training set (here: one image renamed to a MoNuSeg name it was trained on)."""
    import logging

    from wsi_frgnet.engine.inference import load_model

    trained_on = load_model().checkpoint.provenance["training_images"][0]
    for suffix in ("images", "labels"):
        (data_dir / suffix / "img0.png").rename(data_dir / suffix / f"{trained_on}.png")
    with caplog.at_level(logging.WARNING):
        result = invoke("evaluate", data_dir, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "1 of 3 images" in caplog.text and trained_on in caplog.text and "default.pt" in caplog.text
    image = save_png(tmp_path / "a.png", synthetic_image(0, 64)[0])
    result = invoke("predict", image, "-o", tmp_path / "out", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a_labels.png").is_file()


def test_predict_resamples_to_the_model_resolution(overfitted_model) -> None:
    """An image at half the model's resolution (0.5 µm/px) is upsampled for the network and
    its outlines come back in the image's own px: about half as large as at 0.25 µm/px."""
    from wsi_frgnet.engine.inference import load_model

    run, image, _ = overfitted_model
    model = load_model(run.output)
    rgb = image.rgb
    small = np.asarray(Image.fromarray(rgb).resize((128, 128), Image.Resampling.BILINEAR))
    native = model.predict(rgb, 0.25)
    resampled = model.predict(small, 0.5)
    assert resampled.shape == (128, 128) and resampled.label_map().shape == (128, 128)
    assert len(native.nuclei) > 5
    assert abs(len(resampled.nuclei) - len(native.nuclei)) <= 0.25 * len(native.nuclei)
    native_area = np.mean([shapely.Polygon(n.polygon).area for n in native.nuclei])
    resampled_area = np.mean([shapely.Polygon(n.polygon).area for n in resampled.nuclei])
    assert 0.18 < resampled_area / native_area < 0.35


# ----------------------------------------------------------------------------- predict


def test_predict_writes_outputs(tiny_model_path: Path, tmp_path: Path) -> None:
    a = save_png(tmp_path / "in" / "a.png", synthetic_image(10, 96)[0])
    b = save_png(tmp_path / "in" / "b.png", synthetic_image(11, (50, 70))[0])  # not a multiple of 16
    out = tmp_path / "out" / "deeper"  # created, parents included
    result = invoke("predict", a, b, "--model", tiny_model_path, "-o", out, "--device", "cpu", "--quiet")
    assert_ok(result)
    assert "2 image(s)" in result.stdout
    for stem, (height, width) in (("a", (96, 96)), ("b", (50, 70))):
        with Image.open(out / f"{stem}_labels.png") as img:
            labels = np.asarray(img)
        assert labels.dtype == np.uint16 and labels.shape == (height, width)
        with Image.open(out / f"{stem}_guide.png") as img:
            assert img.mode == "L" and img.size == (width, height)
        with Image.open(out / f"{stem}_overlay.png") as img:
            assert img.mode == "RGB" and img.size == (width, height)
    assert no_temp_files(out)


def test_predict_tif_labels(tiny_model_path: Path, tmp_path: Path) -> None:
    a = save_png(tmp_path / "a.png", synthetic_image(12, 64)[0])
    out = tmp_path / "out"
    result = invoke("predict", a, "-m", tiny_model_path, "-o", out, "--label-format", "tif", "--device", "cpu", "--quiet")
    assert_ok(result)
    labels = tifffile.imread(out / "a_labels.tif")
    assert labels.shape == (64, 64) and labels.dtype == np.int32
    assert not (out / "a_labels.png").exists()
    assert (out / "a_guide.png").is_file() and (out / "a_overlay.png").is_file()


def test_predict_needs_images(tiny_model_path: Path, tmp_path: Path) -> None:
    assert_user_error(invoke("predict", "-m", tiny_model_path, "-o", tmp_path / "out"), usage=True)


def test_predict_missing_and_garbage_image(tiny_model_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    assert_user_error(invoke("predict", missing, "-m", tiny_model_path, "-o", tmp_path / "out", "--quiet"), contains=str(missing))
    bad = tmp_path / "bad.png"
    bad.write_bytes(garbage(500))
    assert_user_error(invoke("predict", bad, "-m", tiny_model_path, "-o", tmp_path / "out", "--quiet"), contains=str(bad))


def test_predict_output_is_a_file(tiny_model_path: Path, tmp_path: Path) -> None:
    image = save_png(tmp_path / "a.png", synthetic_image(0, 32)[0])
    occupied = tmp_path / "occupied"
    occupied.write_text("x")
    assert_user_error(invoke("predict", image, "-m", tiny_model_path, "-o", occupied, "--quiet"), contains=str(occupied))


def test_predict_output_below_a_file(tiny_model_path: Path, tmp_path: Path) -> None:
    image = save_png(tmp_path / "a.png", synthetic_image(0, 32)[0])
    occupied = tmp_path / "occupied"
    occupied.write_text("x")
    assert_user_error(invoke("predict", image, "-m", tiny_model_path, "-o", occupied / "out", "--quiet"))


# ----------------------------------------------------------------------------- bad data folders


def _missing(tmp: Path, data: Path) -> Path:
    return tmp / "does-not-exist"


def _a_file(tmp: Path, data: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a folder")
    return path


def _no_images_folder(tmp: Path, data: Path) -> Path:
    shutil.rmtree(data / "images")
    return data


def _empty_images(tmp: Path, data: Path) -> Path:
    for path in (data / "images").iterdir():
        path.unlink()
    return data


def _image_without_label(tmp: Path, data: Path) -> Path:
    (data / "labels" / "img1.png").unlink()
    return data


def _label_wrong_size(tmp: Path, data: Path) -> Path:
    write_label_png(data / "labels" / "img1.png", np.ones((40, 56), dtype=np.int32))
    return data


def _garbage_image(tmp: Path, data: Path) -> Path:
    (data / "images" / "img1.png").write_bytes(garbage(2000))
    return data


def _garbage_label(tmp: Path, data: Path) -> Path:
    (data / "labels" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + garbage(200))
    return data


def _bad_manifest(tmp: Path, data: Path) -> Path:
    (data / "manifest.json").write_text("{not json", encoding="utf-8")
    return data


BAD_DATA = {
    "missing folder": (_missing, "does not exist"),
    "folder is a file": (_a_file, "not a directory"),
    "no images/": (_no_images_folder, "images/"),
    "empty images/": (_empty_images, "empty"),
    "image without label": (_image_without_label, "img1"),
    "label of wrong size": (_label_wrong_size, "img1"),
    "garbage image": (_garbage_image, "img1.png"),
    "garbage label": (_garbage_label, "img1.png"),
    "bad manifest": (_bad_manifest, "manifest.json"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_train_bad_data(case: str, data_dir: Path, tmp_path: Path) -> None:
    make, expected = BAD_DATA[case]
    bad = make(tmp_path, data_dir)
    output = tmp_path / "m.pt"
    assert_user_error(invoke(*train_args(bad, output, 1)), contains=expected)
    assert not output.exists()
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("case", [c for c in BAD_DATA if c != "bad manifest"])  # evaluate does not read the manifest
def test_evaluate_bad_data(case: str, data_dir: Path, tmp_path: Path) -> None:
    make, expected = BAD_DATA[case]
    bad = make(tmp_path, data_dir)
    assert_user_error(invoke("evaluate", bad, "--baseline", "guide", "--quiet"), contains=expected)


# ----------------------------------------------------------------------------- bad model files


def _model_missing(tmp: Path, trained: Path) -> Path:
    return tmp / "missing.pt"


def _model_text(tmp: Path, trained: Path) -> Path:
    path = tmp / "text.pt"
    path.write_text("this is not a model\n" * 20)
    return path


def _model_empty(tmp: Path, trained: Path) -> Path:
    path = tmp / "empty.pt"
    path.write_bytes(b"")
    return path


def _model_foreign_torch(tmp: Path, trained: Path) -> Path:
    path = tmp / "foreign.pt"
    torch.save({"a": 1}, path)
    return path


def _model_training_state(tmp: Path, trained: Path) -> Path:
    return trained.with_name(trained.stem + ".resume.pt")


def _model_folder(tmp: Path, trained: Path) -> Path:
    path = tmp / "folder.pt"
    path.mkdir()
    return path


BAD_MODELS = {
    "missing": (_model_missing, "no such file"),
    "text file": (_model_text, "not a frgnet-wsi file"),
    "empty file": (_model_empty, "not a frgnet-wsi file"),
    "foreign torch file": (_model_foreign_torch, "not a frgnet-wsi file"),
    "training state": (_model_training_state, "training-state"),
    "folder": (_model_folder, "not a file"),
}


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_file(case: str, command: str, tiny_model_path: Path, session_data_dir: Path, tmp_path: Path) -> None:
    make, expected = BAD_MODELS[case]
    model = make(tmp_path, tiny_model_path)
    if command == "evaluate":
        args = ["evaluate", session_data_dir, "--model", model, "--quiet"]
    else:
        args = ["predict", session_data_dir / "images" / "img0.png", "--model", model, "-o", tmp_path / "out", "--quiet"]
    line = assert_user_error(invoke(*args), contains=expected)
    assert str(model) in line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- bad options


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_device_cuda_without_cuda(command: str, tiny_model_path: Path, session_data_dir: Path, tmp_path: Path) -> None:
    if command == "train":
        args = ["train", session_data_dir, "-o", tmp_path / "m.pt", "--architecture", "tiny", "--crop-size", TINY_CROP]
    elif command == "evaluate":
        args = ["evaluate", session_data_dir, "-m", tiny_model_path]
    else:
        args = ["predict", session_data_dir / "images" / "img0.png", "-m", tiny_model_path, "-o", tmp_path / "out"]
    assert_user_error(invoke(*args, "--device", "cuda", "--quiet"), contains="CUDA")
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "out").exists()


def test_device_unknown(tiny_model_path: Path, session_data_dir: Path) -> None:
    assert_user_error(invoke("evaluate", session_data_dir, "-m", tiny_model_path, "--device", "gpu0"), contains="--device")


@pytest.mark.parametrize(
    "option, value",
    [("--crop-size", "50"), ("--crop-size", "0"), ("--epochs", "0"), ("--batch-size", "0"), ("--learning-rate", "0"),
     ("--mpp", "-1"), ("--architecture", "huge"), ("--epochs", "two"), ("--fourier-order", "0")],
)
def test_train_bad_option_is_usage_error(option: str, value: str, small_data: Path, tmp_path: Path) -> None:
    args = ["train", small_data, "-o", tmp_path / "m.pt", "--architecture", "tiny", "--crop-size", TINY_CROP, "--quiet"]
    assert_user_error(invoke(*args, option, value), usage=True)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("fraction", ["1.5", "0", "-0.2"])
def test_train_bad_validation_fraction(fraction: str, small_data: Path, tmp_path: Path) -> None:
    result = invoke(*train_args(small_data, tmp_path / "m.pt", 1, "--validation-fraction", fraction))
    assert_user_error(result, contains="--validation-fraction")
    assert not (tmp_path / "m.pt").exists()


def test_train_validation_list_with_unknown_name(small_data: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("img0\nnobody\n", encoding="utf-8")
    assert_user_error(invoke(*train_args(small_data, tmp_path / "m.pt", 1, "--validation", names)), contains="nobody")


def test_train_validation_and_fraction_together(small_data: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("img0\n", encoding="utf-8")
    result = invoke(*train_args(small_data, tmp_path / "m.pt", 1, "--validation", names, "--validation-fraction", "0.5"))
    assert_user_error(result, contains="--validation")


def test_train_output_folder_missing(small_data: Path, tmp_path: Path) -> None:
    output = tmp_path / "nodir" / "m.pt"
    assert_user_error(invoke(*train_args(small_data, output, 1)), contains="nodir")
    assert not output.parent.exists()


def test_train_output_folder_is_a_file(small_data: Path, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.write_text("x")
    assert_user_error(invoke(*train_args(small_data, occupied / "m.pt", 1)), contains=str(occupied))


def test_train_negative_workers(small_data: Path, tmp_path: Path) -> None:
    assert_user_error(invoke(*train_args(small_data, tmp_path / "m.pt", 1, "--workers", "-1")), usage=True)


def test_train_negative_seed(small_data: Path, tmp_path: Path) -> None:
    assert_user_error(invoke(*train_args(small_data, tmp_path / "m.pt", 1, "--seed", "-1")), usage=True)


# ----------------------------------------------------------------------------- atomic output


def test_failed_model_write_leaves_nothing(small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk-full error while the model is written: a clean error, no model, no temp file."""
    import wsi_frgnet.io.atomic

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(wsi_frgnet.io.atomic.os, "fsync", disk_full)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "m.pt"
    assert_user_error(invoke(*train_args(small_data, output, 1)), contains=str(output))
    assert not output.exists()
    assert sorted(p.name for p in out_dir.iterdir()) == []


def test_interrupted_model_write_leaves_nothing(small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the model file is being written: exit 130, no model, no temp file."""
    import wsi_frgnet.io.atomic

    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(wsi_frgnet.io.atomic.os, "fsync", interrupt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "m.pt"
    result = invoke(*train_args(small_data, output, 1))
    assert result.exit_code == 130, (result.output, result.exception)
    assert "Interrupted" in result.stderr and "Traceback" not in result.output
    assert not output.exists()
    assert sorted(p.name for p in out_dir.iterdir()) == []


def test_train_into_read_only_folder(small_data: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    try:
        if os.access(out_dir, os.W_OK):
            pytest.skip("running as root (or similar): a read-only folder stays writable")
        output = out_dir / "m.pt"
        assert_user_error(invoke(*train_args(small_data, output, 1)), contains=str(output))
        assert list(out_dir.iterdir()) == []
    finally:
        out_dir.chmod(0o755)


# ----------------------------------------------------------------------------- the installed script


def test_console_script_error_is_one_line(tmp_path: Path) -> None:
    """The real process (logging configured, no test runner around it): one stderr line, exit 2."""
    script = Path(sys.executable).with_name("frgnet-wsi")
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    command = [str(script)]
    missing = tmp_path / "missing"
    done = subprocess.run(
        [*command, "evaluate", str(missing), "--baseline", "guide", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert [line for line in done.stderr.splitlines() if line.strip()] == [f"Error: {missing}: data folder does not exist"]


@pytest.mark.parametrize(
    ("command", "config", "renamed"),
    [
        ("segment", "SegmentConfig", {"threads": "reader_threads", "bounds_offset": "subtract_bounds"}),
        ("train", "TrainingConfig", {}),
        ("finetune", "FinetuneConfig", {}),
    ],
)
def test_cli_defaults_are_the_config_defaults(command, config, renamed):
    """Every option that sets a config field shows that field's default: one source of truth."""
    import dataclasses

    from wsi_frgnet.cli.main import main

    from wsi_frgnet import config as configs

    defaults = {field.name: field.default for field in dataclasses.fields(getattr(configs, config))}
    checked = 0
    for option in main.get_command(None, command).params:
        field = renamed.get(option.name, option.name)
        if field in defaults:
            assert option.default == defaults[field], (command, option.name)
            checked += 1
    assert checked >= 5


def test_partial_annotations_default_to_the_hard_guide():
    from wsi_frgnet.config import default_guide_mode

    assert default_guide_mode(0.3) == "hard"
    assert default_guide_mode(1.0) == "soft"
