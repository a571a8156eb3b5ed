"""Whole-slide segmentation end to end: generated slides in, QuPath GeoJSON out."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from qupath_contract import assert_qupath_valid, overlapping_pairs
from slide_factory import write_aperio_svs, write_pyramidal_tiff, write_tiff_with_bounds
from wsi_frgnet.cli.main import main

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine import devices, pipeline
from wsi_frgnet.engine.pipeline import segment_slide
from wsi_frgnet.engine.planning import tissue_thumbnail_size
from wsi_frgnet.errors import InputError
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.geometry.raster import polygons_to_label_map
from wsi_frgnet.io.geojson import read_features
from wsi_frgnet.synthetic import synthetic_nuclei

CMU_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
SMALL_TILES = SegmentConfig(tile_size=128, context=32, batch_size=3)


@pytest.fixture(scope="module")
def slide_image():
    """A 384 x 512 synthetic H&E image at the model's 0.25 µm/px, and its labels."""
    return synthetic_nuclei(384, 512, seed=11)


def _label_map(path: Path, shape: tuple[int, int], offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    polygons = [np.asarray(f["geometry"]["coordinates"][0]) - np.asarray(offset) for f in read_features(path)]
    return polygons_to_label_map(polygons, shape)


def test_pyramidal_tiff_gives_every_nucleus_once_in_place(tmp_path, model, slide_image):
    rgb, labels = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=3)
    summary = segment_slide(slide, model, SMALL_TILES, tmp_path / "nuclei.geojson", quiet=True)
    assert_qupath_valid(tmp_path / "nuclei.geojson")
    assert summary.nuclei == len(read_features(tmp_path / "nuclei.geojson"))
    scores = score_instances(labels, _label_map(tmp_path / "nuclei.geojson", labels.shape))
    assert scores.pq >= 0.8, scores
    assert scores.false_positives + scores.false_negatives <= 0.05 * labels.max()


def test_aperio_svs_and_gzip_output(tmp_path, model, slide_image):
    rgb, labels = slide_image
    slide = write_aperio_svs(tmp_path / "slide.svs", rgb, mpp=0.25, levels=2)
    output = tmp_path / "nuclei.geojson.gz"
    segment_slide(slide, model, SMALL_TILES, output, quiet=True)
    assert_qupath_valid(output)
    scores = score_instances(labels, _label_map(output, labels.shape))
    assert scores.pq >= 0.75, scores  # JPEG tiles: a little below the lossless slide


def test_small_tiles_and_one_big_tile_give_the_same_nuclei(tmp_path, model, slide_image):
    rgb, _ = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    segment_slide(slide, model, SMALL_TILES, tmp_path / "small.geojson", quiet=True)
    segment_slide(slide, model, SegmentConfig(tile_size=640, context=64), tmp_path / "big.geojson", quiet=True)
    small = _label_map(tmp_path / "small.geojson", rgb.shape[:2])
    big = _label_map(tmp_path / "big.geojson", rgb.shape[:2])
    agreement = score_instances(big, small)
    assert agreement.dq >= 0.99, agreement
    assert agreement.pq >= 0.97, agreement


def test_edge_tiles_read_less_and_batch_with_whole_ones(tmp_path, model, slide_image):
    # 370 x 490 px: the last row and column of 64 px cores are cut, so their tiles read less
    # than 128 px and share batches of 3 with whole tiles.
    rgb = np.ascontiguousarray(slide_image[0][:370, :490])
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    segment_slide(slide, model, SMALL_TILES, tmp_path / "tiled.geojson", quiet=True)
    whole = model.predict(rgb).label_map()
    agreement = score_instances(whole, _label_map(tmp_path / "tiled.geojson", rgb.shape[:2]))
    assert agreement.dq >= 0.99 and agreement.pq >= 0.97, agreement


def test_network_streams_do_not_change_the_output(tmp_path, model, slide_image, monkeypatch):
    # Batches run on several CPU streams come back in tile order: the file is byte-identical.
    rgb, _ = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    outputs = {}
    for shares in ([1], [1, 1, 1]):
        monkeypatch.setattr(pipeline, "network_thread_shares", lambda device, shares=shares: shares)
        output = tmp_path / f"{len(shares)}.geojson"
        segment_slide(slide, model, SMALL_TILES, output, quiet=True)
        outputs[len(shares)] = output.read_bytes()
    assert len(read_features(tmp_path / "1.geojson")) > 10
    assert outputs[1] == outputs[3]


def test_cpu_cores_are_shared_among_at_most_four_streams(monkeypatch):
    for cores, expected in ((1, [1]), (2, [1, 1]), (7, [2, 2, 2, 1]), (16, [4, 4, 4, 4])):
        monkeypatch.setattr(torch, "get_num_threads", lambda cores=cores: cores)
        assert devices.network_thread_shares(torch.device("cpu")) == expected
        assert devices.network_thread_shares(torch.device("cuda")) == [cores]


def test_segment_agrees_with_whole_image_inference(tmp_path, model, slide_image):
    rgb, _ = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    segment_slide(slide, model, SegmentConfig(tile_size=640, context=64), tmp_path / "one.geojson", quiet=True)
    whole = model.predict(rgb).label_map()
    agreement = score_instances(whole, _label_map(tmp_path / "one.geojson", rgb.shape[:2]))
    assert agreement.pq >= 0.99, agreement


def test_coordinates_follow_bounds_offset_and_resolution(tmp_path, model):
    # The slide is scanned at twice the model's resolution (0.125 µm/px): nuclei are twice as
    # large in level-0 px, the pipeline reads level 1 and maps results back to level 0.
    rgb, labels = synthetic_nuclei(384, 384, seed=4)
    big_rgb = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)
    big_labels = np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1)
    slide = write_tiff_with_bounds(tmp_path / "slide.scn", big_rgb, offset=(64, 32), margin=(32, 16), mpp=0.125, levels=3)
    config = SegmentConfig(tile_size=128, context=32, tissue_mask=False)
    segment_slide(slide, model, config, tmp_path / "qupath.geojson", quiet=True)
    scores = score_instances(big_labels, _label_map(tmp_path / "qupath.geojson", big_labels.shape))
    assert scores.pq >= 0.75, scores
    # Without the bounds offset, coordinates are absolute level-0 px of the slide.
    segment_slide(slide, model, SegmentConfig(tile_size=128, context=32, tissue_mask=False, subtract_bounds=False),
                  tmp_path / "absolute.geojson", quiet=True)
    shifted = _label_map(tmp_path / "absolute.geojson", big_labels.shape, offset=(64, 32))
    assert score_instances(big_labels, shifted).pq >= 0.75


def test_roi_restricts_the_work(tmp_path, model, slide_image):
    rgb, _ = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    roi = (100, 80, 200, 150)
    config = SegmentConfig(tile_size=128, context=32, roi=roi)
    summary = segment_slide(slide, model, config, tmp_path / "roi.geojson", quiet=True)
    features = read_features(tmp_path / "roi.geojson")
    assert 0 < summary.nuclei == len(features)
    for feature in features:
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        centre = ring[:-1].mean(axis=0)
        assert roi[0] - 2 <= centre[0] <= roi[0] + roi[2] + 2 and roi[1] - 2 <= centre[1] <= roi[1] + roi[3] + 2


def test_a_place_gets_the_same_outlines_whatever_the_roi(tmp_path, model, slide_image):
    # Tiles sit on a grid anchored at the slide's origin, so an ROI at odd coordinates reads every
    # place at the same position in a tile as the whole-slide run does: identical outlines.
    rgb, _ = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    whole = SegmentConfig(tile_size=128, context=32, tissue_mask=False, measure=False)
    segment_slide(slide, model, whole, tmp_path / "whole.geojson", quiet=True)
    reference = [np.asarray(f["geometry"]["coordinates"][0]) for f in read_features(tmp_path / "whole.geojson")]
    roi = (101, 77, 230, 190)
    segment_slide(slide, model, SegmentConfig(tile_size=128, context=32, tissue_mask=False, measure=False, roi=roi),
                  tmp_path / "roi.geojson", quiet=True)
    inside = 0
    for feature in read_features(tmp_path / "roi.geojson"):
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        x, y = ring[:-1].mean(axis=0)
        if roi[0] + 40 <= x <= roi[0] + roi[2] - 40 and roi[1] + 40 <= y <= roi[1] + roi[3] - 40:
            inside += 1
            assert any(len(other) == len(ring) and np.allclose(other, ring) for other in reference), (x, y)
    assert inside >= 5


def test_glass_is_skipped_by_the_tissue_mask(tmp_path, model, slide_image):
    rgb, _ = slide_image
    canvas = np.full((384, 1536, 3), 250, dtype=np.uint8)  # two thirds of the slide are empty glass
    canvas[:, :512] = rgb
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", canvas, mpp=0.25, levels=2)
    with_mask = segment_slide(slide, model, SMALL_TILES, tmp_path / "a.geojson", quiet=True)
    without = segment_slide(
        slide, model, SegmentConfig(tile_size=128, context=32, tissue_mask=False), tmp_path / "b.geojson", quiet=True
    )
    assert with_mask.tiles < 0.5 * without.tiles
    assert abs(with_mask.nuclei - without.nuclei) <= 2


def test_tiles_read_only_their_tissue_in_quarter_tile_steps(tmp_path, model, slide_image):
    from wsi_frgnet.engine.planning import plan_slide
    from wsi_frgnet.io.slide import open_slide

    rgb, _ = slide_image
    canvas = np.full((384, 1024, 3), 250, dtype=np.uint8)
    canvas[:, :200] = rgb[:, :200]  # tissue in the first 200 px of the first tile's 384 px core
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", canvas, mpp=0.25, levels=2)
    config = SegmentConfig(tile_size=512, context=64, batch_size=2)
    with open_slide(slide) as opened:
        (first,) = [tile for tile in plan_slide(opened, model, config).tiles if tile.core[0] == 0]
    x, _, width, _ = first.read
    assert width < 512 and width % 128 == 0 and x == -64  # cut by a quarter tile on the right
    assert x + width >= 200 + 64  # the tissue and its context are read
    trimmed = segment_slide(slide, model, config, tmp_path / "a.geojson", quiet=True)
    whole = segment_slide(slide, model, SegmentConfig(tile_size=512, context=64, tissue_mask=False), tmp_path / "b.geojson", quiet=True)
    assert trimmed.nuclei > 10 and abs(trimmed.nuclei - whole.nuclei) <= 1


def test_nuclei_larger_than_the_context_are_reported(tmp_path, model, slide_image, caplog):
    rgb, _ = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    with caplog.at_level(logging.WARNING):
        segment_slide(slide, model, SegmentConfig(tile_size=64, context=8), tmp_path / "n.geojson", quiet=True)
    assert "raise --context" in caplog.text


def test_an_interrupted_run_leaves_no_output(tmp_path, model, slide_image, monkeypatch):
    rgb, _ = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    calls = {"count": 0}
    forward = type(model.network).forward

    def failing_forward(self, images):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return forward(self, images)

    monkeypatch.setattr(type(model.network), "forward", failing_forward)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(slide, model, SMALL_TILES, tmp_path / "out.geojson", quiet=True)
    # Nothing that looks finished: only the hidden journal of the tiles done is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.geojson.journal", "slide.tiff"]


def test_a_run_cut_short_resumes_to_the_same_file(tmp_path, model, slide_image, monkeypatch):
    """Killed after some batches, the same call goes on from the journal: journalled tiles are
    not run again and the output is byte for byte the uninterrupted one; stale temporary files
    of the killed write are removed; a journal of other options is not mixed in."""
    from wsi_frgnet.engine import pipeline as pipeline_module

    rgb, _ = slide_image
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    straight = tmp_path / "straight.geojson"
    segment_slide(slide, model, SMALL_TILES, straight, quiet=True)
    output = tmp_path / "resumed.geojson"
    calls = {"count": 0}
    forward = type(model.network).forward

    def counting_forward(self, images):
        calls["count"] += 1
        if calls.get("fail_at") == calls["count"]:
            raise KeyboardInterrupt
        return forward(self, images)

    monkeypatch.setattr(type(model.network), "forward", counting_forward)
    calls["fail_at"] = 5
    with pytest.raises(KeyboardInterrupt):
        segment_slide(slide, model, SMALL_TILES, output, quiet=True)
    (tmp_path / ".resumed.geojson.1234.tmp").write_bytes(b"left by a killed write")
    calls.update(count=0, fail_at=None)
    summary = segment_slide(slide, model, SMALL_TILES, output, quiet=True)
    batches = -(-summary.tiles // SMALL_TILES.batch_size)
    assert calls["count"] < batches  # the journalled batches were not run again
    assert output.read_bytes() == straight.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "resumed.geojson", "resumed.run.json", "slide.tiff", "straight.geojson", "straight.run.json"]
    # A journal of other options is replaced, with a warning, not mixed in.
    other = SegmentConfig(tile_size=128, context=32, batch_size=3, precision="bf16")
    calls.update(count=0, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(slide, model, other, tmp_path / "again.geojson", quiet=True)
    assert pipeline_module.journal_path(tmp_path / "again.geojson").exists()
    calls.update(count=0, fail_at=None)
    segment_slide(slide, model, SMALL_TILES, tmp_path / "again.geojson", quiet=True)
    assert (tmp_path / "again.geojson").read_bytes() == straight.read_bytes()
    assert calls["count"] == batches


def test_png_without_resolution_needs_mpp(tmp_path, model, slide_image):
    from wsi_frgnet.io.images import write_png

    rgb, labels = slide_image
    write_png(tmp_path / "tile.png", rgb)
    with pytest.raises(InputError, match="tile.png: no µm/px"):
        segment_slide(tmp_path / "tile.png", model, SMALL_TILES, tmp_path / "x.geojson", quiet=True)
    segment_slide(tmp_path / "tile.png", model, SMALL_TILES, tmp_path / "x.geojson", microns_per_pixel=0.25, quiet=True)
    assert score_instances(labels, _label_map(tmp_path / "x.geojson", labels.shape)).pq >= 0.8


def test_cli_several_slides_skip_existing_and_report_failures(tmp_path, overfitted_model, slide_image):
    run, _, _ = overfitted_model
    rgb, _ = slide_image
    good = write_pyramidal_tiff(tmp_path / "good.tiff", rgb, mpp=0.25, levels=1)
    bad = tmp_path / "bad.svs"
    bad.write_text("not a slide")
    out = tmp_path / "out"
    options = ["--model", str(run.output), "--tile-size", "128", "--context", "32", "--quiet", "-o", str(out)]
    result = CliRunner().invoke(main, ["segment", str(good), str(bad), *options])
    assert result.exit_code == 1
    assert (out / "good.geojson").is_file() and not (out / "bad.geojson").exists()
    assert "bad.svs" in result.stderr and "1 of 2 slides failed" in result.stderr
    assert "Traceback" not in result.stderr
    again = CliRunner().invoke(main, ["segment", str(good), *options])
    assert again.exit_code == 0 and "skipped" in again.stderr
    overwritten = CliRunner().invoke(main, ["segment", str(good), *options, "--overwrite", "--gzip"])
    assert overwritten.exit_code == 0 and (out / "good.geojson.gz").is_file()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["missing.svs", "-o", "x.geojson"], "missing.svs: no such file"),
        (["slide.tiff", "-o", "x.geojson", "--tile-size", "100"], "--tile-size"),
        (["slide.tiff", "-o", "x.geojson", "--context", "700"], "--context"),
        (["slide.tiff", "-o", "x.txt"], "neither a GeoJSON file name"),  # once silently made a folder x.txt
        (["slide.tiff", "-o", "typo.geojosn"], "neither a GeoJSON file name"),
        (["slide.tiff", "-o", "nodir/x.geojson"], "nodir"),
        (["slide.tiff", "-o", "x.geojson", "--mpp", "-1"], "--mpp"),
        (["slide.tiff", "-o", "x.geojson", "--roi-geojson", "missing.geojson"], "missing.geojson"),
        (["slide.tiff", "-o", "x.geojson", "--roi", "0", "0", "0", "10"], "--roi"),
        (["slide.tiff", "-o", "x.geojson", "--roi", "5000", "5000", "10", "10"], "outside the slide"),
        (["slide.tiff", "slide2.tiff", "-o", "x.geojson"], "names one file"),
        (["slide.tiff", "-o", "x.geojson", "--gzip"], "--gzip"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, overfitted_model, slide_image, monkeypatch, arguments, message):
    run, _, _ = overfitted_model
    monkeypatch.chdir(tmp_path)
    write_pyramidal_tiff(tmp_path / "slide.tiff", slide_image[0], mpp=0.25, levels=1)
    (tmp_path / "slide2.tiff").write_bytes((tmp_path / "slide.tiff").read_bytes())
    result = CliRunner().invoke(main, ["segment", *arguments, "--model", str(run.output), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "x.geojson").exists()


def test_segment_without_model_or_default_is_a_clear_error(tmp_path, slide_image, monkeypatch):
    import wsi_frgnet.engine.inference as inference

    monkeypatch.setattr(inference, "__file__", str(tmp_path / "inference.py"))
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", slide_image[0], mpp=0.25, levels=1)
    result = CliRunner().invoke(main, ["segment", str(slide), "-o", str(tmp_path / "x.geojson")])
    assert result.exit_code == 2
    assert "--model" in result.stderr


def test_a_slide_of_glass_gives_an_empty_valid_file_and_a_warning(tmp_path, model, caplog):
    glass = np.full((256, 256, 3), 248, dtype=np.uint8)
    slide = write_pyramidal_tiff(tmp_path / "glass.tiff", glass, mpp=0.25, levels=1)
    with caplog.at_level(logging.WARNING):
        summary = segment_slide(slide, model, SMALL_TILES, tmp_path / "glass.geojson", quiet=True)
    assert summary.tiles == 0 and summary.nuclei == 0 and summary.tissue_area_mm2 == 0.0
    assert "no tissue found" in caplog.text
    assert_qupath_valid(tmp_path / "glass.geojson")


@pytest.mark.skipif(not CMU_SLIDE.is_file(), reason="shared test slide not present")
def test_real_slide_with_the_shipped_default_model(tmp_path):
    output = tmp_path / "cmu.geojson.gz"
    result = CliRunner().invoke(main, ["segment", str(CMU_SLIDE), "-o", str(output), "--quiet"])
    assert result.exit_code == 0, result.output + result.stderr
    assert_qupath_valid(output)
    assert len(read_features(output)) > 1000  # a densely cellular 2220 x 2967 px region
    assert overlapping_pairs(output) == []  # 200 pairs shared more than 1 px² before overlaps were settled


@pytest.mark.skipif(not CMU_SLIDE.is_file(), reason="shared test slide not present")
def test_real_aperio_slide_end_to_end(tmp_path, model):
    output = tmp_path / "cmu.geojson"
    summary = segment_slide(CMU_SLIDE, model, SegmentConfig(tile_size=256, context=32, batch_size=8), output, quiet=True)
    assert_qupath_valid(output)
    assert summary.tiles > 0 and summary.tissue_area_mm2 > 0


def test_tissue_thumbnail_is_taken_at_about_four_microns_per_pixel_within_bounds():
    config = SegmentConfig()
    assert tissue_thumbnail_size((5120, 4000), 0.25, config) == 320  # 1.28 mm at 4 µm/px
    assert tissue_thumbnail_size((500, 400), 0.25, config) == 256  # never below 256 px
    assert tissue_thumbnail_size((100_000, 80_000), 0.25, config) == 2048  # capped for large slides
    assert tissue_thumbnail_size((100_000, 80_000), 0.25, SegmentConfig(thumbnail_size=1024)) == 1024
    # A pyramid level up to 2x coarser is read as it is (but never one below 256 px).
    pyramid = tuple((100_000 // 2**i, 80_000 // 2**i) for i in range(8))  # ..., 3125, 1562, 781 px
    assert tissue_thumbnail_size((100_000, 80_000), 0.25, config, pyramid) == 1562
    assert tissue_thumbnail_size((5120, 4000), 0.25, config, ((5120, 4000), (2560, 2000), (1280, 1000), (200, 156))) == 320
    with pytest.raises(ValueError):
        SegmentConfig(tissue_microns_per_pixel=0.0)


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_killed_command_run_again_gives_the_same_file(tmp_path, overfitted_model, signal_name):
    """The user's view: `frgnet-wsi segment` killed half-way (SIGKILL, or SIGTERM as a cluster
    sends) and run again writes the file an uninterrupted run writes; SIGTERM exits 143 and
    leaves no temporary file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run, _, _ = overfitted_model
    rgb, _ = synthetic_nuclei(768, 768, seed=21)
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=1)
    command = [sys.executable, "-c", "from wsi_frgnet.cli.main import main; main()", "segment", str(slide), "-m", str(run.output),
               "--tile-size", "128", "--context", "32", "--batch-size", "2", "--device", "cpu", "-q"]
    subprocess.run([*command, "-o", str(tmp_path / "straight.geojson")], check=True, capture_output=True)
    output = tmp_path / "out.geojson"
    journal = tmp_path / ".out.geojson.journal"
    process = subprocess.Popen([*command, "-o", str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (journal.exists() and journal.stat().st_size > 20000):
        time.sleep(0.01)
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=60)
    assert not output.exists()
    if signal_name == "SIGTERM":
        assert process.returncode == 143 and b"continues where it stopped" in stderr
        assert not list(tmp_path.glob(".out.geojson.*.tmp"))
    assert journal.exists()
    subprocess.run([*command, "-o", str(output)], check=True, capture_output=True)
    assert output.read_bytes() == (tmp_path / "straight.geojson").read_bytes()
    assert not journal.exists()


def test_slides_from_a_folder_and_a_list(tmp_path, overfitted_model, slide_image):
    run, _, _ = overfitted_model
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a", "b"):
        write_pyramidal_tiff(folder / f"{name}.tiff", slide_image[0][:256, :256], mpp=0.25, levels=1)
    (folder / "notes.md").write_text("not a slide")
    listing = tmp_path / "list.txt"
    listing.write_text("# slides to do\nslides/b.tiff\n\n")
    common = ["-m", str(run.output), "-q", "--tile-size", "128", "--context", "32"]
    result = CliRunner().invoke(main, ["segment", str(folder), "-o", str(tmp_path / "out"), *common])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.geojson")) == ["a.geojson", "b.geojson"]
    assert "2 segmented, 0 skipped, 0 failed" in result.output
    result = CliRunner().invoke(main, ["segment", str(listing), "-o", str(tmp_path / "out2"), *common])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out2" / "b.geojson").read_bytes() == (tmp_path / "out" / "b.geojson").read_bytes()


def test_ray_without_ray_installed_is_a_one_line_error(tmp_path, overfitted_model, slide_image, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    run, _, _ = overfitted_model
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", slide_image[0][:128, :128], mpp=0.25, levels=1)
    result = CliRunner().invoke(main, ["segment", str(slide), "-o", str(tmp_path / "out"), "-m", str(run.output), "--ray", "local"])
    assert result.exit_code == 2 and "pip install" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_three_slides_on_local_ray_are_the_sequential_files(tmp_path, overfitted_model, slide_image):
    """A local Ray with 2 CPUs: every slide is a task; outputs are byte for byte those of the
    sequential run; a slide already done is skipped, a broken one reported after its retries."""
    pytest.importorskip("ray")
    run, _, _ = overfitted_model
    folder = tmp_path / "slides"
    folder.mkdir()
    for index, name in enumerate(("a", "b", "c")):
        write_pyramidal_tiff(folder / f"{name}.tiff", np.roll(slide_image[0], 64 * index, axis=1)[:256, :384], mpp=0.25, levels=1)
    common = ["-m", str(run.output), "-q", "--tile-size", "128", "--context", "32", "--device", "cpu"]
    sequential = CliRunner().invoke(main, ["segment", str(folder), "-o", str(tmp_path / "sequential"), *common])
    assert sequential.exit_code == 0, sequential.output
    (folder / "d.tiff").write_bytes(b"not a slide at all")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "c.geojson").write_bytes((tmp_path / "sequential" / "c.geojson").read_bytes())  # already done
    result = CliRunner().invoke(main, ["segment", str(folder), "-o", str(tmp_path / "ray"), *common, "--ray", "local", "--ray-cpus", "1"])
    assert result.exit_code == 1, result.output
    assert "2 segmented, 1 skipped, 1 failed" in result.output and "d.tiff" in result.stderr
    for name in ("a", "b", "c"):
        assert (tmp_path / "ray" / f"{name}.geojson").read_bytes() == (tmp_path / "sequential" / f"{name}.geojson").read_bytes()


def test_a_coarse_slide_is_segmented_within_the_models_range(tmp_path, model, slide_image, caplog):
    from dataclasses import replace

    from wsi_frgnet.engine.planning import plan_slide
    from wsi_frgnet.io.slide import open_slide

    slide = write_pyramidal_tiff(tmp_path / "slide20x.tiff", slide_image[0], mpp=0.5, levels=1)
    ranged = replace(model, checkpoint=replace(model.checkpoint, coarsest_microns_per_pixel=0.4))
    with open_slide(slide) as opened:
        assert plan_slide(opened, model, SMALL_TILES).factor == pytest.approx(0.25 / 0.5)  # upsampled 2x
        with caplog.at_level(logging.INFO, logger="wsi_frgnet"):
            assert plan_slide(opened, ranged, SMALL_TILES).factor == pytest.approx(0.4 / 0.5)  # only 1.25x
    assert "segmenting at 0.4 µm/px" in caplog.text
    segment_slide(slide, ranged, SMALL_TILES, tmp_path / "nuclei.geojson", quiet=True)
    report = json.loads((tmp_path / "nuclei.geojson").with_suffix(".run.json").read_text())
    assert report["working_microns_per_pixel"] == pytest.approx(0.4)
