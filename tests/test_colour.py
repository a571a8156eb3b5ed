"""Colour alignment: each slide's or image's mean tissue colour is read as the training data's."""

import json
from dataclasses import replace

import numpy as np
import pytest
from slide_factory import write_pyramidal_tiff

from wsi_frgnet.config import SegmentConfig
from wsi_frgnet.engine.colour import align_colours, aligned_mean
from wsi_frgnet.engine.pipeline import segment_slide
from wsi_frgnet.engine.planning import plan_slide
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.io.slide import open_slide
from wsi_frgnet.synthetic import synthetic_nuclei

CAST = np.array([-15, -10, -5])  # a colour cast, RGB 0-255


def _tissue(seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rgb, labels = synthetic_nuclei(*size, seed=seed)
    return np.clip(rgb, 20, 215).astype(np.uint8), labels  # no glass, and room for the cast


def test_aligned_mean_moves_the_normalisation_with_the_tissue():
    assert aligned_mean((0.5, 0.5, 0.5), (0.6, 0.4, 0.6), (0.7, 0.4, 0.5)) == pytest.approx((0.6, 0.5, 0.4))
    assert align_colours((0.5, 0.5, 0.5), None, [np.zeros((4, 4, 3), np.uint8)]) is None  # model without a data mean
    rgb = np.full((8, 8, 3), 255, np.uint8)
    rgb[:4] = (102, 51, 153)  # glass below is left out
    alignment = align_colours((0.5, 0.5, 0.5), (0.4, 0.2, 0.6), [rgb])
    assert alignment.tissue_mean == pytest.approx((0.4, 0.2, 0.6))
    assert alignment.normalisation_mean == pytest.approx((0.5, 0.5, 0.5))


def test_a_colour_cast_cancels_on_images(model):
    rgb, _ = _tissue(4, (256, 256))
    cast = (rgb + CAST).astype(np.uint8)
    aligned = model.segment(cast)
    assert score_instances(model.segment(rgb), aligned).pq >= 0.99
    assert model.normalisation_mean(cast) == pytest.approx(np.array(model.normalisation_mean(rgb)) + CAST / 255)
    unaligned = replace(model, colour_alignment=False)
    assert unaligned.normalisation_mean(cast) == model.checkpoint.mean


def test_slides_are_aligned_on_the_whole_slide_and_say_so(tmp_path, model):
    rgb, _ = _tissue(5, (384, 512))
    plain = write_pyramidal_tiff(tmp_path / "plain.tiff", rgb, mpp=0.25, levels=2)
    cast = write_pyramidal_tiff(tmp_path / "cast.tiff", (rgb + CAST).astype(np.uint8), mpp=0.25, levels=2)
    config = SegmentConfig(tile_size=128, context=32, batch_size=2)
    with open_slide(plain) as opened:
        whole = plan_slide(opened, model, config)
        region = plan_slide(opened, model, replace(config, roi=(0, 0, 100, 100)))
        off = plan_slide(opened, model, replace(config, colour_alignment=False))
    with open_slide(cast) as opened:
        shifted = plan_slide(opened, model, config)
    assert whole.colour.data_mean == pytest.approx(model.checkpoint.data_mean)
    assert region.input_mean == whole.input_mean  # an ROI is read as in a whole-slide run
    assert off.colour is None and off.input_mean == model.checkpoint.mean
    # The thumbnail's colours are averaged by resampling, so the cast comes back to within a grey level.
    assert np.array(shifted.input_mean) - np.array(whole.input_mean) == pytest.approx(CAST / 255, abs=1 / 255)
    segment_slide(cast, model, config, tmp_path / "nuclei.geojson", quiet=True)
    report = json.loads((tmp_path / "nuclei.run.json").read_text())
    assert report["options"]["colour_alignment"] is True
    assert report["colour_alignment"]["normalisation_mean"] == pytest.approx(shifted.input_mean, abs=1e-4)
