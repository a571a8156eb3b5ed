"""What segment writes for QuPath users: measured nuclei or cells, the table, the QC picture and
the run report (wsi_frgnet.engine.objects, cells, measurements, table, qc, report)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from qupath_contract import assert_qupath_valid, overlapping_pairs
from slide_factory import write_pyramidal_tiff
from wsi_frgnet.cli.main import main

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.cells import cell_regions
from wsi_frgnet.engine.measurements import (
    intensity_measurements,
    shape_measurements,
    stain_densities,
)
from wsi_frgnet.engine.pipeline import segment_slide
from wsi_frgnet.io.geojson import read_features
from wsi_frgnet.synthetic import synthetic_nuclei

TILES = SegmentConfig(tile_size=128, context=32, batch_size=3)


@pytest.fixture(scope="module")
def slide(tmp_path_factory, model) -> Path:
    """A 384 x 512 px pyramidal TIFF of tightly packed synthetic nuclei at 0.25 µm/px."""
    rgb, _ = synthetic_nuclei(384, 512, seed=12, spacing=24, radius=(6.0, 10.0))
    return write_pyramidal_tiff(tmp_path_factory.mktemp("slide") / "slide.tiff", rgb, mpp=0.25, levels=2)


# ----------------------------------------------------------------------------- measurements


def test_shape_measurements_of_known_shapes():
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    circle = shapely.Polygon(np.c_[50 + 10 * np.cos(t), 50 + 10 * np.sin(t)])
    ellipse = shapely.affinity.rotate(shapely.Polygon(np.c_[10 * np.cos(t), 5 * np.sin(t)]), 30)
    square = shapely.box(0, 0, 4, 4)
    values = shape_measurements(np.array([circle, ellipse, square], dtype=object), 0.5)
    np.testing.assert_allclose(values["Area µm^2"], [np.pi * 25, np.pi * 12.5, 4.0], rtol=1e-3)
    np.testing.assert_allclose(values["Length µm"], [np.pi * 10, 24.22, 8.0], rtol=1e-3)
    np.testing.assert_allclose(values["Circularity"], [1.0, 0.8405, np.pi / 4], atol=1e-3)
    np.testing.assert_allclose(values["Solidity"], [1.0, 1.0, 1.0], atol=1e-3)
    np.testing.assert_allclose(values["Max diameter µm"], [10.0, 10.0, 2 * np.sqrt(2)], rtol=1e-3)
    np.testing.assert_allclose(values["Min diameter µm"], [10.0, 5.0, 2.0], rtol=1e-3)
    np.testing.assert_allclose(values["Eccentricity"], [0.0, np.sqrt(0.75), 0.0], atol=1e-3)
    in_px = shape_measurements(np.array([square], dtype=object), None)
    assert in_px["Area px^2"][0] == 16.0 and in_px["Length px"][0] == 16.0


def test_stain_densities_and_their_statistics_per_label():
    rgb = np.full((6, 6, 3), 255, np.uint8)
    rgb[1:3, 1:3] = (80, 40, 140)  # haematoxylin-like purple
    rgb[4:6, 4:6] = (240, 150, 200)  # eosin-like pink
    densities = stain_densities(rgb)
    assert densities.shape == (2, 6, 6) and np.allclose(densities[:, 0, 0], 0.0)  # white: no stain
    assert densities[0, 1, 1] > 3 * densities[1, 1, 1]  # purple: mostly haematoxylin
    assert densities[1, 5, 5] > densities[0, 5, 5]  # pink: mostly eosin
    labels = np.zeros((6, 6), np.int64)
    labels[1:3, 1:3], labels[4:6, 4:6], labels[0, 5] = 1, 2, 4  # label 3: no pixel
    values = intensity_measurements(densities, labels, 4, "Nucleus: ")
    np.testing.assert_allclose(values["Nucleus: Hematoxylin: Mean"][:2], [densities[0, 1, 1], densities[0, 5, 5]], rtol=1e-6)
    assert values["Nucleus: Hematoxylin: Std.Dev."][0] == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(values["Nucleus: Eosin: Max"][2]) and values["Nucleus: Eosin: Max"][3] == pytest.approx(0.0, abs=1e-6)


def test_cells_stop_where_neighbours_meet_and_at_the_constrain_scale():
    nuclei = np.zeros((40, 80), np.int32)
    nuclei[18:22, 10:14] = 1  # two small nuclei 30 px apart
    nuclei[18:22, 40:44] = 2
    cells = cell_regions(nuclei, 20.0)
    assert (cells[20, 15:27] == 1).all() and (cells[20, 28:40] == 2).all()  # the boundary is half-way
    assert cells[20, 0] == 1 and cells[20, 79] == 0  # within 20 px of nucleus 1; beyond reach of 2
    hulls = [shapely.box(10, 18, 14, 22), shapely.box(40, 18, 44, 22)]
    constrained = cell_regions(nuclei, 20.0, hulls, constrain_scale=2.0)  # hulls of 8 x 8 px at most
    assert (constrained == 1).sum() == 64 and (constrained[nuclei == 1] == 1).all()


# ----------------------------------------------------------------------------- on a slide


def test_cells_on_a_slide_are_one_per_nucleus_inside_and_never_overlap(tmp_path, model, slide):
    output, table = tmp_path / "cells.geojson", tmp_path / "cells.csv"
    nuclei_only = segment_slide(slide, model, TILES, tmp_path / "nuclei.geojson", quiet=True)
    config = SegmentConfig(tile_size=128, context=32, batch_size=3, cell_expansion=3.0)
    summary = segment_slide(slide, model, config, output, quiet=True, table=table)
    assert summary.nuclei == nuclei_only.nuclei > 50
    assert_qupath_valid(output, object_type="cell")
    features = read_features(output)
    nuclei = [shapely.geometry.shape(f["nucleusGeometry"]) for f in features]
    cells = [shapely.geometry.shape(f["geometry"]) for f in features]
    assert overlapping_pairs(output, "geometry") == [] and overlapping_pairs(output, "nucleusGeometry") == []
    outside = [(i, nucleus.difference(cell).area, cell.is_valid) for i, (nucleus, cell) in enumerate(zip(nuclei, cells)) if not cell.covers(nucleus)]
    assert outside == [], outside  # also after rounding to 0.01 px
    assert np.mean([c.area for c in cells]) > 1.5 * np.mean([n.area for n in nuclei])  # they did grow
    # The same nuclei as without cells, and their ids (cells wait for their neighbours: another order).
    assert sorted(f["id"] for f in features) == sorted(f["id"] for f in read_features(tmp_path / "nuclei.geojson"))
    measurements = features[0]["properties"]["measurements"]
    assert len(measurements) >= 10
    for name in ("Nucleus: Area µm^2", "Cell: Area µm^2", "Nucleus/Cell area ratio", "Nucleus: Hematoxylin: Mean",
                 "Cytoplasm: Eosin: Mean", "Cell: Hematoxylin: Max", "Nucleus: Circularity"):
        assert isinstance(measurements[name], float), name
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert len(rows) == len(features) and rows[0]["Object type"] == "cell"
    assert float(rows[0]["Cell: Area µm^2"]) == pytest.approx(measurements["Cell: Area µm^2"], rel=1e-3)


def test_nuclei_on_a_slide_carry_shape_and_stain_measurements(tmp_path, model, slide):
    output = tmp_path / "nuclei.geojson"
    segment_slide(slide, model, TILES, output, quiet=True)
    features = read_features(output)
    measured = features[len(features) // 2]["properties"]["measurements"]
    assert {"Area µm^2", "Length µm", "Circularity", "Solidity", "Max diameter µm", "Min diameter µm", "Eccentricity",
            "Hematoxylin: Mean", "Hematoxylin: Std.Dev.", "Hematoxylin: Min", "Hematoxylin: Max", "Eosin: Mean"} <= set(measured)
    polygon = shapely.geometry.shape(features[len(features) // 2]["geometry"])
    assert measured["Area µm^2"] == pytest.approx(polygon.area * 0.25**2, rel=0.01)  # 0.25 µm/px
    assert measured["Hematoxylin: Mean"] > 0.3  # the synthetic nuclei are dark purple


def test_run_report_and_qc_picture(tmp_path, model, slide):
    output = tmp_path / "out.geojson.gz"
    segment_slide(slide, model, TILES, output, quiet=True, qc=True)
    report = json.loads((tmp_path / "out.run.json").read_text())
    assert report["tool"].startswith("frgnet-wsi ") and report["model"]["file"] == "model.pt"
    assert len(report["model"]["sha256"]) == 64 and report["slide"]["microns_per_pixel"] == 0.25
    assert report["objects"] == len(read_features(output)) and report["options"]["tile_size"] == 128
    assert report["outputs"] == {"geojson": "out.geojson.gz", "table": None, "qc_picture": "out.qc.png"}
    from PIL import Image

    picture = np.asarray(Image.open(tmp_path / "out.qc.png"))
    assert picture.ndim == 3 and picture.shape[0] >= 256 and picture.shape[1] > picture.shape[0]
    assert (np.abs(picture.astype(int) - (0, 255, 0)).sum(axis=2) == 0).sum() > 100  # outlines drawn in green


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--cell-expansion", "-1"], "--cell-expansion"),
        (["--cell-expansion", "nan"], "--cell-expansion"),
        (["--cell-constrain-scale", "50"], "--cell-constrain-scale"),
        (["--table", "rows.txt"], "--table"),
    ],
)
def test_bad_values_of_the_new_options_are_one_line_errors(tmp_path, slide, overfitted_model, arguments, message):
    run, _, _ = overfitted_model
    result = CliRunner().invoke(main, ["segment", str(slide), "-o", str(tmp_path / "x.geojson"), "-m", str(run.output), "-q", *arguments])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "x.geojson").exists()


def test_cli_writes_cells_table_qc_and_report(tmp_path, slide, overfitted_model):
    run, _, _ = overfitted_model
    result = CliRunner().invoke(main, ["segment", str(slide), "-o", str(tmp_path / "s.geojson"), "-m", str(run.output), "-q",
                                       "--cell-expansion", "2", "--table", str(tmp_path / "s.csv"), "--qc", "--tile-size", "128",
                                       "--context", "32"])
    assert result.exit_code == 0, result.output
    assert "cells" in result.output
    assert {p.name for p in tmp_path.iterdir()} == {"s.geojson", "s.csv", "s.qc.png", "s.run.json"}
