"""Shared fixtures: small synthetic H&E-like images with instance labels, a data folder on
disk and a tiny model trained once per test session through the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from wsi_frgnet.synthetic import synthetic_nuclei

if TYPE_CHECKING:
    from wsi_frgnet.train.loop import TrainingRun

MICRONS_PER_PIXEL = 0.25
MONUSEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg-train"
DATA_IMAGE_SIZE = 96
DATA_IMAGE_COUNT = 3


def synthetic_image(seed: int, size: int | tuple[int, int] = DATA_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 HxWx3, labels int32 HxW): pink background with dark purple elliptical
    nuclei (``wsi_frgnet.synthetic``), small enough for 96 px images. ``size`` is the side of a
    square image or (height, width). Deterministic in ``seed``."""
    height, width = (size, size) if isinstance(size, int) else size
    return synthetic_nuclei(height, width, seed=seed, spacing=30, radius=(4.5, 8.0))


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Instance labels as a 16-bit grey PNG."""
    Image.fromarray(labels.astype("<u2")).save(path)


def write_data_dir(
    root: Path,
    count: int = DATA_IMAGE_COUNT,
    size: int | tuple[int, int] = DATA_IMAGE_SIZE,
    microns_per_pixel: float | None = MICRONS_PER_PIXEL,
    first_seed: int = 0,
) -> Path:
    """A data folder ``root`` with images/img<i>.png, labels/img<i>.png and (unless
    ``microns_per_pixel`` is None) a manifest.json giving every image that pixel size."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"img{index}"
        rgb, labels = synthetic_image(first_seed + index, size)
        Image.fromarray(rgb).save(root / "images" / f"{name}.png")
        write_label_png(root / "labels" / f"{name}.png", labels)
        names.append(name)
    if microns_per_pixel is not None:
        manifest = [{"name": name, "microns_per_pixel": microns_per_pixel} for name in names]
        (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


# Options that keep a CLI training run to a few seconds on a CPU.
TINY_TRAIN_OPTIONS = [
    "--architecture", "tiny",
    "--crop-size", "64",
    "--batch-size", "2",
    "--workers", "0",
    "--device", "cpu",
    "--quiet",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data folder of three labelled 96x96 images with a manifest (0.25 µm/px)."""
    return write_data_dir(tmp_path / "data")


@pytest.fixture(scope="session")
def session_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder shared by the whole session: do not modify it in a test."""
    return write_data_dir(tmp_path_factory.mktemp("session") / "data")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory, session_data_dir: Path) -> Path:
    """A tiny model trained once via ``frgnet-wsi train`` (2 epochs, one validation image);
    its .log.jsonl and .resume.pt lie beside it. Do not modify these files in a test."""
    from click.testing import CliRunner
    from wsi_frgnet.cli.main import main

    out = tmp_path_factory.mktemp("model") / "model.pt"
    result = CliRunner().invoke(
        main,
        ["train", str(session_data_dir), "-o", str(out), "--epochs", "2", "--validation-fraction", "0.34", *TINY_TRAIN_OPTIONS],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert out.is_file()
    return out


def tiny_training_run(output: Path, epochs: int, **training: object) -> TrainingRun:
    """A quiet, fast training set-up of the tiny model (128 px crops, 0.25 µm/px)."""
    from wsi_frgnet.config import ModelConfig, PostprocessConfig, TrainingConfig
    from wsi_frgnet.train.loop import TrainingRun

    settings: dict = dict(epochs=epochs, batch_size=4, crop_size=128, learning_rate=0.01, workers=0, warmup_epochs=1,
                          validate_every=epochs)
    settings.update(training)
    return TrainingRun(
        output=output,
        model_config=ModelConfig.tiny(),
        training=TrainingConfig(**settings),
        postprocess=PostprocessConfig(score_threshold=0.5),
        microns_per_pixel=MICRONS_PER_PIXEL,
        quiet=True,
    )


@pytest.fixture(scope="session")
def overfitted_model(tmp_path_factory: pytest.TempPathFactory):
    """(run, image, summary): a tiny model trained on one 256 px synthetic image of ellipses
    until it segments it well (about 10 s on 2 cores). Its model file is ``run.output``."""
    from wsi_frgnet.train.crops import LabelledArray
    from wsi_frgnet.train.loop import train

    rgb, labels = synthetic_nuclei(256, 256, seed=0)
    image = LabelledArray("ellipses", rgb, labels)
    run = tiny_training_run(tmp_path_factory.mktemp("overfit") / "model.pt", epochs=60)
    summary = train(run, [image], [image])
    return run, image, summary


@pytest.fixture(scope="session")
def model(overfitted_model):
    """The overfitted tiny model, loaded for inference (do not change its settings in a test)."""
    from wsi_frgnet.engine.inference import load_model

    run, _, _ = overfitted_model
    return load_model(run.output)


def raises_one_line_error(path: Path, pattern: str, func, *args, **kwargs):
    """Assert ``func(*args, **kwargs)`` raises InputError matching ``pattern``, with a
    one-line message naming ``path``; returns the error."""
    from wsi_frgnet.errors import InputError

    with pytest.raises(InputError, match=pattern) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return info.value


@pytest.fixture(scope="session")
def he_crops() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb (256, 256, 3) uint8, labels (256, 256) int32): the top-left corners of three
    real H&E images of MoNuSeg with their instance labels, where the data is present (skipped
    otherwise). Real stains, where the Fourier guide is far from perfect."""
    if not (MONUSEG / "images").is_dir():
        pytest.skip("MoNuSeg images not present beside the repository")
    crops = []
    for name in ("TCGA-18-5592-01Z-00-DX1", "TCGA-21-5784-01Z-00-DX1", "TCGA-21-5786-01Z-00-DX1"):
        rgb = np.asarray(Image.open(MONUSEG / "images" / f"{name}.png").convert("RGB"))[:256, :256]
        labels = np.asarray(Image.open(MONUSEG / "labels" / f"{name}.png")).astype(np.int32)[:256, :256]
        crops.append((name, np.ascontiguousarray(rgb), np.ascontiguousarray(labels)))
    return crops
