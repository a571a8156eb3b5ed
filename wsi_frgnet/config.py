"""Configuration as frozen dataclasses: the single source of defaults for library and CLI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")  # see engine.devices.autocast_dtype
GuideMode = Literal["soft", "hard", "none"]
GUIDE_MODES: tuple[str, ...] = ("soft", "hard", "none")
PARTIAL_RULES: tuple[str, ...] = ("haematoxylin", "guide")
GUIDE_SOURCES: tuple[str, ...] = ("luminance", "haematoxylin")  # the image plane the Fourier guide is a high-pass of
# What ``finetune --freeze-all-but`` may leave trainable (see wsi_frgnet.train.finetune.trainable_modules).
FREEZE_CHOICES: tuple[str, ...] = ("guide", "heads", "decoder", "none")

# Encoders (wsi_frgnet.model.backbone): resnet is trained from scratch; efficientnet-lite0 starts
# from ImageNet weights (the training extra) and has fixed level widths.
ENCODERS: tuple[str, ...] = ("resnet", "efficientnet-lite0")
EFFICIENTNET_LITE0_WIDTHS: tuple[int, ...] = (16, 24, 40, 112, 320)

# Per-channel mean / std of RGB in [0, 1] used to normalise network input (H&E-typical values).
DEFAULT_MEAN = (0.70, 0.52, 0.70)
DEFAULT_STD = (0.16, 0.20, 0.15)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an FrGNet.

    Encoder level i has stride 2**(i+1): level 0 (F0) is the stem at stride 2, then one
    residual stage per further level (``encoder`` resnet; efficientnet-lite0 has its own
    levels, ``EFFICIENTNET_LITE0_WIDTHS``, and ignores ``encoder_blocks``). The CPN heads read decoder level 1 (stride 4), the guide
    and refinement heads decoder level 0 (stride 2).
    """

    encoder_widths: tuple[int, ...] = (32, 48, 96, 160, 256)
    encoder_blocks: tuple[int, ...] = (1, 2, 2, 2)
    decoder_widths: tuple[int, ...] = (32, 64, 64, 96, 128)
    head_width: int = 32
    fourier_order: int = 12
    contour_points: int = 64
    refinement_buckets: int = 8
    refinement_iterations: int = 4
    refinement_margin: float = 3.0
    guide: GuideMode = "soft"
    contrastive: bool = True
    projection_dim: int = 128
    encoder: str = "resnet"
    antialias: bool = False  # resnet encoder: a 3x3 binomial blur before every stride-2 step

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, not {self.encoder!r}")
        if self.encoder == "efficientnet-lite0" and tuple(self.encoder_widths) != EFFICIENTNET_LITE0_WIDTHS:
            raise ValueError(f"the efficientnet-lite0 encoder has level widths {EFFICIENTNET_LITE0_WIDTHS}")
        if self.encoder == "efficientnet-lite0" and self.antialias:
            raise ValueError("antialias applies to the resnet encoder only")
        if len(self.encoder_widths) != len(self.encoder_blocks) + 1:
            raise ValueError("encoder_widths needs one entry more than encoder_blocks (the stem)")
        if len(self.decoder_widths) != len(self.encoder_widths):
            raise ValueError("decoder_widths needs one entry per encoder level")
        if len(self.encoder_widths) < 3:
            raise ValueError("the network needs at least levels 0 and 1 plus one deeper level")
        if self.guide not in GUIDE_MODES:
            raise ValueError(f"guide must be one of {GUIDE_MODES}, not {self.guide!r}")

    @property
    def head_stride(self) -> int:
        """Stride (input px per cell) of the score / location / Fourier maps."""
        return 4

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (the deepest stride)."""
        return 2 ** len(self.encoder_widths)

    @property
    def uses_guide(self) -> bool:
        return self.guide != "none"

    @classmethod
    def efficientnet_lite0(cls, **overrides: Any) -> "ModelConfig":
        """The default architecture on an EfficientNet-Lite0 encoder."""
        return cls(**{"encoder": "efficientnet-lite0", "encoder_widths": EFFICIENTNET_LITE0_WIDTHS, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """A very small network for tests and smoke runs (a few thousand parameters)."""
        base = dict(
            encoder_widths=(8, 8, 16, 16),
            encoder_blocks=(1, 1, 1),
            decoder_widths=(8, 16, 16, 16),
            head_width=16,
            fourier_order=6,
            contour_points=32,
            refinement_buckets=4,
            refinement_iterations=2,
            projection_dim=16,
        )
        base.update(overrides)
        return cls(**base)


def default_guide_mode(keep_fraction: float) -> GuideMode:
    """The guide target a training run uses unless told otherwise: the hard (binarised) guide
    when only a share of the nuclei is annotated (METHOD_NOTES.md §4), else the soft one."""
    return "hard" if keep_fraction < 1.0 else "soft"


@dataclass(frozen=True)
class TargetConfig:
    """How label maps become training targets (METHOD_NOTES.md §3)."""

    core_threshold: float = 0.8  # normalised distance to the border >= this: score foreground
    ignore_threshold: float = 0.5  # between this and core_threshold: ignored by the score loss
    min_area: int = 20  # instances smaller than this (px) are ignored, not taught as background
    min_kept_fraction: float = 0.1  # instances cut by a crop to less than this share are ignored
    guide_radius: int = 1  # FFT high-pass radius R (METHOD_NOTES.md §2)
    # The plane the guide is computed on: luminance (the paper's) or haematoxylin optical density.
    guide_source: str = "luminance"
    hard_guide_threshold: float = 0.5
    # Partial labels: which unlabelled cells are never taught as background (train.targets.
    # unlabelled_nucleus_cells): "guide" (the paper's rule, the default: it gave the better PQ at
    # 30 % of the labels, docs/RESULTS.md) or "haematoxylin" (it keeps far more unlabelled nuclei
    # from being taught as background).
    partial_rule: str = "guide"

    def __post_init__(self) -> None:
        if self.partial_rule not in PARTIAL_RULES:
            raise ValueError(f"--partial-rule must be one of {PARTIAL_RULES}, not {self.partial_rule!r}")
        if self.guide_source not in GUIDE_SOURCES:
            raise ValueError(f"--guide-source must be one of {GUIDE_SOURCES}, not {self.guide_source!r}")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the training losses (METHOD_NOTES.md §3)."""

    instance: float = 1.0
    guide: float = 1.0
    contrastive: float = 1.0
    fourier: float = 1.0
    location: float = 1.0
    contour: float = 3.0
    refinement: float = 1.0
    temperature: float = 0.1
    anchors_per_image: int = 64
    negatives_per_image: int = 256
    guide_high: float = 0.7
    guide_low: float = 0.3
    max_proposals: int = 1024  # proposals per batch that enter the contour losses


@dataclass(frozen=True)
class PostprocessConfig:
    """Network output → polygons (METHOD_NOTES.md §5). Thresholds are stored in checkpoints."""

    score_threshold: float = 0.9
    nms_threshold: float = 0.3  # box IoU above which the lower-scoring contour is dropped
    guide_threshold: float = 0.5  # 0 disables the guide filter
    min_area: float = 20.0  # px²; smaller polygons are dropped

    def __post_init__(self) -> None:
        for name in ("score_threshold", "nms_threshold", "guide_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {value}")


class UnknownFields(ValueError):
    """A stored config names fields this version does not have."""


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a config dataclass from a stored dict (lists back to tuples, unknown keys refused
    with :class:`UnknownFields`)."""
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise UnknownFields(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation schedule: AdamW, linear warm-up then cosine decay to 1 % of the rate."""

    epochs: int = 50
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    crop_size: int = 256
    seed: int = 0
    validate_every: int = 1  # epochs between validation passes
    workers: int = 2  # data-loading processes
    precision: str = "auto"  # auto: bf16 where the GPU or CPU computes it natively, else fp32 (engine.devices)
    keep_fraction: float = 1.0  # share of each image's nuclei kept as annotations (weak supervision)
    scanner_augmentation: bool = False  # also train on scanner-like degradations (train.augment.scanner_jitter)
    scale_jitter: float = 0.0  # resample each crop by a factor in [1 - s, 1 + s] (train.crops.RandomCrops)
    fibre_augmentation: bool = False  # draw dark fibres over half the crops' background (train.augment.fibre_artefacts)
    weight_average: float = 0.0  # decay of an exponential moving average of the weights, validated and saved (0: off)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.validate_every < 1:
            raise ValueError("epochs, batch_size and validate_every must be at least 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError("learning_rate must be a positive number")
        if not 0.0 <= self.scale_jitter < 0.75:
            raise ValueError(f"scale_jitter must be in [0, 0.75), not {self.scale_jitter}")
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(f"weight_average must be in [0, 1), not {self.weight_average}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], not {self.keep_fraction}")
        if self.workers < 0 or self.seed < 0:
            raise ValueError("workers and seed must not be negative")
        if self.crop_size < 32 or self.crop_size % 32:
            raise ValueError("crop_size must be a positive multiple of 32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}")


# Tile layout (tile side, context, tiles per batch; working px) where none is given, per device
# type. The network's output at a pixel still moves with image content up to about 200 px away,
# so the context decides how far tiled outlines agree with one pass over the whole region: PQ
# 0.945 with 512/64, 0.987-0.993 with 1024/128, 0.992-0.996 with 1280/160 on four regions of
# the 20x slide of docs/RESULTS.md (benchmarks/seams.py). These recompute the same share of
# context, as 1536/192 does; larger tiles need more memory, so CPUs take 1280 px one at a time
# (peak RSS about 1.9 GB on 2 cores).
TILE_LAYOUTS: dict[str, tuple[int, int, int]] = {"cuda": (1536, 192, 4), "cpu": (1280, 160, 1)}


@dataclass(frozen=True)
class SegmentConfig:
    """How a slide is cut and run. Sizes in working px (the model's resolution).

    ``tile_size``, ``context`` and ``batch_size`` left as None take the device's values
    (``TILE_LAYOUTS``) through :meth:`for_device`, which the slide pipeline calls."""

    tile_size: int | None = None  # network input side
    context: int | None = None  # overlap on every side; nuclei larger than this are warned about
    batch_size: int | None = None
    tissue_mask: bool = True
    colour_alignment: bool = True  # align the slide's mean tissue colour with the model's training data (engine.colour)
    tta: bool = False  # average the network over each tile's four mirror images (engine.mirrors): ~4x network time
    roi: tuple[int, int, int, int] | None = None  # (x, y, width, height) in level-0 px
    roi_geojson: Path | None = None  # QuPath annotations (level-0 px) restricting the work
    subtract_bounds: bool = True  # coordinates relative to OpenSlide's bounds (as QuPath shows them)
    reader_threads: int | None = None  # slide-reading threads; None: one per core
    precision: str = "auto"  # auto: bf16 on CUDA (fp16 without bf16) and on CPUs with native bf16, else fp32
    # The tissue mask is computed on a thumbnail at about this resolution (µm/px), with its longer
    # side between 256 and thumbnail_size px (coarser for slides longer than 8 mm).
    tissue_microns_per_pixel: float = 4.0
    thumbnail_size: int = 2048
    cell_expansion: float = 0.0  # µm each nucleus grows into its cell; 0: nuclei only
    cell_constrain_scale: float = 1.5  # a cell stays inside its nucleus' hull scaled by this; <= 1: no limit
    measure: bool = True  # shape and stain measurements of every object

    def __post_init__(self) -> None:
        if self.tile_size is not None and (self.tile_size % 32 or self.tile_size < 64):
            raise ValueError(f"--tile-size {self.tile_size}: must be a multiple of 32, at least 64")
        if self.context is not None and self.context < 0:
            raise ValueError(f"--context {self.context}: must be >= 0")
        if self.tile_size is not None and self.context is not None and not 2 * self.context < self.tile_size:
            raise ValueError(f"--context {self.context}: must be less than half of --tile-size")
        if not self.tissue_microns_per_pixel > 0 or self.thumbnail_size < 1:
            raise ValueError("the tissue-mask resolution and thumbnail size must be positive")
        if (self.batch_size is not None and self.batch_size < 1) or (self.reader_threads is not None and self.reader_threads < 1):
            raise ValueError("--batch-size and reader threads must be at least 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}")
        if not (math.isfinite(self.cell_expansion) and 0.0 <= self.cell_expansion <= 100.0):
            raise ValueError(f"--cell-expansion {self.cell_expansion}: must be between 0 and 100 µm")
        if not (math.isfinite(self.cell_constrain_scale) and 0.0 <= self.cell_constrain_scale <= 10.0):
            raise ValueError(f"--cell-constrain-scale {self.cell_constrain_scale}: must be between 0 and 10")

    def for_device(self, device_type: str) -> "SegmentConfig":
        """This config with the tile layout completed for a device type ("cpu", "cuda", ...;
        types without a layout of their own take the CPU's). Raises ValueError when the context
        given does not fit the tile side."""
        tile_size, context, batch_size = TILE_LAYOUTS.get(device_type, TILE_LAYOUTS["cpu"])
        if self.tile_size is not None and self.context is None:
            context = min(context, self.tile_size // 8)  # a given tile keeps the layout's share of context
        return replace(
            self,
            tile_size=self.tile_size if self.tile_size is not None else tile_size,
            context=self.context if self.context is not None else context,
            batch_size=self.batch_size if self.batch_size is not None else batch_size,
        )


@dataclass(frozen=True)
class FinetuneConfig:
    """What ``finetune`` samples from a lab's inputs and how it trains on them."""

    keep: str = "guide"  # what stays trainable (FREEZE_CHOICES); the rest is frozen
    # Align the input normalisation with the inputs' colours first (train.finetune.align_input_statistics);
    # None: on for inputs without annotations, off with them.
    input_statistics: bool | None = None
    tiles_per_slide: int = 64  # random tiles per input (seeded)
    tile_size: int = 256  # tile side, px at the model's resolution
    epochs: int = 5
    batch_size: int = 8
    learning_rate: float = 1e-4  # AdamW peak; 1e-3 degraded the guide (docs/RESULTS.md)
    warmup_epochs: float = 0.5
    seed: int = 0
    workers: int = 0  # data-loading processes
    precision: str = "auto"  # as TrainingConfig.precision

    def __post_init__(self) -> None:
        if self.keep not in FREEZE_CHOICES:
            raise ValueError(f"--freeze-all-but {self.keep}: choose one of {', '.join(FREEZE_CHOICES)}")
        if self.tiles_per_slide < 1:
            raise ValueError("--tiles-per-slide must be at least 1")
        self.training()  # the remaining checks

    def training(self) -> TrainingConfig:
        """The optimisation schedule (validation, if any, after the last epoch)."""
        return TrainingConfig(
            epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
            warmup_epochs=self.warmup_epochs, crop_size=self.tile_size, seed=self.seed, workers=self.workers,
            validate_every=self.epochs, precision=self.precision,
        )
