"""Shared fixtures: small synthetic H&E-like images with instance labels, a data folder on
disk and a tiny model trained once per test session through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BACKGROUND_RGB = (235, 200, 225)  # pink (eosin) background
NUCLEUS_RGB = (80, 40, 140)  # dark purple (haematoxylin) nuclei
MICRONS_PER_PIXEL = 0.25
DATA_IMAGE_SIZE = 96
DATA_IMAGE_COUNT = 3


def synthetic_image(seed: int, size: int | tuple[int, int] = DATA_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 HxWx3, labels int32 HxW): a pink background with dark purple, non-overlapping
    ellipses ("nuclei") numbered 1..n in ``labels``, plus mild Gaussian noise. ``size`` is the
    side of a square image or (height, width). Deterministic in ``seed``."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    rgb = np.empty((height, width, 3), dtype=np.float64)
    rgb[:] = BACKGROUND_RGB
    labels = np.zeros((height, width), dtype=np.int32)
    yy, xx = np.mgrid[:height, :width]
    wanted = max(1, (height * width) // 900)
    label = 0
    for _ in range(wanted * 20):
        if label >= wanted:
            break
        ry, rx = rng.uniform(4.5, 8.0, size=2)
        margin = int(np.ceil(max(ry, rx))) + 1
        if height <= 2 * margin or width <= 2 * margin:
            break
        cy = rng.uniform(margin, height - margin)
        cx = rng.uniform(margin, width - margin)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
        # keep a one-pixel gap between nuclei
        grown = (u / (rx + 2)) ** 2 + (v / (ry + 2)) ** 2 <= 1.0
        if (labels[grown] != 0).any():
            continue
        label += 1
        labels[inside] = label
        rgb[inside] = NUCLEUS_RGB
    rgb += rng.normal(0.0, 6.0, size=rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), labels


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
