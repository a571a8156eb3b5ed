"""Instance-segmentation metrics for nucleus label maps: PQ (DQ x SQ) and AJI.

Inputs are 2-D integer label maps of equal shape, 0 = background, any positive
ids (not necessarily sequential).  All pairwise overlaps are computed in one
vectorised pass over the foreground pixels.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "InstanceScores",
    "InstanceOverlap",
    "match_instances",
    "panoptic_quality",
    "aggregated_jaccard_index",
    "score_instances",
    "mean_scores",
]


@dataclass(frozen=True)
class InstanceScores:
    """Scores of one image.

    pq: panoptic quality, ``dq * sq`` (0..1).
    dq: detection quality, ``TP / (TP + FP/2 + FN/2)`` (an F1 score of detection).
    sq: segmentation quality, mean IoU of the matched (IoU > 0.5) pairs.
    aji: aggregated Jaccard index (Kumar et al. 2017).
    true_positives: matched GT/prediction pairs.
    false_positives: predicted instances not matched to any GT instance.
    false_negatives: GT instances not matched to any predicted instance.
    """

    pq: float
    dq: float
    sq: float
    aji: float
    true_positives: int
    false_positives: int
    false_negatives: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain ``dict`` of all fields (for JSON / CSV reports)."""
        return asdict(self)


@dataclass(frozen=True)
class InstanceOverlap:
    """Sparse overlap table between GT and predicted instances.

    truth_ids / pred_ids: the original positive ids, sorted ascending.
    truth_areas / pred_areas: pixel counts per instance (same order as the ids).
    pair_truth / pair_pred: indices (into truth_ids / pred_ids) of every pair
        of instances sharing at least one pixel.
    pair_intersection: pixel count of each pair's intersection.
    pair_iou: IoU of each pair.
    """

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    truth_areas: np.ndarray
    pred_areas: np.ndarray
    pair_truth: np.ndarray
    pair_pred: np.ndarray
    pair_intersection: np.ndarray
    pair_iou: np.ndarray


def _validate(truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    prediction = np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(
            f"shape mismatch: truth {truth.shape} vs prediction {prediction.shape}"
        )
    if truth.ndim != 2:
        raise ValueError(f"label maps must be 2-D, got {truth.ndim}-D")
    for name, arr in (("truth", truth), ("prediction", prediction)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
        if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
            raise ValueError(f"{name} contains negative labels")
    if truth.dtype == np.bool_:
        truth = truth.astype(np.uint8)
    if prediction.dtype == np.bool_:
        prediction = prediction.astype(np.uint8)
    return truth, prediction


def _dense_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (positive ids, areas, per-pixel index into ids with -1 = background)."""
    flat = labels.ravel()
    max_id = int(flat.max()) if flat.size else 0
    if max_id <= 4 * flat.size + 1024:
        # Lookup-table remap: O(N), no sort.
        flat = flat.astype(np.intp, copy=False)
        counts = np.bincount(flat, minlength=max_id + 1).astype(np.int64)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.full(max_id + 1, -1, dtype=np.int64)
        lut[ids] = np.arange(ids.size)
        return ids.astype(labels.dtype), counts[ids], lut[flat]
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    if ids.size and ids[0] == 0:
        ids, counts = ids[1:], counts[1:]
        inverse -= 1  # background -> -1, first positive id -> 0
    return ids, counts.astype(np.int64), inverse


def match_instances(truth: np.ndarray, prediction: np.ndarray) -> InstanceOverlap:
    """Compute the sparse GT x prediction overlap table in one vectorised pass.

    Only pairs that share at least one pixel are listed.  Raises ValueError on
    shape mismatch, non-2-D input, non-integer dtype or negative labels.
    """
    truth, prediction = _validate(truth, prediction)
    t_ids, t_areas, t_idx = _dense_labels(truth)
    p_ids, p_areas, p_idx = _dense_labels(prediction)

    both = (t_idx >= 0) & (p_idx >= 0)
    n_pred = max(int(p_ids.size), 1)
    codes = t_idx[both] * n_pred + p_idx[both]
    pair_codes, inter = np.unique(codes, return_counts=True)
    pair_t = pair_codes // n_pred
    pair_p = pair_codes % n_pred
    inter = inter.astype(np.int64)
    union = t_areas[pair_t] + p_areas[pair_p] - inter
    iou = inter / union if inter.size else np.zeros(0, dtype=np.float64)

    return InstanceOverlap(
        truth_ids=t_ids,
        pred_ids=p_ids,
        truth_areas=t_areas,
        pred_areas=p_areas,
        pair_truth=pair_t,
        pair_pred=pair_p,
        pair_intersection=inter,
        pair_iou=iou.astype(np.float64),
    )


def _pq_from_overlap(
    ov: InstanceOverlap, iou_threshold: float
) -> tuple[float, float, float, int, int, int]:
    if not 0.5 <= iou_threshold < 1.0:
        # Below 0.5 a one-to-one matching is no longer guaranteed without Hungarian.
        raise ValueError(f"iou_threshold must be in [0.5, 1), got {iou_threshold}")
    n_t, n_p = int(ov.truth_ids.size), int(ov.pred_ids.size)
    if n_t == 0 and n_p == 0:
        return 1.0, 1.0, 1.0, 0, 0, 0
    if n_t == 0 or n_p == 0:
        return 0.0, 0.0, 0.0, 0, n_p, n_t

    matched = ov.pair_iou > iou_threshold
    tp = int(np.count_nonzero(matched))
    fp = n_p - tp
    fn = n_t - tp
    if tp == 0:
        return 0.0, 0.0, 0.0, 0, fp, fn
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(ov.pair_iou[matched].mean())
    return dq * sq, dq, sq, tp, fp, fn


def _aji_from_overlap(ov: InstanceOverlap) -> float:
    n_t, n_p = int(ov.truth_ids.size), int(ov.pred_ids.size)
    if n_t == 0 and n_p == 0:
        return 1.0
    if n_t == 0 or n_p == 0:
        return 0.0

    # Best prediction per GT: sort pairs by GT index, then by IoU descending
    # (ties broken by the lower prediction index), keep the first per GT.
    order = np.lexsort((ov.pair_pred, -ov.pair_iou, ov.pair_truth))
    pt = ov.pair_truth[order]
    first = np.ones(pt.size, dtype=bool)
    first[1:] = pt[1:] != pt[:-1]
    best = order[first]

    best_t = ov.pair_truth[best]
    best_p = ov.pair_pred[best]
    inter = ov.pair_intersection[best]
    union_pairs = ov.truth_areas[best_t] + ov.pred_areas[best_p] - inter

    covered = np.zeros(n_t, dtype=bool)
    covered[best_t] = True
    used = np.zeros(n_p, dtype=bool)
    used[best_p] = True

    c_total = int(inter.sum())
    u_total = (
        int(union_pairs.sum())
        + int(ov.truth_areas[~covered].sum())  # GT with no overlapping prediction
        + int(ov.pred_areas[~used].sum())  # predictions never chosen
    )
    return c_total / u_total if u_total else 0.0


def panoptic_quality(
    truth: np.ndarray, prediction: np.ndarray, iou_threshold: float = 0.5
) -> tuple[float, float, float, int, int, int]:
    """Panoptic quality ``(pq, dq, sq, tp, fp, fn)``.

    A GT and a predicted instance match when their IoU is strictly greater than
    ``iou_threshold`` (must be in [0.5, 1), which makes matching one-to-one;
    ValueError otherwise).  ``dq = TP / (TP + FP/2
    + FN/2)``, ``sq`` = mean IoU of the matched pairs, ``pq = dq * sq``.

    Conventions: both maps empty -> pq = dq = sq = 1.0 (nothing to find, nothing
    found); exactly one empty -> 0.0; no match although both non-empty -> 0.0.
    """
    return _pq_from_overlap(match_instances(truth, prediction), iou_threshold)


def aggregated_jaccard_index(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017), in 0..1.

    Each GT nucleus is paired with the intersecting prediction of largest IoU
    (a prediction may be chosen by several GT nuclei); C sums the pairs'
    intersections and U their unions.  A GT nucleus with no intersecting
    prediction adds its area to U; every prediction never chosen adds its area
    to U.  AJI = C / U.

    Conventions: both maps empty -> 1.0; exactly one empty -> 0.0.
    """
    return _aji_from_overlap(match_instances(truth, prediction))


def score_instances(truth: np.ndarray, prediction: np.ndarray) -> InstanceScores:
    """PQ / DQ / SQ (IoU > 0.5 matching) and AJI of one image, from one overlap pass.

    Empty-map conventions are those of :func:`panoptic_quality` and
    :func:`aggregated_jaccard_index`.
    """
    ov = match_instances(truth, prediction)
    pq, dq, sq, tp, fp, fn = _pq_from_overlap(ov, 0.5)
    aji = _aji_from_overlap(ov)
    logger.debug("scores: pq=%.4f dq=%.4f sq=%.4f aji=%.4f tp=%d fp=%d fn=%d",
                 pq, dq, sq, aji, tp, fp, fn)
    return InstanceScores(
        pq=float(pq), dq=float(dq), sq=float(sq), aji=float(aji),
        true_positives=int(tp), false_positives=int(fp), false_negatives=int(fn),
    )


def mean_scores(scores: Sequence[InstanceScores]) -> dict[str, float]:
    """Per-image mean of pq, dq, sq, aji ("mean PQ" as in the FrGNet paper).

    Also returns ``true_positives``, ``false_positives`` and ``false_negatives``
    summed over images, and ``n_images``.  Raises ValueError on an empty sequence.
    """
    scores = list(scores)
    if not scores:
        raise ValueError("mean_scores needs at least one InstanceScores")
    out: dict[str, float] = {
        key: float(np.mean([getattr(s, key) for s in scores]))
        for key in ("pq", "dq", "sq", "aji")
    }
    for key in ("true_positives", "false_positives", "false_negatives"):
        out[key] = int(sum(getattr(s, key) for s in scores))
    out["n_images"] = len(scores)
    return out
