"""Self-describing model files: one file holds everything needed to rebuild and run a model.

Contents (all plain types + tensors, so loading uses ``torch.load(weights_only=True)``), format
version 2: ``format``, ``format_version``, ``kind`` ("model"), ``written_by`` (tool version),
``model_config``, ``input`` (``microns_per_pixel``, ``mean``, ``std`` of the network input, and
``data_mean``, the mean RGB of the tissue it was trained on or adapted to, when known),
``postprocess`` (thresholds), ``provenance`` (data, command, parent model) and ``state_dict``.

Older files are read through :data:`MIGRATIONS`, one function per version step, so every model
file ever written keeps loading; a file with a newer version, or with fields this version does
not know, is refused with a message that says so.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsi_frgnet import __version__
from wsi_frgnet.config import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    ModelConfig,
    PostprocessConfig,
    UnknownFields,
    config_from_dict,
    config_to_dict,
)
from wsi_frgnet.errors import InputError
from wsi_frgnet.io.atomic import atomic_write
from wsi_frgnet.model import FrgNet

logger = logging.getLogger(__name__)

FORMAT_NAME = "frgnet-wsi"
FORMAT_VERSION = 2
MODEL_KEYS = frozenset(
    {"format", "format_version", "kind", "written_by", "model_config", "input", "postprocess", "provenance", "state_dict"}
)


def _model_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept the µm/px and the normalisation apart; version 2 groups what describes the
    network's input under ``input`` and records the writing tool (unknown for version 1)."""
    migrated = {key: value for key, value in payload.items() if key not in ("microns_per_pixel", "normalisation")}
    normalisation = payload["normalisation"]
    migrated["input"] = {
        "microns_per_pixel": payload["microns_per_pixel"],
        "mean": normalisation["mean"],
        "std": normalisation["std"],
    }
    migrated.setdefault("written_by", "frgnet-wsi (format 1)")
    return migrated


#: (kind, version) → function turning a payload of that version into the next version's.
MIGRATIONS = {("model", 1): _model_v1_to_v2}


@dataclass
class ModelCheckpoint:
    """A trained model with what inference needs to use it correctly."""

    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    microns_per_pixel: float | None
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    provenance: dict[str, Any] = field(default_factory=dict)
    # Mean RGB (each in [0, 1]) of the tissue the model was trained on (or adapted to): what
    # ``finetune`` aligns a new lab's colours with. None for models that did not record it.
    data_mean: tuple[float, float, float] | None = None
    # Coarsest µm/px the model was trained to work at (training with scale jitter): images and
    # slides coarser than ``microns_per_pixel`` are processed at their own µm/px up to this one
    # instead of being upsampled all the way. None: always at ``microns_per_pixel``.
    coarsest_microns_per_pixel: float | None = None

    def working_microns_per_pixel(self, image_microns_per_pixel: float | None) -> float | None:
        """µm/px the network sees an image of ``image_microns_per_pixel`` at: the model's own,
        or, for a coarser image, the image's own as far as ``coarsest_microns_per_pixel``
        allows. None when neither the image nor the model records its µm/px."""
        if self.microns_per_pixel is None or image_microns_per_pixel is None:
            return self.microns_per_pixel if image_microns_per_pixel is None else image_microns_per_pixel
        coarsest = self.coarsest_microns_per_pixel or self.microns_per_pixel
        return max(self.microns_per_pixel, min(image_microns_per_pixel, coarsest))

    def build_model(self, device: torch.device | str = "cpu") -> FrgNet:
        """The network with these weights for inference: eval mode, on ``device``, channels-last
        (faster convolutions on CPU and GPU)."""
        model = FrgNet(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.to(device).to(memory_format=torch.channels_last).eval()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_payload(path: Path, kind: str, contents: dict[str, Any]) -> None:
    """Write a file of ours of the given kind atomically (the twin of ``read_payload``)."""
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": kind, "written_by": f"frgnet-wsi {__version__}", **contents}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(Path(path), lambda handle: handle.write(buffer.getbuffer()))


def save_checkpoint(path: Path, checkpoint: ModelCheckpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically."""
    contents = {
        "model_config": config_to_dict(checkpoint.model_config),
        "postprocess": config_to_dict(checkpoint.postprocess),
        "input": {"microns_per_pixel": checkpoint.microns_per_pixel, "mean": list(checkpoint.mean), "std": list(checkpoint.std),
                  "data_mean": None if checkpoint.data_mean is None else list(checkpoint.data_mean),
                  "coarsest_microns_per_pixel": checkpoint.coarsest_microns_per_pixel},
        "provenance": checkpoint.provenance,
        "state_dict": {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()},
    }
    write_payload(path, "model", contents)


def read_payload(path: Path, kind: str) -> dict[str, Any]:
    """Load a file of ours of the given kind as a dict; InputError for anything else."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or damaged files
        raise InputError(f"{path}: not a frgnet-wsi file (cannot be loaded: {type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise InputError(f"{path}: not a frgnet-wsi file")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{path}: written by a newer frgnet-wsi (format {version}); please upgrade")
    if payload.get("kind") != kind:
        raise InputError(f"{path}: is a frgnet-wsi {payload.get('kind')!r} file, not a {kind!r} file")
    try:
        while (kind, payload["format_version"]) in MIGRATIONS:
            payload = {**MIGRATIONS[kind, payload["format_version"]](payload), "format_version": payload["format_version"] + 1}
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: damaged frgnet-wsi {kind} file (format {version}, missing {exc})") from exc
    return payload


def load_checkpoint(path: Path) -> ModelCheckpoint:
    """Read a model file written by ``save_checkpoint``."""
    payload = read_payload(path, "model")
    unknown = sorted(set(payload) - MODEL_KEYS)
    if unknown:
        raise InputError(f"{path}: has fields this frgnet-wsi does not know ({', '.join(unknown)}); written by a newer version?")
    try:
        model_config = config_from_dict(ModelConfig, payload["model_config"])
        postprocess = config_from_dict(PostprocessConfig, payload["postprocess"])
    except UnknownFields as exc:
        raise InputError(f"{path}: {exc}; written by a newer frgnet-wsi?") from exc
    try:
        network_input = payload["input"]
        return ModelCheckpoint(
            model_config=model_config,
            postprocess=postprocess,
            state_dict=payload["state_dict"],
            microns_per_pixel=network_input["microns_per_pixel"],
            mean=tuple(network_input["mean"]),
            std=tuple(network_input["std"]),
            provenance=payload.get("provenance", {}),
            data_mean=None if network_input.get("data_mean") is None else tuple(network_input["data_mean"]),
            coarsest_microns_per_pixel=network_input.get("coarsest_microns_per_pixel"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: damaged frgnet-wsi model file ({exc})") from exc
