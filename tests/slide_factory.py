"""Writers of small synthetic slides that OpenSlide opens, for tests.

Import from a test with ``from slide_factory import ...`` (pytest's default "prepend" import
mode puts ``tests/`` on ``sys.path``, as it does for ``from conftest import ...``).

Arrays are ``(H, W, 3)`` uint8 RGB (row = y, column = x); sizes are in pixels, µm/px at level 0.
Level ``i`` of every pyramid is level ``i - 1`` halved with :func:`downsample_levels`
(2x2 box mean, odd edges averaged over what exists), so tests can compute the expected pixels.
Tile sides must be multiples of 16 (TIFF and JPEG need it); image sides may be anything,
edge tiles are padded by repeating the last row/column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

__all__ = [
    "position_pattern",
    "downsample_levels",
    "write_pyramidal_tiff",
    "write_aperio_svs",
    "write_tiff_with_bounds",
]


def position_pattern(height: int, width: int) -> np.ndarray:
    """RGB whose pixel at (x, y) encodes its position: R = x % 256, G = y % 256,
    B = 16 * (x // 256) + y // 256 (unique for width, height <= 4096)."""
    yy, xx = np.mgrid[:height, :width]
    rgb = np.stack([xx % 256, yy % 256, (16 * (xx // 256) + yy // 256) % 256], axis=-1)
    return rgb.astype(np.uint8)


def downsample_levels(rgb: np.ndarray, levels: int) -> list[np.ndarray]:
    """``[rgb, rgb/2, rgb/4, ...]`` (``levels`` arrays); each halves the previous one
    (ceil of odd sides) with Pillow's box ``reduce(2)``."""
    out = [np.ascontiguousarray(rgb, dtype=np.uint8)]
    for _ in range(levels - 1):
        out.append(np.asarray(Image.fromarray(out[-1]).reduce(2)))
    return out


def _check(rgb: np.ndarray, tile: int, levels: int) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile side must be a positive multiple of 16, got {tile}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    return rgb


def _tiles(level: np.ndarray, tile: int):
    """Row-major ``tile`` x ``tile`` pieces of ``level``; edge pieces padded by repeating the
    last row/column, so JPEG's 2x2 chroma subsampling does not bleed padding into the image."""
    height, width = level.shape[:2]
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            piece = level[y : y + tile, x : x + tile]
            pad = ((0, tile - piece.shape[0]), (0, tile - piece.shape[1]), (0, 0))
            yield np.pad(piece, pad, mode="edge") if any(p[1] for p in pad) else piece


def _write_level(tif: tifffile.TiffWriter, level: np.ndarray, tile: int, **options) -> None:
    tif.write(
        _tiles(level, tile),
        shape=level.shape,
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        metadata=None,
        **options,
    )


def _compression(name: str) -> dict:
    if name == "jpeg":
        return {"compression": "jpeg", "compressionargs": {"level": 90}}
    return {"compression": name}


def write_pyramidal_tiff(
    path: Path,
    rgb: np.ndarray,
    mpp: float = 0.25,
    levels: int = 3,
    tile: int = 256,
    compression: str = "zlib",
) -> Path:
    """Generic tiled pyramidal BigTIFF (OpenSlide vendor ``generic-tiff``).

    Level 0 is page 0; each reduced level is its own top-level page with ``subfiletype=1``
    (OpenSlide ignores SubIFD pyramids). Resolution in pixels per centimetre, so OpenSlide
    reports ``mpp`` µm/px. ``compression``: "zlib" (lossless), "jpeg" (quality 90), "none", ...
    """
    rgb = _check(rgb, tile, levels)
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, level in enumerate(downsample_levels(rgb, levels)):
            scale = 2**index
            _write_level(
                tif,
                level,
                tile,
                resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)),
                resolutionunit="CENTIMETER",
                subfiletype=1 if index else 0,
                **_compression(compression),
            )
    return path


def write_aperio_svs(
    path: Path, rgb: np.ndarray, mpp: float = 0.25, levels: int = 2, tile: int = 256
) -> Path:
    """Aperio SVS (OpenSlide vendor ``aperio``): JPEG tiles (quality 90), level 0 first
    with the Aperio description carrying ``MPP = mpp``, then the reduced levels, largest
    first. No label/macro images."""
    rgb = _check(rgb, tile, levels)
    path = Path(path)
    height, width = rgb.shape[:2]
    description = (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) JPEG/RGB Q=90|AppMag = 40|MPP = {mpp}"
    )
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for index, level in enumerate(downsample_levels(rgb, levels)):
            _write_level(
                tif,
                level,
                tile,
                description=description if index == 0 else None,
                **_compression("jpeg"),
            )
    return path


_LEICA_XML = """<?xml version="1.0" encoding="utf-8"?>
<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">
  <collection name="synthetic" uuid="00000000-0000-0000-0000-000000000000" sizeX="{cx}" sizeY="{cy}">
    <image name="main" uuid="00000000-0000-0000-0000-000000000001">
      <creationDate>2020-01-01T00:00:00.00Z</creationDate>
      <device model="Leica SCN400;Leica SCN" version="1.5.1.10864 2012/05/10 13:29:07;1.5.1.10804"/>
      <pixels sizeX="{w}" sizeY="{h}">
{dimensions}
      </pixels>
      <view sizeX="{vx}" sizeY="{vy}" offsetX="{ox}" offsetY="{oy}" spacingZ="0"/>
      <scanSettings>
        <objectiveSettings><objective>40</objective></objectiveSettings>
        <illuminationSettings>
          <numericalAperture>0.55</numericalAperture>
          <illuminationSource>brightfield</illuminationSource>
        </illuminationSettings>
      </scanSettings>
    </image>
  </collection>
</scn>"""


def write_tiff_with_bounds(
    path: Path,
    rgb: np.ndarray,
    offset: tuple[int, int],
    margin: tuple[int, int] = (0, 0),
    mpp: float = 0.25,
    levels: int = 2,
    tile: int = 256,
) -> Path:
    """Leica SCN BigTIFF (OpenSlide vendor ``leica``) whose one main image ``rgb`` lies at
    ``offset`` = (x, y) level-0 px inside a larger empty slide; ``margin`` = (x, y) px of
    empty slide right of / below the image.

    OpenSlide then reports ``dimensions == (x + W + margin_x, y + H + margin_y)`` and
    ``openslide.bounds-{x,y,width,height} == (x, y, W, H)``; outside the image it reads
    transparent pixels. Positions are stored in nm, so ``mpp * 1000`` should be an integer.
    Zlib tiles (lossless).
    """
    rgb = _check(rgb, tile, levels)
    path = Path(path)
    height, width = rgb.shape[:2]
    nm = round(mpp * 1000)
    pyramid = downsample_levels(rgb, levels)
    dimensions = "\n".join(
        f'        <dimension sizeX="{lv.shape[1]}" sizeY="{lv.shape[0]}" ifd="{i}"/>'
        for i, lv in enumerate(pyramid)
    )
    xml = _LEICA_XML.format(
        cx=(offset[0] + width + margin[0]) * nm,
        cy=(offset[1] + height + margin[1]) * nm,
        w=width,
        h=height,
        dimensions=dimensions,
        vx=width * nm,
        vy=height * nm,
        ox=offset[0] * nm,
        oy=offset[1] * nm,
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, level in enumerate(pyramid):
            scale = 2**index
            _write_level(
                tif,
                level,
                tile,
                compression="zlib",
                resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)),
                resolutionunit="CENTIMETER",
                description=xml if index == 0 else None,
            )
    return path
