"""Tests for wsi_frgnet.eval.metrics (PQ / DQ / SQ / AJI)."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_frgnet.eval.metrics import (
    InstanceScores,
    aggregated_jaccard_index,
    match_instances,
    mean_scores,
    panoptic_quality,
    score_instances,
)

# ---------------------------------------------------------------- fixtures


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    """10x10 case with hand-computed scores.

    GT 1: rows 0-3, cols 0-3 (16 px)
    GT 2: rows 6-9, cols 6-9 (16 px)
    P 10: rows 0-3, cols 1-4 (16 px): inter GT1 = 4x3 = 12, union 20, IoU 0.6 -> TP
    P 20: rows 6-9, cols 5-7 (12 px): inter GT2 = 4x2 = 8,  union 20, IoU 0.4 -> no match
    P 30: rows 0-1, cols 7-9 (6 px):  touches nothing                         -> FP
    """
    gt = np.zeros((10, 10), dtype=np.int32)
    gt[0:4, 0:4] = 1
    gt[6:10, 6:10] = 2
    pr = np.zeros((10, 10), dtype=np.int32)
    pr[0:4, 1:5] = 10
    pr[6:10, 5:8] = 20
    pr[0:2, 7:10] = 30
    return gt, pr


def _random_map(rng: np.random.Generator, shape=(40, 40), n=12) -> np.ndarray:
    """Random non-overlapping rectangles with random (non-sequential) ids."""
    lab = np.zeros(shape, dtype=np.int64)
    ids = rng.choice(np.arange(1, 10_000), size=n, replace=False)
    for i in ids:
        r, c = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        h, w = rng.integers(2, 10), rng.integers(2, 10)
        lab[r : r + h, c : c + w] = i
    return lab


def _reference(gt: np.ndarray, pr: np.ndarray) -> tuple[float, float, float, float]:
    """Slow, literal implementation of the definitions (pq, dq, sq, aji)."""
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [j for j in np.unique(pr) if j]
    if not g_ids and not p_ids:
        return 1.0, 1.0, 1.0, 1.0
    if not g_ids or not p_ids:
        return 0.0, 0.0, 0.0, 0.0
    iou = {}
    for i in g_ids:
        for j in p_ids:
            a, b = gt == i, pr == j
            inter = np.logical_and(a, b).sum()
            if inter:
                iou[i, j] = (inter / np.logical_or(a, b).sum(), inter, np.logical_or(a, b).sum())
    matches = [v[0] for v in iou.values() if v[0] > 0.5]
    tp = len(matches)
    fp, fn = len(p_ids) - tp, len(g_ids) - tp
    if tp:
        dq = tp / (tp + fp / 2 + fn / 2)
        sq = float(np.mean(matches))
    else:
        dq = sq = 0.0
    c = u = 0
    used = set()
    for i in g_ids:
        cands = [(v[0], -j, j) for (gi, j), v in iou.items() if gi == i]
        if not cands:
            u += (gt == i).sum()
            continue
        _, _, j = max(cands)
        used.add(j)
        c += iou[i, j][1]
        u += iou[i, j][2]
    for j in p_ids:
        if j not in used:
            u += (pr == j).sum()
    return dq * sq, dq, sq, c / u


# ---------------------------------------------------------------- tests


def test_identical_maps_score_one():
    gt, _ = _hand_case()
    s = score_instances(gt, gt.copy())
    assert (s.pq, s.dq, s.sq, s.aji) == (1.0, 1.0, 1.0, 1.0)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (2, 0, 0)


def test_hand_computed_case():
    gt, pr = _hand_case()
    pq, dq, sq, tp, fp, fn = panoptic_quality(gt, pr)
    # TP = 1 (GT1-P10, IoU 0.6); FP = 2 (P20 at IoU 0.4, P30); FN = 1 (GT2)
    assert (tp, fp, fn) == (1, 2, 1)
    # DQ = 1 / (1 + 2/2 + 1/2) = 1 / 2.5 = 0.4
    assert dq == pytest.approx(0.4)
    # SQ = 0.6 (only matched pair)
    assert sq == pytest.approx(0.6)
    # PQ = 0.4 * 0.6 = 0.24
    assert pq == pytest.approx(0.24)
    # AJI: GT1 -> P10 (I 12, U 20); GT2 -> P20 (I 8, U 20); P30 unused adds 6.
    # C = 20, U = 20 + 20 + 6 = 46 -> 20 / 46
    assert aggregated_jaccard_index(gt, pr) == pytest.approx(20 / 46)

    s = score_instances(gt, pr)
    assert s == InstanceScores(
        pq=pytest.approx(0.24), dq=pytest.approx(0.4), sq=pytest.approx(0.6),
        aji=pytest.approx(20 / 46), true_positives=1, false_positives=2, false_negatives=1,
    )
    d = s.as_dict()
    assert set(d) == {"pq", "dq", "sq", "aji", "true_positives",
                      "false_positives", "false_negatives"}
    assert d["pq"] == pytest.approx(0.24)


def test_iou_exactly_half_is_not_a_match():
    gt = np.zeros((4, 4), dtype=np.int32)
    gt[0:2, 0:2] = 1  # 4 px
    pr = np.zeros((4, 4), dtype=np.int32)
    pr[0:2, 0:1] = 5  # 2 px inside GT: IoU = 2/4 = 0.5 exactly
    pq, dq, sq, tp, fp, fn = panoptic_quality(gt, pr)
    assert (pq, dq, sq, tp, fp, fn) == (0.0, 0.0, 0.0, 0, 1, 1)
    assert aggregated_jaccard_index(gt, pr) == pytest.approx(0.5)


def test_aji_unused_prediction_and_uncovered_gt():
    gt = np.zeros((10, 10), dtype=np.int32)
    gt[0:2, 0:2] = 1  # 4 px
    gt[5:7, 5:7] = 2  # 4 px, no prediction overlaps it
    pr = np.zeros((10, 10), dtype=np.int32)
    pr[0:2, 0:3] = 3  # 6 px, I(GT1) = 4, U = 6
    pr[8:10, 0:3] = 4  # 6 px, never chosen
    # C = 4; U = 6 (GT1 u P3) + 4 (GT2 alone) + 6 (P4 unused) = 16
    assert aggregated_jaccard_index(gt, pr) == pytest.approx(4 / 16)


def test_aji_prediction_shared_by_two_gt_counts_twice():
    gt = np.zeros((2, 4), dtype=np.int32)
    gt[:, 0:2] = 1
    gt[:, 2:4] = 2
    pr = np.ones((2, 4), dtype=np.int32) * 7  # one 8 px prediction over both
    # GT1 -> P7: I 4, U 8; GT2 -> P7: I 4, U 8  => 8 / 16
    assert aggregated_jaccard_index(gt, pr) == pytest.approx(0.5)


def test_aji_picks_max_iou_not_max_intersection():
    gt = np.zeros((10, 10), dtype=np.int32)
    gt[0:4, 0:4] = 1  # 16 px
    pr = np.zeros((10, 10), dtype=np.int32)
    pr[0:4, 0:1] = 1  # 4 px, I = 4, IoU = 4/16 = 0.25
    pr[:, 1:10] = 2  # 90 px, I = 12, IoU = 12/94 ~ 0.128
    # GT1 -> P1: C = 4, U = 16; P2 unused adds 90 -> 4 / 106
    assert aggregated_jaccard_index(gt, pr) == pytest.approx(4 / 106)


def test_empty_prediction():
    gt, _ = _hand_case()
    pr = np.zeros_like(gt)
    s = score_instances(gt, pr)
    assert (s.pq, s.dq, s.sq, s.aji) == (0.0, 0.0, 0.0, 0.0)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (0, 0, 2)


def test_empty_ground_truth():
    _, pr = _hand_case()
    gt = np.zeros_like(pr)
    s = score_instances(gt, pr)
    assert (s.pq, s.dq, s.sq, s.aji) == (0.0, 0.0, 0.0, 0.0)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (0, 3, 0)


def test_both_empty():
    z = np.zeros((5, 5), dtype=np.uint16)
    s = score_instances(z, z)
    assert (s.pq, s.dq, s.sq, s.aji) == (1.0, 1.0, 1.0, 1.0)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (0, 0, 0)


def test_no_match_but_both_nonempty():
    gt = np.zeros((6, 6), dtype=np.int32)
    gt[0:2, 0:2] = 1
    pr = np.zeros((6, 6), dtype=np.int32)
    pr[4:6, 4:6] = 1
    assert panoptic_quality(gt, pr) == (0.0, 0.0, 0.0, 0, 1, 1)
    # C = 0, U = 4 + 4
    assert aggregated_jaccard_index(gt, pr) == 0.0


def test_relabelling_invariance():
    gt, pr = _hand_case()
    base = score_instances(gt, pr)
    # permute ids (and make them large / non-sequential / different dtype)
    gt2 = np.select([gt == 1, gt == 2], [900, 7], 0).astype(np.uint32)
    pr2 = np.select([pr == 10, pr == 20, pr == 30], [3, 1, 65000], 0).astype(np.int64)
    s = score_instances(gt2, pr2)
    assert s.as_dict() == pytest.approx(base.as_dict())


def test_random_maps_match_reference_and_permutation():
    rng = np.random.default_rng(0)
    for _ in range(30):
        gt = _random_map(rng)
        # predictions: perturbed copy of gt plus noise instances
        pr = np.roll(gt, shift=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1))
        noise = _random_map(rng, n=3)
        pr = np.where(noise > 0, noise + 20_000, pr)
        s = score_instances(gt, pr)
        pq, dq, sq, aji = _reference(gt, pr)
        assert (s.pq, s.dq, s.sq, s.aji) == pytest.approx((pq, dq, sq, aji))
        # permuting ids changes nothing
        ids = np.unique(pr)
        perm = np.concatenate([[0], rng.permutation(ids[ids > 0]) + 1])
        lut = dict(zip(ids.tolist(), perm.tolist()))
        pr_perm = np.vectorize(lut.get)(pr)
        assert score_instances(gt, pr_perm).as_dict() == pytest.approx(s.as_dict())


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        score_instances(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError):
        panoptic_quality(np.zeros((4, 4), int), np.zeros((5, 4), int))
    with pytest.raises(ValueError):
        aggregated_jaccard_index(np.zeros((4, 4), int), np.zeros((4,), int))


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        score_instances(np.zeros((4, 4), float), np.zeros((4, 4), float))
    with pytest.raises(ValueError):
        score_instances(-np.ones((4, 4), int), np.zeros((4, 4), int))
    with pytest.raises(ValueError):
        score_instances(np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), int))
    with pytest.raises(ValueError):
        panoptic_quality(np.zeros((4, 4), int), np.zeros((4, 4), int), iou_threshold=0.3)


def test_match_instances_table():
    gt, pr = _hand_case()
    ov = match_instances(gt, pr)
    assert ov.truth_ids.tolist() == [1, 2]
    assert ov.pred_ids.tolist() == [10, 20, 30]
    assert ov.truth_areas.tolist() == [16, 16]
    assert ov.pred_areas.tolist() == [16, 12, 6]
    pairs = {
        (int(ov.truth_ids[t]), int(ov.pred_ids[p])): (int(i), float(u))
        for t, p, i, u in zip(ov.pair_truth, ov.pair_pred, ov.pair_intersection, ov.pair_iou)
    }
    assert pairs == {(1, 10): (12, pytest.approx(0.6)), (2, 20): (8, pytest.approx(0.4))}


def test_mean_scores_averages_per_image():
    a = InstanceScores(pq=0.2, dq=0.4, sq=0.5, aji=0.3,
                       true_positives=1, false_positives=2, false_negatives=3)
    b = InstanceScores(pq=0.6, dq=0.8, sq=0.75, aji=0.5,
                       true_positives=10, false_positives=0, false_negatives=1)
    m = mean_scores([a, b])
    assert m["pq"] == pytest.approx(0.4)
    assert m["dq"] == pytest.approx(0.6)
    assert m["sq"] == pytest.approx(0.625)
    assert m["aji"] == pytest.approx(0.4)
    assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (11, 2, 4)
    # per-image mean, not pooled: pooled DQ would be 11 / (11 + 1 + 2) != 0.6
    assert m["dq"] != pytest.approx(11 / 14)
    with pytest.raises(ValueError):
        mean_scores([])


def test_large_map_with_large_ids():
    rng = np.random.default_rng(1)
    # ~625 instances on a 1000x1000 grid of 40x40 cells, random sizes and ids
    gt = np.zeros((1000, 1000), dtype=np.int32)
    ids = rng.permutation(np.arange(1, 100_000))[:625]
    k = 0
    for r in range(0, 1000, 40):
        for c in range(0, 1000, 40):
            h, w = rng.integers(15, 38, size=2)
            gt[r : r + h, c : c + w] = ids[k]
            k += 1
    pr = np.roll(gt, shift=(2, 3), axis=(0, 1))
    s = score_instances(gt, pr)
    assert s.true_positives == 625
    assert s.false_positives == 0 and s.false_negatives == 0
