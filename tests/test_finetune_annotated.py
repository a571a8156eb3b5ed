"""Fine-tuning on annotated inputs: QuPath GeoJSON beside a slide (QuPath's frame, at another
resolution than the model's), reviewed regions, training-data folders, and what is frozen."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import raises_one_line_error, write_data_dir
from slide_factory import write_pyramidal_tiff, write_tiff_with_bounds
from wsi_frgnet.cli.main import main

from wsi_frgnet.engine.inference import load_model
from wsi_frgnet.geometry.outlines import trace_outline
from wsi_frgnet.io.geojson import read_nuclei_and_regions
from wsi_frgnet.model.model_file import file_sha256, load_checkpoint
from wsi_frgnet.synthetic import BACKGROUND_RGB, NUCLEUS_RGB, synthetic_nuclei
from wsi_frgnet.train.finetune import sample_tiles

FAST = ["--tiles-per-slide", "4", "--tile-size", "128", "--epochs", "2", "--batch-size", "2", "--learning-rate", "0.05", "--quiet"]
HEADS = ("score_head.", "location_head.", "fourier_head.", "refinement_head.", "guide_head.", "projector.")

# Discs drawn on a 512 px slide at 0.125 µm/px (half the models' 0.25): centres in image px.
DISC_RADIUS = 14.0
DISC_CENTRES = [(40.25 + 80 * i, 40.75 + 80 * j) for i in range(6) for j in range(6)]
SLIDE_OFFSET = (64, 32)  # OpenSlide bounds of the slide: QuPath's frame starts there


def _circle(centre: tuple[float, float], radius: float, points: int = 96) -> list[list[float]]:
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    ring = [[centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a)] for a in angles]
    return [*ring, ring[0]]


def _feature(ring: list, object_type: str, class_name: str | None = None) -> dict:
    properties: dict = {"objectType": object_type}
    if class_name:
        properties["classification"] = {"name": class_name}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def write_geojson(path, nuclei: list, regions: list = (), nucleus_type: str = "detection"):
    """A QuPath-style export: nuclei (rings, QuPath's frame) as detections, regions as annotations."""
    features = [_feature(ring, nucleus_type) for ring in nuclei] + [_feature(ring, "annotation") for ring in regions]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    return path


def _rectangle(x0, y0, x1, y1) -> list:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.fixture(scope="module")
def disc_slide(tmp_path_factory):
    """A slide with bounds (QuPath frame offset) at 0.125 µm/px, purple discs at DISC_CENTRES."""
    yy, xx = np.mgrid[:512, :512] + 0.5
    inside = np.zeros((512, 512), dtype=bool)
    for cx, cy in DISC_CENTRES:
        inside |= (xx - cx) ** 2 + (yy - cy) ** 2 <= DISC_RADIUS**2
    rgb = np.where(inside[..., None], NUCLEUS_RGB, BACKGROUND_RGB).astype(np.uint8)
    return write_tiff_with_bounds(tmp_path_factory.mktemp("discs") / "discs.scn", rgb, offset=SLIDE_OFFSET, mpp=0.125, levels=2)


def _expected_discs(window: list[int], band: float) -> tuple[np.ndarray, np.ndarray]:
    """(inside a disc, within ``band`` level-0 px of a disc's edge) for each working px of a
    read window: the px centre mapped to level 0 (factor 2), then to QuPath's frame."""
    x, y, width, height = window
    yy, xx = np.mgrid[y:y + height, x:x + width] + 0.5
    image_x, image_y = xx * 2 - SLIDE_OFFSET[0], yy * 2 - SLIDE_OFFSET[1]
    distance = np.min([np.hypot(image_x - cx, image_y - cy) for cx, cy in DISC_CENTRES], axis=0)
    return distance <= DISC_RADIUS, np.abs(distance - DISC_RADIUS) < band


def test_polygons_land_on_their_nuclei_at_the_models_resolution(tmp_path, disc_slide, tiny_model_path):
    slide = tmp_path / "discs.scn"
    slide.symlink_to(disc_slide)
    write_geojson(tmp_path / "discs.geojson", [_circle(c, DISC_RADIUS) for c in DISC_CENTRES])
    sample = sample_tiles([slide], load_model(tiny_model_path), tiles_per_slide=10, tile_size=128, seed=0, microns_per_pixel=None)
    assert sample.annotated and sample.sources == {str(slide): 4}  # 512 level-0 px = 256 working px = 2x2 tiles
    assert sample.annotations[str(slide)]["file"] == str(tmp_path / "discs.geojson")
    for tile, window in zip(sample.tiles, sample.windows[str(slide)]):
        # The polygons (96-gons) follow the circles to 0.01 px: labels are exact but for ties.
        expected, edge = _expected_discs(window, band=0.05)
        assert tile.partial and tile.unknown is None
        assert np.array_equal(tile.labels[~edge] > 0, expected[~edge])
        assert (tile.labels > 0).sum() > 500
        # Labelled pixels are the dark ones of the tile read from the slide (level 1: 2x2 means).
        dark = tile.rgb[..., 1] < (NUCLEUS_RGB[1] + BACKGROUND_RGB[1]) / 2
        expected, edge = _expected_discs(window, band=1.5)
        assert np.array_equal(dark[~edge], expected[~edge])
        assert np.array_equal((tile.labels > 0)[~edge], dark[~edge])
        # One id per disc.
        for label in np.unique(tile.labels[tile.labels > 0]):
            ys, xs = np.nonzero(tile.labels == label)
            assert np.ptp(xs) <= DISC_RADIUS + 1 and np.ptp(ys) <= DISC_RADIUS + 1


def test_reviewed_region_marks_the_rest_unknown(tmp_path, disc_slide, tiny_model_path):
    slide = tmp_path / "discs.scn"
    slide.symlink_to(disc_slide)
    # The left half was reviewed; detections elsewhere are unreviewed and must not be read.
    write_geojson(tmp_path / "discs.geojson", [_circle(c, DISC_RADIUS) for c in DISC_CENTRES], regions=[_rectangle(0, 0, 256, 512)])
    sample = sample_tiles([slide], load_model(tiny_model_path), tiles_per_slide=10, tile_size=128, seed=0, microns_per_pixel=None)
    windows = sample.windows[str(slide)]
    assert len(windows) == 2 and all(x + width <= 32 + 128 for x, _, width, _ in windows)  # the left column only
    assert sample.annotations[str(slide)]["rule"].startswith("reviewed regions")
    for tile, window in zip(sample.tiles, windows):
        expected, edge = _expected_discs(window, band=0.05)
        x, _, width, height = window
        image_x = (np.arange(x, x + width) + 0.5) * 2 - SLIDE_OFFSET[0]
        outside = np.broadcast_to(image_x >= 256, (height, width))
        assert not tile.partial and np.array_equal(tile.unknown, outside)
        assert np.array_equal(tile.labels[~edge] > 0, (expected & ~outside)[~edge])


def test_nuclei_and_regions_are_told_apart(tmp_path):
    nucleus, other, big = _circle((50, 50), 5), _circle((80, 80), 5), _rectangle(0, 0, 200, 200)
    # Detections and an annotation around them: the annotation is the reviewed region.
    nuclei, regions = read_nuclei_and_regions(write_geojson(tmp_path / "a.geojson", [nucleus, other], [big]))
    assert len(nuclei) == 2 and len(regions) == 1 and regions[0].area == 200 * 200
    # Nuclei drawn by hand as annotations hold nothing: nuclei; an empty Region* annotation: a region.
    features = [_feature(nucleus, "annotation"), _feature(other, "annotation"), _feature(_rectangle(300, 0, 400, 100), "annotation", "Region*")]
    (tmp_path / "b.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    nuclei, regions = read_nuclei_and_regions(tmp_path / "b.geojson")
    assert len(nuclei) == 2 and len(regions) == 1 and regions[0].bounds == (300, 0, 400, 100)
    # A nucleus redrawn as an annotation over its detection is still a nucleus, not a region.
    nuclei, regions = read_nuclei_and_regions(write_geojson(tmp_path / "c.geojson", [nucleus, other], [_circle((50, 50), 5.5)]))
    assert len(nuclei) == 3 and not regions


def _annotated_slide(folder, seed: int = 21):
    """A 384 px slide of synthetic nuclei at 0.25 µm/px and its QuPath detections beside it."""
    rgb, labels = synthetic_nuclei(384, 384, seed=seed)
    slide = write_pyramidal_tiff(folder / "lab.tiff", rgb, mpp=0.25, levels=2)
    rings = [trace_outline(labels == i).tolist() for i in range(1, labels.max() + 1)]
    geojson = write_geojson(folder / "lab.geojson", [[*ring, ring[0]] for ring in rings])
    return slide, geojson


@pytest.mark.parametrize("keep", ["heads", "guide"])
def test_annotated_finetune_trains_only_what_it_should(tmp_path, overfitted_model, keep):
    run, _, _ = overfitted_model
    slide, geojson = _annotated_slide(tmp_path)
    output = tmp_path / "tuned.pt"
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(slide), "-o", str(output),
                                       "--freeze-all-but", keep, *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    assert "annotated tiles" in result.stdout
    parent, tuned = load_checkpoint(run.output), load_checkpoint(output)
    changed = {name for name in parent.state_dict if not torch.equal(parent.state_dict[name], tuned.state_dict[name])}
    trainable = ("guide_head.",) if keep == "guide" else HEADS
    frozen = [name for name in parent.state_dict if not name.startswith(trainable)]
    assert any(name.startswith(("encoder.", "decoder.")) and "running_" in name for name in frozen)
    assert not changed & set(frozen)  # weights and BatchNorm statistics of frozen modules, bit for bit
    assert any(name.startswith("score_head.") for name in changed) == (keep == "heads")
    assert any(name.startswith("guide_head.") and name.endswith("weight") for name in changed)
    provenance = tuned.provenance
    assert provenance["trainable"] == keep and provenance["parent_sha256"] == file_sha256(run.output)
    assert provenance["finetune_annotations"][str(slide)]["file"] == str(geojson)
    assert provenance["finetune_inputs"] == {str(slide): 4} and len(provenance["finetune_tiles"][str(slide)]) == 4
    assert load_model(output).predict(np.full((64, 64, 3), 230, np.uint8)) is not None


def test_training_data_folder_as_input(tmp_path, overfitted_model):
    run, _, _ = overfitted_model
    data = write_data_dir(tmp_path / "data", count=2)
    output = tmp_path / "tuned.pt"
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(data), "-o", str(output),
                                       "--freeze-all-but", "decoder", *FAST])
    assert result.exit_code == 0, result.output + result.stderr
    tuned = load_checkpoint(output)
    assert sorted(tuned.provenance["finetune_annotations"]) == [str(data / "images" / f"img{i}.png") for i in range(2)]
    parent = load_checkpoint(run.output)
    assert all(torch.equal(parent.state_dict[n], tuned.state_dict[n]) for n in parent.state_dict if n.startswith("encoder."))
    assert any(not torch.equal(parent.state_dict[n], tuned.state_dict[n]) for n in parent.state_dict if n.startswith("decoder."))


def _one_error_line(result, path) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and str(path) in errors[0], result.stderr
    return errors[0]


def test_annotation_file_that_does_not_match_its_slide(tmp_path, overfitted_model, tiny_model_path):
    run, _, _ = overfitted_model
    slide, geojson = _annotated_slide(tmp_path)
    write_geojson(geojson, [_circle((5000 + 40 * i, 7000), 8) for i in range(3)])
    output = tmp_path / "tuned.pt"
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(slide), "-o", str(output),
                                       "--freeze-all-but", "heads", *FAST])
    assert "annotation file does not match" in _one_error_line(result, geojson)
    assert not output.exists()
    raises_one_line_error(geojson, "does not match", sample_tiles, [slide], load_model(tiny_model_path), 4, 128, 0, None)


def test_inputs_must_be_all_annotated_or_none(tmp_path, overfitted_model):
    run, _, _ = overfitted_model
    slide, _ = _annotated_slide(tmp_path)
    bare = write_pyramidal_tiff(tmp_path / "bare.tiff", synthetic_nuclei(256, 256, seed=3)[0], mpp=0.25, levels=1)
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(slide), str(bare), "-o",
                                       str(tmp_path / "t.pt"), "--freeze-all-but", "heads", *FAST])
    assert "no annotations" in _one_error_line(result, bare)
    (tmp_path / "lab.geojson.gz").write_bytes(b"")
    result = CliRunner().invoke(main, ["finetune", "--model", str(run.output), str(slide), "-o", str(tmp_path / "t.pt"), *FAST])
    assert "ambiguous annotations" in _one_error_line(result, slide)
