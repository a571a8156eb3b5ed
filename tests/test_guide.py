"""Tests for wsi_frgnet.model.guide: the training-free Fourier guide (METHOD_NOTES.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_frgnet.eval.metrics import score_instances
from wsi_frgnet.model.guide import fourier_guide, guide_instances, guide_target

BACKGROUND = (235, 200, 225)  # pink eosin
NUCLEUS = (80, 40, 140)  # dark purple haematoxylin


def synthetic_he(size=192, grid=5, seed=0, noise=6.0):
    """A pink tile with ``grid`` x ``grid`` well separated dark ellipses and mild noise.

    Returns (rgb uint8 (size, size, 3), labels int32 (size, size)).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    labels = np.zeros((size, size), np.int32)
    spacing = size / grid
    label = 0
    for i in range(grid):
        for j in range(grid):
            cx = (j + 0.5) * spacing + rng.uniform(-4, 4)
            cy = (i + 0.5) * spacing + rng.uniform(-4, 4)
            a, b = rng.uniform(7, 11), rng.uniform(5, 8)
            theta = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
            v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
            label += 1
            labels[(u / a) ** 2 + (v / b) ** 2 <= 1] = label
    rgb = np.empty((size, size, 3), np.float64)
    rgb[:] = BACKGROUND
    rgb[labels > 0] = NUCLEUS
    rgb += rng.normal(0, noise, rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), labels


def test_fourier_guide_lights_up_nuclei():
    rgb, labels = synthetic_he()
    guide = fourier_guide(rgb)
    assert guide.dtype == np.float32
    assert guide.shape == labels.shape
    assert guide.min() >= 0.0 and guide.max() <= 1.0
    assert guide.min() == pytest.approx(0.0) and guide.max() == pytest.approx(1.0)  # min-max normalised
    inside, outside = guide[labels > 0].mean(), guide[labels == 0].mean()
    assert inside > 1.5 * outside
    assert inside > 0.5


def test_fourier_guide_non_square_and_float_input():
    rgb, labels = synthetic_he(size=160, grid=4, seed=1)
    crop_rgb, crop_labels = rgb[:, :117], labels[:, :117]
    guide = fourier_guide(crop_rgb.astype(np.float32) / 255.0, radius=2)
    assert guide.shape == crop_labels.shape and guide.dtype == np.float32
    assert guide[crop_labels > 0].mean() > 1.5 * guide[crop_labels == 0].mean()


def test_fourier_guide_is_invariant_to_brightness_offset():
    # Removing DC makes the guide ignore a uniform brightness shift.
    rgb, _ = synthetic_he(size=96, grid=3, seed=2)
    darker = rgb.astype(np.float64) - 20.0
    np.testing.assert_allclose(fourier_guide(rgb), fourier_guide(darker), atol=1e-5)


def test_fourier_guide_radius_zero_keeps_low_frequencies():
    # With R = 0 only DC is removed: the guide is |grey - mean(grey)| min-max normalised.
    rng = np.random.default_rng(5)
    rgb = rng.uniform(0, 255, (20, 30, 3))
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    expected = np.abs(grey - grey.mean())
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(fourier_guide(rgb, radius=0), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 64), (37, 50)])
def test_fourier_guide_of_constant_image_is_zero(shape):
    for value in (0, 128, 235):
        guide = fourier_guide(np.full(shape + (3,), value, np.uint8))
        assert guide.shape == shape and guide.dtype == np.float32
        assert not guide.any()
    assert not fourier_guide(np.full(shape + (3,), BACKGROUND, np.uint8)).any()


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 4), (32, 32, 1), (3, 32, 32)])
def test_fourier_guide_rejects_non_rgb(shape):
    with pytest.raises(ValueError):
        fourier_guide(np.zeros(shape, np.uint8))


# ------------------------------------------------------------------- guide_target


def test_guide_target_soft_hard_and_unlabelled():
    g = np.array([[0.0, 0.2, 0.45], [0.5, 0.7, 1.0]], dtype=np.float64)
    mask = np.array([[False, True, False], [True, False, False]])

    soft = guide_target(g, mask, hard=False)
    assert soft.dtype == np.float32
    np.testing.assert_allclose(soft, np.clip(g + mask, 0, 1), atol=1e-7)
    np.testing.assert_allclose(soft, [[0.0, 1.0, 0.45], [1.0, 0.7, 1.0]], atol=1e-7)

    hard = guide_target(g, mask, hard=True)
    assert hard.dtype == np.float32
    np.testing.assert_array_equal(hard, [[0, 1, 0], [1, 1, 1]])
    assert set(np.unique(hard)) <= {0.0, 1.0}

    hard_strict = guide_target(g, mask, hard=True, threshold=0.8)
    np.testing.assert_array_equal(hard_strict, [[0, 1, 0], [1, 0, 1]])

    alone = guide_target(g, None, hard=False)
    assert alone.dtype == np.float32
    np.testing.assert_allclose(alone, g, atol=1e-7)
    np.testing.assert_array_equal(guide_target(g, None, hard=True), [[0, 0, 0], [1, 1, 1]])


def test_guide_target_does_not_modify_its_input():
    g = np.full((4, 4), 0.3, np.float32)
    before = g.copy()
    guide_target(g, np.ones((4, 4), bool), hard=True)
    np.testing.assert_array_equal(g, before)


# ---------------------------------------------------------------- guide_instances


def test_guide_instances_finds_the_nuclei():
    rgb, labels = synthetic_he(size=192, grid=5, seed=0)
    predicted = guide_instances(rgb)
    assert predicted.dtype == np.int32 and predicted.shape == labels.shape
    count = int(labels.max())
    found = len(np.unique(predicted)) - 1
    assert abs(found - count) <= 0.3 * count
    assert predicted.max() == found  # consecutive labels 1..n
    assert score_instances(labels, predicted).dq > 0.5


def test_guide_instances_respects_min_area_and_constant_image_is_empty():
    rng = np.random.default_rng(1)
    rgb = np.clip(np.asarray(BACKGROUND) + rng.normal(0, 1.0, (64, 64, 3)), 0, 255).astype(np.uint8)
    predicted = guide_instances(rgb, min_area=20)
    areas = np.bincount(predicted.ravel())[1:]
    assert (areas >= 20).all()
    assert not guide_instances(np.full((64, 64, 3), 200, np.uint8)).any()


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive value exceeds a random negative one (ties: half)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([positive, negative]))
    return float((ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))


def test_fourier_guide_on_real_he_is_a_weak_prior(he_crops):
    """On real stains the guide still favours nuclei (higher mean, AUC above chance on every
    crop) but is far from the clean separation of the synthetic images above."""
    aucs = []
    for name, rgb, labels in he_crops:
        guide = fourier_guide(rgb)
        inside, outside = guide[labels > 0], guide[labels == 0]
        assert inside.mean() > outside.mean(), name
        aucs.append(_auc(inside, outside))
    assert min(aucs) > 0.55
    assert np.mean(aucs) < 0.9  # a weak prior: what the guide head and its losses must live with


def test_guide_target_on_real_he_covers_every_annotated_nucleus(he_crops):
    for name, rgb, labels in he_crops:
        guide = fourier_guide(rgb)
        soft = guide_target(guide, labels > 0, hard=False)
        hard = guide_target(guide, labels > 0, hard=True)
        assert (soft[labels > 0] == 1.0).all() and (hard[labels > 0] == 1.0).all(), name
        assert np.array_equal(soft[labels == 0], guide[labels == 0])


def test_the_guide_source_picks_the_plane():
    from wsi_frgnet.config import TargetConfig
    from wsi_frgnet.engine.measurements import stain_densities
    from wsi_frgnet.model.guide import high_pass_guide
    from wsi_frgnet.train.targets import image_guide

    rgb, labels = synthetic_he()
    assert np.array_equal(image_guide(rgb, TargetConfig()), fourier_guide(rgb))
    haematoxylin = image_guide(rgb, TargetConfig(guide_source="haematoxylin"))
    assert np.array_equal(haematoxylin, high_pass_guide(stain_densities(rgb)[0]))
    assert not np.array_equal(haematoxylin, fourier_guide(rgb))
    assert haematoxylin[labels > 0].mean() > 1.5 * haematoxylin[labels == 0].mean()
    # An eosin-only change (denser pink background) moves the luminance guide, not much the haematoxylin one.
    pinker = rgb.copy()
    pinker[labels == 0] = np.clip(pinker[labels == 0].astype(int) - (0, 40, 10), 0, 255)
    moved_h = np.abs(image_guide(pinker, TargetConfig(guide_source="haematoxylin")) - haematoxylin).mean()
    moved_l = np.abs(fourier_guide(pinker) - fourier_guide(rgb)).mean()
    assert moved_h < moved_l
    with pytest.raises(ValueError, match="--guide-source"):
        TargetConfig(guide_source="eosin")
