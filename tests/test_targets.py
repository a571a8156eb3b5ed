"""Tests for wsi_frgnet.train.targets.build_targets (METHOD_NOTES.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from wsi_frgnet.config import ModelConfig, TargetConfig
from wsi_frgnet.geometry.fourier import decode_contours
from wsi_frgnet.train.targets import build_targets

STRIDE = 4
SIZE = 64
CX, CY, A, B, ANGLE = 30.3, 33.6, 18.0, 10.0, 20.0



def _decode(targets, samples: int) -> np.ndarray:
    """(samples, 2) points of the first instance's Fourier target, decoded in float64."""
    centres = torch.from_numpy(targets.centres[:1].astype(np.float64))
    return decode_contours(centres, torch.from_numpy(targets.coefficients[:1].astype(np.float64)), samples)[0].numpy()

def _ellipse(shape, cx, cy, a, b, angle_deg):
    """(mask of pixel centres inside, normalised radius rho at every pixel centre)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    theta = np.radians(angle_deg)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return rho <= 1.0, rho


def _rgb(labels):
    rgb = np.empty(labels.shape + (3,), np.uint8)
    rgb[:] = (235, 200, 225)
    rgb[labels > 0] = (80, 40, 140)
    return rgb


def _cells_max(values):
    """Max of ``values`` over every STRIDE x STRIDE cell."""
    h, w = values.shape
    return values.reshape(h // STRIDE, STRIDE, w // STRIDE, STRIDE).max(axis=(1, 3))


def _cells_any(mask):
    return _cells_max(mask.astype(np.uint8)) > 0


def _normalised_distance(mask):
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return distance / distance.max()


@pytest.fixture(scope="module")
def single():
    mask, rho = _ellipse((SIZE, SIZE), CX, CY, A, B, ANGLE)
    labels = mask.astype(np.int32) * 5  # any positive id
    config = ModelConfig.tiny()
    return mask, rho, labels, config, build_targets(_rgb(labels), labels, config, TargetConfig())


def test_shapes_and_dtypes(single):
    _, _, _, config, t = single
    h = SIZE // STRIDE
    for name in ("score", "score_weight", "owner"):
        assert getattr(t, name).shape == (h, h)
    assert t.score.dtype == np.float32 and t.score_weight.dtype == np.float32
    assert t.centres.shape == (1, 2)
    assert t.coefficients.shape == (1, config.fourier_order, 4)
    assert t.contours.shape == (1, config.contour_points, 2)
    assert t.guide is not None and t.guide.shape == (SIZE // 2, SIZE // 2)
    assert t.guide.dtype == np.float32
    assert set(np.unique(t.score)) <= {0.0, 1.0}
    assert set(np.unique(t.score_weight)) <= {0.0, 1.0}


def test_score_foreground_is_the_core(single):
    mask, rho, _, _, t = single
    fg = t.score == 1
    assert fg.sum() >= 3
    # The cell holding the ellipse centre is foreground.
    assert fg[int(CY // STRIDE), int(CX // STRIDE)]
    # Foreground cells are centred well inside the ellipse and hold a core pixel.
    cell_centre_rho = rho[STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE]  # rho near each cell centre
    assert (cell_centre_rho[fg] < 0.8).all()
    cell_max = _cells_max(_normalised_distance(mask))
    assert (cell_max[fg] >= 0.8).all()
    # Exactly the cells holding a core pixel are foreground.
    np.testing.assert_array_equal(fg, cell_max >= 0.8)


def test_ring_is_ignored_and_far_background_is_taught(single):
    mask, _, _, _, t = single
    cell_max = _cells_max(_normalised_distance(mask))
    ring = (cell_max >= 0.5) & (cell_max < 0.8)
    assert ring.any()
    assert (t.score_weight[ring] == 0).all()
    assert (t.score[ring] == 0).all()
    # Cells with no ellipse pixel within 3 px: background, taught.
    near = ndimage.binary_dilation(mask, iterations=3)
    far = ~_cells_any(near)
    assert far.sum() > 100
    assert (t.score[far] == 0).all() and (t.score_weight[far] == 1).all()
    # Foreground cells are taught as well.
    assert (t.score_weight[t.score == 1] == 1).all()
    # Only the ring is ignored in a crop without small, cut or unknown instances.
    np.testing.assert_array_equal(t.score_weight == 0, ring)


def test_owner_indexes_the_instance(single):
    _, _, _, _, t = single
    fg = t.score == 1
    assert t.owner.dtype.kind == "i"
    assert (t.owner[fg] == 0).all()
    assert (t.owner[~fg] == -1).all()


def test_instance_geometry(single):
    _, _, _, config, t = single
    centre = t.centres[0]
    assert np.hypot(centre[0] - CX, centre[1] - CY) < 0.5
    # The Fourier contour encloses the ellipse's area (t runs with arc length, so the first
    # harmonic alone is not the ellipse; the full series is).
    dense = _decode(t, 400)
    x, y = dense[:, 0], dense[:, 1]
    area = 0.5 * abs(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    assert area == pytest.approx(np.pi * A * B, rel=0.04)
    # Contour points lie on the outline (crack midpoints: within ~0.75 px of the true curve).
    contour = t.contours[0]
    theta = np.radians(ANGLE)
    d = contour - np.array([CX, CY])
    u = d[:, 0] * np.cos(theta) + d[:, 1] * np.sin(theta)
    v = -d[:, 0] * np.sin(theta) + d[:, 1] * np.cos(theta)
    rho = np.sqrt((u / A) ** 2 + (v / B) ** 2)
    assert (np.abs(rho - 1.0) < 0.75 / B).all()
    # Contour targets and Fourier targets share the parameterisation: the decoded Fourier
    # contour at t = i / S matches the contour target point by point.
    decoded = _decode(t, config.contour_points)
    assert np.abs(decoded - contour).max() < 1.0


def test_soft_guide_target(single):
    mask, _, labels, _, t = single
    # Soft guide: clip(g + M) is 1 on nuclei, so blocks fully inside the nucleus are 1.
    inside_blocks = mask.reshape(SIZE // 2, 2, SIZE // 2, 2).all(axis=(1, 3))
    np.testing.assert_allclose(t.guide[inside_blocks], 1.0)
    assert t.guide.min() >= 0.0 and t.guide.max() <= 1.0
    assert t.guide[~mask.reshape(SIZE // 2, 2, SIZE // 2, 2).any(axis=(1, 3))].max() < 1.0


def test_no_guide_target_when_guide_is_off():
    mask, _ = _ellipse((SIZE, SIZE), CX, CY, A, B, ANGLE)
    labels = mask.astype(np.int32)
    t = build_targets(_rgb(labels), labels, ModelConfig.tiny(guide="none"), TargetConfig())
    assert t.guide is None
    assert t.score.sum() > 0


def test_hard_guide_target_is_binary():
    mask, _ = _ellipse((SIZE, SIZE), CX, CY, A, B, ANGLE)
    labels = mask.astype(np.int32)
    t = build_targets(_rgb(labels), labels, ModelConfig.tiny(guide="hard"), TargetConfig())
    assert t.guide is not None and t.guide.shape == (SIZE // 2, SIZE // 2)
    assert set(np.unique(t.guide)) <= {0.0, 1.0}


# ----------------------------------------------------------------- ignored instances


def _two_instances(second_id=2):
    """Ellipse (label 1) plus a 10x10 square (rows 2-11, cols 48-57) with id ``second_id``."""
    mask, _ = _ellipse((SIZE, SIZE), 26.0, 38.0, 14.0, 9.0, 0.0)
    labels = mask.astype(np.int32)
    labels[2:12, 48:58] = second_id
    return labels


def test_small_instance_is_ignored_not_background():
    labels = _two_instances()
    labels[labels == 2] = 0
    labels[4:8, 52:56] = 2  # 16 px < min_area 20
    t = build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig())
    small_cells = _cells_any(labels == 2)
    assert small_cells.any()
    assert (t.score_weight[small_cells] == 0).all()
    assert (t.score[small_cells] == 0).all()
    assert (t.owner[small_cells] == -1).all()
    assert len(t.centres) == len(t.coefficients) == len(t.contours) == 1
    assert np.hypot(*(t.centres[0] - [26.0, 38.0])) < 0.5
    assert (t.owner[t.score == 1] == 0).all()
    # With a lower min_area it becomes a taught instance.
    t2 = build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig(min_area=10))
    assert len(t2.centres) == 2
    assert (t2.score[small_cells] == 1).any()


def test_instance_cut_by_the_crop_is_ignored():
    labels = _two_instances()
    square = labels == 2  # 100 px in the crop
    cells = _cells_any(square)
    # 100 of 2000 px left (5 %): ignored.
    t = build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig(), full_areas={1: int((labels == 1).sum()), 2: 2000})
    assert len(t.centres) == 1
    assert (t.score_weight[cells] == 0).all() and (t.score[cells] == 0).all()
    assert np.hypot(*(t.centres[0] - [26.0, 38.0])) < 0.5
    # 100 of 500 px left (20 %): taught, as the second instance.
    t = build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig(), full_areas={2: 500})
    assert len(t.centres) == 2
    owner_in_square = t.owner[cells & (t.score == 1)]
    assert owner_in_square.size > 0 and (owner_in_square == 1).all()
    np.testing.assert_allclose(t.centres[1], [53.0, 7.0], atol=0.3)


def test_owner_follows_label_order_with_gaps():
    labels = _two_instances(second_id=7)
    t = build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig())
    assert len(t.centres) == 2
    for index in (0, 1):
        rows, cols = np.nonzero(t.owner == index)
        assert rows.size > 0
        cell_centres = np.stack([(cols + 0.5) * STRIDE, (rows + 0.5) * STRIDE], axis=1)
        # Every cell owned by an instance lies close to that instance's centre.
        assert (np.hypot(*(cell_centres - t.centres[index]).T) < 10).all()


def test_unknown_pixels_are_never_taught_as_background():
    mask, _ = _ellipse((SIZE, SIZE), CX, CY, A, B, ANGLE)
    labels = mask.astype(np.int32)
    unknown = np.zeros_like(mask)
    unknown[:32] = True  # top half (covers part of the nucleus)
    unknown[40:42, 0:6] = True  # a sliver: still ignores the cells it touches
    plain = build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig())
    t = build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig(), unknown=unknown)
    unknown_cells = _cells_any(unknown)
    np.testing.assert_array_equal(t.score, plain.score)
    np.testing.assert_array_equal(t.owner, plain.owner)
    fg = t.score == 1
    assert (fg & unknown_cells).any()  # the test covers foreground inside the unknown area
    assert (t.score_weight[fg] == 1).all()
    assert (t.score_weight[unknown_cells & ~fg] == 0).all()
    # Outside the unknown area nothing changes.
    np.testing.assert_array_equal(t.score_weight[~unknown_cells], plain.score_weight[~unknown_cells])
    assert t.score_weight[12, 12] == 1  # a far background cell below the unknown band


def test_empty_crop():
    labels = np.zeros((32, 48), np.int32)
    t = build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig())
    assert t.score.shape == (8, 12) and not t.score.any()
    assert (t.score_weight == 1).all() and (t.owner == -1).all()
    assert t.centres.shape == (0, 2)
    assert t.coefficients.shape == (0, ModelConfig.tiny().fourier_order, 4)
    assert t.contours.shape == (0, ModelConfig.tiny().contour_points, 2)
    assert t.guide is not None and t.guide.shape == (16, 24)


@pytest.mark.parametrize("shape", [(62, 64), (64, 66), (30, 30)])
def test_crop_not_a_multiple_of_the_stride_raises(shape):
    labels = np.zeros(shape, np.int32)
    labels[10:20, 10:20] = 1
    with pytest.raises(ValueError):
        build_targets(_rgb(labels), labels, ModelConfig.tiny(), TargetConfig())
