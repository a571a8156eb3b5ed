"""Whole-image inference: an RGB array in, nuclei (and the predicted guide) out.

For images that fit in memory at once (training crops, validation images, tiles); whole
slides are tiled by the slide pipeline, which calls the same network and post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from wsi_frgnet.config import PostprocessConfig
from wsi_frgnet.engine.colour import align_colours
from wsi_frgnet.engine.decode import decode_nuclei
from wsi_frgnet.engine.devices import autocast_dtype
from wsi_frgnet.engine.mirrors import run_network
from wsi_frgnet.errors import InputError
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.model import FrgNet
from wsi_frgnet.model.model_file import ModelCheckpoint, load_checkpoint
from wsi_frgnet.nucleus import Nucleus


@dataclass
class ImagePrediction:
    """Nuclei of one image (highest score first) and its guide map (H, W) in [0, 1] or None."""

    nuclei: list[Nucleus]
    guide: np.ndarray | None
    shape: tuple[int, int]

    def label_map(self) -> np.ndarray:
        """Instance label map (int32, 0 background); higher-scoring nuclei win overlaps."""
        return polygons_to_label_map([n.polygon for n in self.nuclei], self.shape)


def images_to_tensor(
    images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str
) -> torch.Tensor:
    """(B, H, W, 3) uint8 → normalised (B, 3, H, W) float32 on ``device``, stored channels-last
    as the networks are (METHOD_NOTES §8). To a GPU the bytes go from pinned memory without
    blocking (the uint8 copy is 4x smaller than float)."""
    host = torch.from_numpy(np.require(images, np.uint8, ["C", "W"]))
    if torch.device(device).type == "cuda":
        host = host.pin_memory()
    tensor = host.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return ((tensor - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


def pad_with_glass(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (H, W, 3) uint8 at the bottom / right with white (empty glass, as slide tiles are
    padded outside the slide) up to multiples of ``multiple``."""
    height, width = rgb.shape[:2]
    return np.pad(rgb, ((0, -height % multiple), (0, -width % multiple), (0, 0)), constant_values=255)


@torch.no_grad()
def predict_image(
    model: FrgNet,
    rgb: np.ndarray,
    postprocess: PostprocessConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast_dtype: torch.dtype | None = None,
    tta: bool = False,
) -> ImagePrediction:
    """Segment one (H, W, 3) uint8 image in a single network pass (model in eval mode), or
    with ``tta`` in four, averaged over its mirror images (:mod:`~wsi_frgnet.engine.mirrors`)."""
    device = next(model.parameters()).device
    height, width = rgb.shape[:2]
    tensor = images_to_tensor(pad_with_glass(rgb, model.config.size_multiple)[None], mean, std, device)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        output = run_network(model, tensor, tta)
    nuclei, guide = decode_nuclei(output, 0, model.config, postprocess, valid_size=(height, width))
    if guide is not None:  # stride 2 → image resolution
        full = F.interpolate(torch.from_numpy(guide)[None, None], scale_factor=2, mode="bilinear", align_corners=False)
        guide = full[0, 0, :height, :width].numpy()
    return ImagePrediction(nuclei=nuclei, guide=guide, shape=(height, width))


RESAMPLE_TOLERANCE = 0.05  # relative µm/px difference below which images are not resampled


@dataclass
class LoadedModel:
    """A model ready for inference, with the normalisation and thresholds it was stored with."""

    network: FrgNet
    checkpoint: ModelCheckpoint
    postprocess: PostprocessConfig
    path: Path | None = None  # the model file it was loaded from
    autocast: torch.dtype | None = None  # inference precision of ``predict`` (None: fp32)
    colour_alignment: bool = True  # align each image's colours with the training data's (engine.colour)
    tta: bool = False  # average the network over each image's mirror images (engine.mirrors)

    def normalisation_mean(self, rgb: np.ndarray) -> tuple[float, ...]:
        """The input normalisation mean for an (H, W, 3) uint8 image: the model's own, or with
        ``colour_alignment`` the one that aligns the image's mean tissue colour with the model's
        training data (:mod:`~wsi_frgnet.engine.colour`; models that do not record it: their own)."""
        alignment = align_colours(self.checkpoint.mean, self.checkpoint.data_mean, [rgb]) if self.colour_alignment else None
        return self.checkpoint.mean if alignment is None else alignment.normalisation_mean

    def predict(self, rgb: np.ndarray, microns_per_pixel: float | None = None) -> ImagePrediction:
        """Nuclei of an (H, W, 3) uint8 image, in its own px. ``microns_per_pixel`` (the image's):
        the image is resampled to the model's working µm/px for it
        (``ModelCheckpoint.working_microns_per_pixel``, bilinear) and the nuclei and guide are
        brought back to the image's px, unless the two differ by less than ``RESAMPLE_TOLERANCE``;
        None, or a model that records no µm/px: the image is taken as it is."""
        mean = self.normalisation_mean(rgb)
        working_mpp = self.checkpoint.working_microns_per_pixel(microns_per_pixel)
        scale = 1.0 if microns_per_pixel is None or working_mpp is None else microns_per_pixel / working_mpp
        if abs(scale - 1.0) < RESAMPLE_TOLERANCE:
            return predict_image(self.network, rgb, self.postprocess, mean, self.checkpoint.std, self.autocast, self.tta)
        height, width = rgb.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resampled = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        prediction = predict_image(self.network, resampled, self.postprocess, mean, self.checkpoint.std, self.autocast, self.tta)
        factors = np.array([width / size[0], height / size[1]])
        nuclei = [replace(nucleus, polygon=nucleus.polygon * factors) for nucleus in prediction.nuclei]
        guide = None
        if prediction.guide is not None:
            guide = np.asarray(Image.fromarray(prediction.guide).resize((width, height), Image.Resampling.BILINEAR))
        return ImagePrediction(nuclei=nuclei, guide=guide, shape=(height, width))

    def segment(self, rgb: np.ndarray, microns_per_pixel: float | None = None) -> np.ndarray:
        """Instance label map (H, W) int32 of an RGB image (``predict`` for the µm/px)."""
        return self.predict(rgb, microns_per_pixel).label_map()


def load_model(
    path: Path | None = None,
    device: torch.device | str = "cpu",
    score_threshold: float | None = None,
    nms_threshold: float | None = None,
    guide_threshold: float | None = None,
    precision: str = "fp32",
    colour_alignment: bool = True,
    tta: bool = False,
) -> LoadedModel:
    """Load a model file for inference (None: the model shipped with the package,
    :func:`default_model_path`); thresholds left as None keep the checkpoint's values;
    ``precision`` is that of ``LoadedModel.predict`` (``engine.devices.autocast_dtype``);
    ``colour_alignment``: that of ``LoadedModel.predict`` (``LoadedModel.normalisation_mean``);
    ``tta``: ``LoadedModel.predict`` averages over mirror images (:mod:`~wsi_frgnet.engine.mirrors`)."""
    path = default_model_path() if path is None else Path(path)
    checkpoint = load_checkpoint(path)
    overrides = {
        name: value
        for name, value in (
            ("score_threshold", score_threshold),
            ("nms_threshold", nms_threshold),
            ("guide_threshold", guide_threshold),
        )
        if value is not None
    }
    network = checkpoint.build_model(device)
    dtype = autocast_dtype(precision, next(network.parameters()).device)
    return LoadedModel(network, checkpoint, replace(checkpoint.postprocess, **overrides), path, dtype, colour_alignment, tta)


def default_model_path() -> Path:
    """The model shipped inside the package; InputError when this installation has none."""
    path = Path(__file__).parents[1] / "weights" / "default.pt"
    if not path.is_file():
        raise InputError("no --model given and this installation ships no default model; pass --model PATH")
    return path
