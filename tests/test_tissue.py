"""Tissue mask on synthetic thumbnails, tile filters, and QuPath GeoJSON regions."""

from __future__ import annotations

import gzip
import json
import logging

import numpy as np
import pytest
import shapely
from conftest import synthetic_image
from shapely import affinity

from wsi_frgnet.engine.tiling import plan_tiles
from wsi_frgnet.engine.tissue import (
    otsu_threshold,
    region_mask_from_geojson,
    tiles_in_polygons,
    tiles_with_tissue,
    tissue_mask,
)
from wsi_frgnet.errors import InputError

GLASS = (243, 243, 241)


def glass(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Near-white background with scanner noise."""
    rng = np.random.default_rng(seed)
    image = np.array(GLASS, dtype=np.float64) + rng.normal(0, 3, size=(height, width, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def test_blank_image_has_no_tissue():
    for image in (glass(120, 160), np.full((50, 70, 3), 255, np.uint8), np.zeros((40, 40, 3), np.uint8)):
        mask = tissue_mask(image)
        assert mask.shape == image.shape[:2] and mask.dtype == bool
        assert not mask.any()
    tiles = plan_tiles((0, 0, 1600, 1200), 256, 32)
    assert tiles_with_tissue(tiles, tissue_mask(glass(120, 160)), 10.0) == []


def test_tissue_image_is_mostly_tissue():
    rgb, _ = synthetic_image(1, (120, 160))
    assert tissue_mask(rgb).mean() > 0.95
    pale = np.clip(glass(80, 80).astype(int) + np.array([-3, -28, -13]), 0, 255).astype(np.uint8)  # faint eosin
    assert tissue_mask(pale).mean() > 0.95


def test_dust_and_transparency_are_not_tissue():
    image = glass(100, 100)
    image[50:52, 30:32] = (80, 40, 140)  # a speck
    assert not tissue_mask(image).any()
    rgba = np.dstack([synthetic_image(2, 64)[0], np.zeros((64, 64), np.uint8)])
    assert not tissue_mask(rgba).any()


def test_half_tissue_half_glass_keeps_the_tissue_tiles():
    thumbnail = glass(100, 160)
    thumbnail[:, :80] = synthetic_image(3, (100, 80))[0]
    mask = tissue_mask(thumbnail)
    assert mask[:, :80].mean() > 0.95
    assert not mask[:, 90:].any()

    downsample = 10.0  # working px per thumbnail px: the region is 1600 x 1000 working px
    tiles = plan_tiles((0, 0, 1600, 1000), 256, 32)  # cores of 192
    kept = tiles_with_tissue(tiles, mask, downsample)
    assert kept == sorted(kept, key=lambda t: t.index)
    for tile in tiles:
        x0, x1 = tile.core[0], tile.core[0] + tile.core[2]
        if x1 <= 800:
            assert tile in kept
        if x0 >= 900:
            assert tile not in kept


def test_mask_frame_downsample_and_origin():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2, 3] = True  # covers working px [30, 40) x [20, 30) at downsample 10
    tiles = plan_tiles((0, 0, 100, 100), 12, 1)  # cores of 10 px, aligned with the mask pixels
    (kept,) = tiles_with_tissue(tiles, mask, 10.0)
    assert kept.core == (30, 20, 10, 10)
    # with the mask's corner at working px (100, 100), nothing of the region is tissue
    assert tiles_with_tissue(tiles, mask, 10.0, mask_origin=(100.0, 100.0)) == []
    (shifted,) = tiles_with_tissue(tiles, mask, 10.0, mask_origin=(-30.0, 0.0))
    assert shifted.core == (0, 20, 10, 10)
    with pytest.raises(ValueError):
        tiles_with_tissue(tiles, mask, 0)


def test_trimmed_reads_cover_the_tissue_and_keep_the_grid_phase():
    mask = np.zeros((100, 160), dtype=bool)  # 10 working px per mask pixel: 1600 x 1000 working px
    mask[:, :40] = True  # tissue fills the first 400 px
    mask[60:62, 100:103] = True  # a speck of tissue inside one core, far from its edges
    tiles = plan_tiles((0, 0, 1600, 1000), 512, 64, trim_to=32)  # cores of 384
    whole = tiles_with_tissue(tiles, mask, 10.0)
    trimmed = tiles_with_tissue(tiles, mask, 10.0, trim_to=32)
    assert [t.index for t in trimmed] == [t.index for t in whole]
    for before, after in zip(whole, trimmed):
        assert after.core == before.core and after.context == before.context == 64
        (x, y, width, height), (x0, y0, width0, height0) = after.read, before.read
        assert (x - x0) % 32 == 0 and (y - y0) % 32 == 0 and width % 32 == 0 and height % 32 == 0
        assert x0 <= x and y0 <= y and x + width <= x0 + width0 and y + height <= y0 + height0
        core_x, core_y, core_width, core_height = before.core
        rows, columns = np.nonzero(mask[core_y // 10 : (core_y + core_height) // 10, core_x // 10 : (core_x + core_width) // 10])
        tissue = (core_x + columns.min() * 10, core_y + rows.min() * 10, core_x + (columns.max() + 1) * 10, core_y + (rows.max() + 1) * 10)
        # the tissue and the context around it (within the untrimmed read) are still read
        assert x <= max(x0, tissue[0] - 64) and y <= max(y0, tissue[1] - 64)
        assert x + width >= min(x0 + width0, tissue[2] + 64) and y + height >= min(y0 + height0, tissue[3] + 64)
    speck = next(t for t in trimmed if t.core[0] <= 1000 < t.core[0] + t.core[2] and t.core[1] <= 600 < t.core[1] + t.core[3])
    assert speck.read[2] * speck.read[3] <= 192 * 192  # 30 x 20 px of tissue, 64 px around it, rounded to 32
    full = [t for t in trimmed if t.core[0] + t.core[2] <= 400]  # cores all tissue: unchanged
    assert full and all(t in whole for t in full)


def test_otsu_threshold_splits_two_modes():
    values = np.concatenate([np.full(100, 0.1), np.full(50, 0.6)])
    assert 0.1 <= otsu_threshold(values) < 0.6
    assert otsu_threshold(np.full(5, 0.3)) == 0.3


# -- GeoJSON regions ------------------------------------------------------------------------

SQUARE = [[[100, 100], [300, 100], [300, 200], [100, 200], [100, 100]]]


def qupath_export() -> dict:
    """As QuPath writes it: Export objects as GeoJSON, two annotations and a point."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "3f3b5a0c-0000-4000-8000-000000000001",
                "geometry": {"type": "Polygon", "coordinates": SQUARE},
                "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}},
            },
            {
                "type": "Feature",
                "id": "3f3b5a0c-0000-4000-8000-000000000002",
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [
                        [[[1000, 1000], [1100, 1000], [1100, 1100], [1000, 1000]]],
                        [
                            [[2000, 0], [2400, 0], [2400, 400], [2000, 400], [2000, 0]],
                            [[2100, 100], [2300, 100], [2300, 300], [2100, 300], [2100, 100]],  # a hole
                        ],
                    ],
                },
                "properties": {"objectType": "annotation", "isLocked": False},
            },
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
            {"type": "Feature", "geometry": None, "properties": {}},
        ],
    }


def test_qupath_feature_collection(tmp_path, caplog):
    path = tmp_path / "roi.geojson"
    path.write_text(json.dumps(qupath_export()), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        polygons = region_mask_from_geojson(path)
    assert "1 Point" in caplog.text
    assert len(polygons) == 3 and all(isinstance(p, shapely.Polygon) for p in polygons)
    assert polygons[0].bounds == (100.0, 100.0, 300.0, 200.0)
    assert polygons[1].area == pytest.approx(5000)
    assert polygons[2].area == pytest.approx(400 * 400 - 200 * 200)  # hole kept
    shifted = region_mask_from_geojson(path, offset=(10, -5))
    assert shifted[0].bounds == (110.0, 95.0, 310.0, 195.0)


def test_other_layouts_and_gzip(tmp_path):
    features = qupath_export()["features"]
    layouts = {
        "list.json": features,  # older QuPath: a bare array of features
        "feature.json": features[0],
        "geometry.json": features[1]["geometry"],
        "collection.json": {"type": "GeometryCollection", "geometries": [features[0]["geometry"]]},
    }
    counts = {"list.json": 3, "feature.json": 1, "geometry.json": 2, "collection.json": 1}
    for name, document in layouts.items():
        path = tmp_path / name
        path.write_text(json.dumps(document), encoding="utf-8")
        assert len(region_mask_from_geojson(path)) == counts[name], name
    gz = tmp_path / "roi.geojson.gz"
    gz.write_bytes(gzip.compress(json.dumps(qupath_export()).encode()))
    assert len(region_mask_from_geojson(gz)) == 3


def test_invalid_polygon_is_repaired(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    path = tmp_path / "bowtie.geojson"
    path.write_text(json.dumps(bowtie), encoding="utf-8")
    polygons = region_mask_from_geojson(path)
    assert len(polygons) == 2 and all(p.is_valid for p in polygons)
    assert sum(p.area for p in polygons) == pytest.approx(50)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "FeatureCollection", "features": []}), "no Polygon"),
        (json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}), "no Polygon"),
        (json.dumps({"hello": "world"}), "not GeoJSON"),
        (json.dumps([1, 2]), "expected GeoJSON objects"),
        (json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1]]]}), "malformed"),
    ],
)
def test_geojson_errors_are_input_errors(tmp_path, content, message):
    path = tmp_path / "roi.geojson"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as caught:
        region_mask_from_geojson(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_tiles_in_polygons():
    factor = 2.0  # level-0 px per working px
    level0 = [shapely.box(0, 0, 400, 400), shapely.box(1200, 800, 1300, 900)]
    working = [affinity.scale(p, 1 / factor, 1 / factor, origin=(0, 0)) for p in level0]  # (0,0,200,200), (600,400,650,450)
    tiles = plan_tiles((0, 0, 800, 600), 120, 10)  # cores of 100
    kept = tiles_in_polygons(tiles, working)
    cores = {t.core[:2] for t in kept}
    # the first box covers exactly the 2 x 2 cores at the top left (touching the third does not count)
    assert cores == {(0, 0), (100, 0), (0, 100), (100, 100), (600, 400)}
    assert [t.index for t in kept] == sorted(t.index for t in kept)
    assert tiles_in_polygons(tiles, []) == []


def test_tissue_rgb_mean_leaves_glass_out():
    from wsi_frgnet.engine.tissue import tissue_rgb_mean

    image = np.full((10, 10, 3), 245, np.uint8)  # glass
    image[:5] = (200, 100, 150)  # tissue
    assert np.allclose(tissue_rgb_mean([image], step=1), (200 / 255, 100 / 255, 150 / 255))
    # Two images pool their tissue pixels.
    other = np.full((10, 10, 3), (100, 50, 50), np.uint8)
    assert np.allclose(tissue_rgb_mean([image, other], step=1), ((50 * 200 + 100 * 100) / 150 / 255, (50 * 100 + 100 * 50) / 150 / 255,
                                                                  (50 * 150 + 100 * 50) / 150 / 255))
    # All glass: the mean of every pixel.
    assert np.allclose(tissue_rgb_mean([np.full((4, 4, 3), 250, np.uint8)], step=1), (250 / 255,) * 3)
