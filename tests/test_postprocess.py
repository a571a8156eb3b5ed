"""Tests for wsi_frgnet.engine.decode: NMS and network outputs → nucleus polygons (METHOD_NOTES.md §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch

from wsi_frgnet.config import ModelConfig, PostprocessConfig
from wsi_frgnet.engine.decode import decode_nuclei
from wsi_frgnet.geometry.boxes import box_nms
from wsi_frgnet.model.frgnet import NetworkOutput
from wsi_frgnet.nucleus import Nucleus

CONFIG = ModelConfig.tiny()  # K = 6, B = 4, S = 32, 2 refinement iterations
SIZE = 64
STRIDE = 4
ROW, COL = 7, 9  # the proposal cell: centre (38, 30) px
CELL_CENTRE = ((COL + 0.5) * STRIDE, (ROW + 0.5) * STRIDE)
RADIUS = 6.0


# ------------------------------------------------------------------------- box_nms


def test_box_nms_hand_case():
    boxes = np.array(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: overlaps 1 with IoU 81 / 119 = 0.68
            [1.0, 1.0, 11.0, 11.0],  # 1: highest score
            [20.0, 20.0, 30.0, 30.0],  # 2: alone
        ]
    )
    scores = np.array([0.8, 0.9, 0.85])
    keep = box_nms(boxes, scores, 0.3)
    assert keep.dtype.kind == "i"
    assert keep.tolist() == [1, 2]
    # Below the overlap: nothing suppressed, all in score order.
    assert box_nms(boxes, scores, 0.7).tolist() == [1, 2, 0]


def test_box_nms_threshold_is_strict_and_suppression_is_greedy():
    # 0 and 1 overlap with IoU exactly 1/3; 1 and 2 overlap strongly, 0 and 2 not at all.
    boxes = np.array([[0.0, 0.0, 4.0, 2.0], [2.0, 0.0, 6.0, 2.0], [3.0, 0.0, 7.0, 2.0]])
    scores = np.array([0.9, 0.8, 0.7])
    assert box_nms(boxes, scores, 1.0 / 3.0).tolist() == [0, 1]  # IoU == threshold: kept
    # Greedy: 1 is suppressed by 0, so 2 (suppressed only by 1) survives.
    assert box_nms(boxes, scores, 0.3).tolist() == [0, 2]


def _greedy_nms(boxes, scores, threshold):
    """Reference: compare every kept box with every lower-scoring one."""
    order = np.argsort(-scores, kind="stable")
    keep, suppressed = [], np.zeros(len(boxes), bool)
    for a, i in enumerate(order):
        if suppressed[a]:
            continue
        keep.append(i)
        for b in range(a + 1, len(order)):
            j = order[b]
            w = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            union = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]) + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]) - w * h
            suppressed[b] |= w * h / max(union, 1e-9) > threshold
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_box_nms_equals_exhaustive_greedy_suppression(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(2, 150))
    corners = rng.uniform(-50, 400, (count, 2))
    sizes = rng.uniform(0, [4.0, 30.0, 250.0][seed % 3], (count, 2))  # small, nucleus-like, and huge boxes
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    scores = np.round(rng.uniform(0, 1, count), 1)  # ties: the earlier box ranks first
    for threshold in (0.0, 0.2, 0.7):
        assert box_nms(boxes, scores, threshold).tolist() == _greedy_nms(boxes, scores, threshold)


def test_box_nms_empty():
    assert box_nms(np.zeros((0, 4)), np.zeros(0), 0.3).size == 0


# ------------------------------------------------------------------- decode_nuclei


def _output(score_logit=3.0, guide_logit=8.0, location=(0.0, 0.0), radius=RADIUS, refinement=None, cells=((ROW, COL),)):
    """Hand-built outputs of one 64x64 image: a circle of ``radius`` px at the given cells."""
    h = w = SIZE // STRIDE
    score = torch.full((1, 1, h, w), -20.0)
    fourier = torch.zeros(1, CONFIG.fourier_order, 4, h, w)
    loc = torch.zeros(1, 2, h, w)
    for i, (row, col) in enumerate(cells):
        score[0, 0, row, col] = score_logit - 0.3 * i  # later cells score lower
        fourier[0, 0, 0, row, col] = radius  # a_1: x = x0 + r cos 2πt
        fourier[0, 0, 3, row, col] = radius  # d_1: y = y0 + r sin 2πt
        loc[0, 0, row, col], loc[0, 1, row, col] = location
    if refinement is None:
        refinement = torch.zeros(1, 2 * CONFIG.refinement_buckets, SIZE // 2, SIZE // 2)
    return NetworkOutput(
        score_logits=score,
        location=loc,
        fourier=fourier,
        refinement=refinement,
        guide_logits=None if guide_logit is None else torch.full((1, 1, SIZE // 2, SIZE // 2), guide_logit),
        head_features=torch.zeros(1, 16, h, w),
    )


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_decode_single_circle():
    nuclei, guide_map = decode_nuclei(_output(), 0, CONFIG, PostprocessConfig())
    assert len(nuclei) == 1
    nucleus = nuclei[0]
    assert isinstance(nucleus, Nucleus)
    ring = nucleus.polygon
    assert ring.dtype == np.float64 and ring.ndim == 2 and ring.shape[1] == 2
    np.testing.assert_array_equal(ring[0], ring[-1])  # closed
    polygon = shapely.Polygon(ring)
    assert polygon.is_valid
    assert polygon.area == pytest.approx(math.pi * RADIUS**2, rel=0.05)
    np.testing.assert_allclose(nucleus.centroid, CELL_CENTRE, atol=0.05)
    # Every vertex is on the circle.
    np.testing.assert_allclose(np.hypot(ring[:, 0] - CELL_CENTRE[0], ring[:, 1] - CELL_CENTRE[1]), RADIUS, atol=1e-4)
    assert nucleus.score == pytest.approx(_sigmoid(3.0), abs=1e-6)
    assert nucleus.guide == pytest.approx(_sigmoid(8.0), abs=1e-5)
    assert guide_map is not None and guide_map.shape == (SIZE // 2, SIZE // 2) and guide_map.dtype == np.float32
    assert guide_map.min() >= 0.0 and guide_map.max() <= 1.0


def test_decode_applies_location_offset():
    nuclei, _ = decode_nuclei(_output(location=(1.5, -2.0)), 0, CONFIG, PostprocessConfig())
    assert len(nuclei) == 1
    np.testing.assert_allclose(nuclei[0].centroid, (CELL_CENTRE[0] + 1.5, CELL_CENTRE[1] - 2.0), atol=0.05)


def test_decode_applies_refinement_each_iteration():
    refinement = torch.zeros(1, 2 * CONFIG.refinement_buckets, SIZE // 2, SIZE // 2)
    refinement[:, 0::2] = 1.0
    refinement[:, 1::2] = -0.5
    nuclei, _ = decode_nuclei(_output(refinement=refinement), 0, CONFIG, PostprocessConfig())
    assert len(nuclei) == 1
    shift = CONFIG.refinement_iterations
    np.testing.assert_allclose(nuclei[0].centroid, (CELL_CENTRE[0] + shift, CELL_CENTRE[1] - 0.5 * shift), atol=0.05)
    assert shapely.Polygon(nuclei[0].polygon).area == pytest.approx(math.pi * RADIUS**2, rel=0.05)


def test_guide_filter_drops_low_guide_nucleus():
    output = _output(guide_logit=-8.0)
    nuclei, guide_map = decode_nuclei(output, 0, CONFIG, PostprocessConfig(guide_threshold=0.5))
    assert nuclei == []
    assert guide_map is not None and guide_map.max() < 0.01
    nuclei, _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig(guide_threshold=0.0))  # filter off
    assert len(nuclei) == 1
    assert nuclei[0].guide == pytest.approx(_sigmoid(-8.0), abs=1e-5)


def test_guide_filter_uses_the_maximum_inside_the_polygon():
    output = _output(guide_logit=-8.0)
    # One bright guide cell inside the circle (stride-2 guide cell (15, 19) covers px 30-31, 38-39).
    output.guide_logits[0, 0, 15, 19] = 8.0
    nuclei, _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig(guide_threshold=0.5))
    assert len(nuclei) == 1 and nuclei[0].guide > 0.5
    # The same bright cell far outside the circle does not rescue it.
    output = _output(guide_logit=-8.0)
    output.guide_logits[0, 0, 2, 2] = 8.0
    nuclei, _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig(guide_threshold=0.5))
    assert nuclei == []


def test_no_guide_gives_nan():
    nuclei, guide_map = decode_nuclei(_output(guide_logit=None), 0, ModelConfig.tiny(guide="none"), PostprocessConfig())
    assert guide_map is None
    assert len(nuclei) == 1 and math.isnan(nuclei[0].guide)


def test_valid_size_drops_proposals_centred_outside():
    output = _output()  # cell centre x = 38, y = 30
    nuclei, guide_map = decode_nuclei(output, 0, CONFIG, PostprocessConfig(), valid_size=(64, 36))
    assert nuclei == []
    assert guide_map is not None and guide_map.shape == (32, 18)  # stride 2
    nuclei, guide_map = decode_nuclei(output, 0, CONFIG, PostprocessConfig(), valid_size=(28, 64))
    assert nuclei == [] and guide_map.shape == (14, 32)
    # (height, width) order: swapping the numbers keeps the proposal.
    nuclei, _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig(), valid_size=(36, 64))
    assert len(nuclei) == 1


def test_region_keeps_only_nuclei_centred_in_it():
    output = _output(cells=((ROW, COL), (3, 3)))  # circles centred at (38, 30) and (14, 14) px
    everything, _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig())
    assert len(everything) == 2
    (kept,), _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig(), region=(20.0, 20.0, 64.0, 64.0))
    np.testing.assert_array_equal(kept.polygon, everything[0].polygon)
    (kept,), _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig(), region=(0.0, 0.0, 20.0, 20.0))
    np.testing.assert_array_equal(kept.polygon, everything[1].polygon)
    # Half-open: a centroid on the right or bottom edge is outside.
    assert decode_nuclei(output, 0, CONFIG, PostprocessConfig(), region=(0.0, 0.0, 14.0, 64.0))[0] == []


def test_region_does_not_change_suppression():
    # The best proposal lies outside the region and still suppresses its overlapping rival inside.
    output = _output(cells=((ROW, COL), (ROW, COL + 1)))
    output.fourier[0, 0, 0, ROW, COL + 1] = RADIUS * 1.4  # a wider outline, centred at (42, 30)
    nuclei, _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig())
    assert len(nuclei) == 1 and nuclei[0].centroid[0] < 40
    assert decode_nuclei(output, 0, CONFIG, PostprocessConfig(), region=(40.0, 0.0, 64.0, 64.0))[0] == []


def test_non_finite_proposals_are_dropped():
    output = _output(cells=((ROW, COL), (3, 3)))
    output.fourier[0, 0, 0, 3, 3] = float("inf")  # an overflowing output at the second cell
    (nucleus,), _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig())
    np.testing.assert_allclose(nucleus.centroid, CELL_CENTRE, atol=0.05)


def test_nms_threshold_of_one_keeps_overlapping_proposals():
    output = _output(cells=((ROW, COL), (ROW, COL + 1)))
    output.location[0, 0, ROW, COL + 1] = -float(STRIDE)  # both cells propose the very same circle
    assert len(decode_nuclei(output, 0, CONFIG, PostprocessConfig())[0]) == 1
    assert len(decode_nuclei(output, 0, CONFIG, PostprocessConfig(nms_threshold=1.0))[0]) == 2


def test_score_threshold_and_min_area():
    assert decode_nuclei(_output(score_logit=1.0), 0, CONFIG, PostprocessConfig())[0] == []  # 0.73 < 0.9
    assert len(decode_nuclei(_output(score_logit=1.0), 0, CONFIG, PostprocessConfig(score_threshold=0.5))[0]) == 1
    small = _output(radius=2.0)  # area ~12.5 px² < 20
    assert decode_nuclei(small, 0, CONFIG, PostprocessConfig())[0] == []
    assert len(decode_nuclei(small, 0, CONFIG, PostprocessConfig(min_area=10.0))[0]) == 1


def test_nms_between_proposals_and_score_order():
    # Two neighbouring cells propose the same circle (one suppressed); a far one survives.
    output = _output(cells=((ROW, COL), (3, 3), (ROW, COL + 1)))
    nuclei, _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig())
    assert len(nuclei) == 2
    assert [n.score for n in nuclei] == pytest.approx([_sigmoid(3.0), _sigmoid(2.7)], abs=1e-6)
    np.testing.assert_allclose(nuclei[0].centroid, CELL_CENTRE, atol=0.05)
    np.testing.assert_allclose(nuclei[1].centroid, (14.0, 14.0), atol=0.05)


def test_decode_picks_the_requested_image_of_a_batch():
    first, second = _output(), _output(cells=((3, 3),))
    batch = NetworkOutput(
        **{
            name: torch.cat([getattr(first, name), getattr(second, name)])
            for name in ("score_logits", "location", "fourier", "refinement", "guide_logits", "head_features")
        }
    )
    (a,), _ = decode_nuclei(batch, 0, CONFIG, PostprocessConfig())
    (b,), _ = decode_nuclei(batch, 1, CONFIG, PostprocessConfig())
    np.testing.assert_allclose(a.centroid, CELL_CENTRE, atol=0.05)
    np.testing.assert_allclose(b.centroid, (14.0, 14.0), atol=0.05)


def test_self_intersecting_contour_becomes_a_valid_polygon():
    output = _output()
    # A figure-eight: x = r cos 2πt, y = r sin 4πt (d_2 instead of d_1).
    output.fourier[0, 0, 3, ROW, COL] = 0.0
    output.fourier[0, 1, 3, ROW, COL] = 8.0
    output.fourier[0, 0, 0, ROW, COL] = 12.0
    nuclei, _ = decode_nuclei(output, 0, CONFIG, PostprocessConfig())
    assert len(nuclei) == 1
    polygon = shapely.Polygon(nuclei[0].polygon)
    assert polygon.is_valid and polygon.area >= 20
    np.testing.assert_array_equal(nuclei[0].polygon[0], nuclei[0].polygon[-1])


def test_postprocess_config_validates_thresholds():
    with pytest.raises(ValueError):
        PostprocessConfig(score_threshold=1.5)
    with pytest.raises(ValueError):
        PostprocessConfig(guide_threshold=-0.1)
