"""Test-time augmentation over mirror images (engine.mirrors)."""

import json
import math
from dataclasses import replace

import numpy as np
import torch
from slide_factory import write_pyramidal_tiff

from wsi_frgnet.config import ModelConfig, SegmentConfig
from wsi_frgnet.engine.inference import predict_image
from wsi_frgnet.engine.mirrors import _reflect_coefficients, _shift_start, align_start, mirror_averaged
from wsi_frgnet.engine.pipeline import segment_slide
from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.geometry.fourier import decode_contours, elliptic_fourier_descriptors
from wsi_frgnet.io.geojson import read_features
from wsi_frgnet.model import FrgNet
from wsi_frgnet.synthetic import synthetic_nuclei


def _as_map(coefficients: np.ndarray) -> torch.Tensor:
    """(K, 4) → (1, K, 4, 1, 1): one cell of a coefficient map."""
    return torch.from_numpy(coefficients).float()[None, :, :, None, None]


def _contour(coefficients: torch.Tensor, samples: int = 64) -> np.ndarray:
    return decode_contours(torch.zeros(1, 2), coefficients[0, :, :, 0, 0][None], samples)[0].numpy()


def _blob(rng: np.random.Generator) -> np.ndarray:
    """A star-shaped polygon (64, 2) around the origin, counter-clockwise in image axes."""
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    radius = 10 + 3 * np.cos(2 * angles + rng.uniform(0, 6)) + 1.5 * np.sin(3 * angles + rng.uniform(0, 6))
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def test_align_start_undoes_a_shift_of_the_start_point():
    rng = np.random.default_rng(0)
    reference = _as_map(elliptic_fourier_descriptors(_blob(rng), 12)[1])
    for phase in (0.3, 2.0, 4.5):
        shifted = _shift_start(reference, torch.tensor([[[phase]]]))
        assert np.abs(_contour(shifted) - _contour(reference)).max() > 1.0
        aligned = align_start(shifted, reference)
        assert np.abs(_contour(aligned) - _contour(reference)).max() < 0.05


def test_a_mirrored_contour_comes_back_as_the_same_contour():
    """Each mirror image of a polygon, described the way the network describes every nucleus
    (same orientation, its own start point), reflects back onto the polygon point by point."""
    rng = np.random.default_rng(1)
    polygon = _blob(rng)
    reference = _as_map(elliptic_fourier_descriptors(polygon, 12)[1])
    for dims, flip in (((-1,), np.array([-1.0, 1.0])), ((-2,), np.array([1.0, -1.0])), ((-2, -1), np.array([-1.0, -1.0]))):
        mirrored = polygon * flip
        if len(dims) == 1:  # a reflection reverses the traversal: restore the orientation
            mirrored = mirrored[::-1]
        mirrored = np.roll(mirrored, 17, axis=0)  # and the start point is another one
        coefficients = _as_map(elliptic_fourier_descriptors(mirrored, 12)[1])
        back = align_start(_reflect_coefficients(coefficients, dims), reference)
        assert np.abs(_contour(back) - _contour(reference)).max() < 0.3


def test_mirror_average_commutes_with_mirroring_the_input():
    torch.manual_seed(0)
    network = FrgNet(ModelConfig.tiny()).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        plain = mirror_averaged(network, images)
        mirrored = mirror_averaged(network, images.flip(-1))
        single = network(images)
    assert torch.allclose(mirrored.score_logits.flip(-1), plain.score_logits, atol=1e-4)
    assert torch.allclose(mirrored.guide_logits.flip(-1), plain.guide_logits, atol=1e-4)
    assert torch.allclose(mirrored.location.flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1), plain.location, atol=1e-4)
    assert plain.fourier.shape == single.fourier.shape and plain.refinement.shape == single.refinement.shape
    assert not torch.allclose(plain.score_logits, single.score_logits)


def test_tta_segments_as_well_as_one_pass(model, overfitted_model):
    _, image, _ = overfitted_model
    kwargs = dict(postprocess=model.postprocess, mean=model.checkpoint.mean, std=model.checkpoint.std)
    one = predict_image(model.network, image.rgb, **kwargs)
    four = predict_image(model.network, image.rgb, tta=True, **kwargs)
    pq_one = score_instances(image.labels, one.label_map()).pq
    pq_four = score_instances(image.labels, four.label_map()).pq
    assert pq_one > 0.6 and not math.isnan(pq_four)
    assert pq_four > pq_one - 0.05
    assert abs(len(four.nuclei) - len(one.nuclei)) <= 0.1 * len(one.nuclei)


def test_segment_with_tta_finds_the_same_nuclei_and_records_it(tmp_path, model):
    rgb, _ = synthetic_nuclei(384, 512, seed=7)
    slide = write_pyramidal_tiff(tmp_path / "slide.tiff", rgb, mpp=0.25, levels=2)
    config = SegmentConfig(tile_size=128, context=32, batch_size=2, measure=False)
    segment_slide(slide, model, config, tmp_path / "one.geojson", quiet=True)
    segment_slide(slide, model, replace(config, tta=True), tmp_path / "four.geojson", quiet=True)
    one, four = (list(read_features(tmp_path / name)) for name in ("one.geojson", "four.geojson"))
    assert len(one) > 20 and abs(len(four) - len(one)) <= 0.1 * len(one)
    report = json.loads((tmp_path / "four.run.json").read_text())
    assert report["options"]["tta"] is True
