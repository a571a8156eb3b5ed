"""Tests for wsi_frgnet.geometry (outlines, Fourier contours, the rasteriser, boxes) and
wsi_frgnet.model.refinement.

Frame: x right, y down; pixel (row r, col c) has its centre at (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch

from wsi_frgnet.geometry.boxes import bounding_boxes
from wsi_frgnet.geometry.fourier import (
    decode_contours,
    elliptic_fourier_descriptors,
    fourier_basis,
    resample_polygon,
)
from wsi_frgnet.geometry.outlines import centroids, trace_outline
from wsi_frgnet.geometry.raster import polygon_maxima, polygons_to_label_map
from wsi_frgnet.model.refinement import refine_contours

# ----------------------------------------------------------------- helpers


def _ellipse_mask(shape, cx, cy, a, b, angle_deg=0.0):
    """Pixels whose centre lies inside the ellipse (semi-axes a along the rotated x axis, b)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    theta = np.radians(angle_deg)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _ellipse_curve(cx, cy, a, b, angle_deg=0.0, n=20000):
    theta = np.radians(angle_deg)
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    x = cx + a * np.cos(t) * np.cos(theta) - b * np.sin(t) * np.sin(theta)
    y = cy + a * np.cos(t) * np.sin(theta) + b * np.sin(t) * np.cos(theta)
    return np.stack([x, y], axis=1)


def _nearest_distance(points, curve):
    """Distance of every point to the nearest point of a densely sampled curve."""
    d2 = ((points[:, None, :] - curve[None, :, :]) ** 2).sum(axis=-1)
    return np.sqrt(d2.min(axis=1))


def _decode(centre, coefficients, samples):
    """(samples, 2) points of one contour, decoded in float64 by the library's decoder."""
    decoded = decode_contours(torch.from_numpy(np.asarray(centre, np.float64)[None]),
                              torch.from_numpy(np.asarray(coefficients, np.float64)[None]), samples)
    return decoded[0].numpy()


def _mask(polygon, shape):
    """Pixels of one polygon by the library's rasteriser."""
    return polygons_to_label_map([np.asarray(polygon, dtype=np.float64)], shape) > 0


def _shoelace(polygon):
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


# ------------------------------------------------ tracing → Fourier → curve


@pytest.mark.parametrize(
    "cx, cy, a, b, angle",
    [
        (31.3, 29.7, 12.0, 12.0, 0.0),  # disc, off-grid centre
        (32.4, 30.8, 18.0, 9.0, 30.0),  # ellipse rotated by 30 degrees
    ],
    ids=["disc", "ellipse30"],
)
def test_fourier_contour_of_traced_shape_matches_analytic_curve(cx, cy, a, b, angle):
    mask = _ellipse_mask((64, 64), cx, cy, a, b, angle)
    outline = trace_outline(mask)
    centre, coefficients = elliptic_fourier_descriptors(outline, order=12)
    assert coefficients.shape == (12, 4)
    assert np.hypot(centre[0] - cx, centre[1] - cy) < 0.5

    contour = _decode(centre, coefficients, 128)
    assert contour.shape == (128, 2)
    truth = _ellipse_curve(cx, cy, a, b, angle)
    # Every sampled point lies within 0.5 px of the true curve ...
    assert _nearest_distance(contour, truth).max() < 0.5
    # ... and the contour goes all the way round: every true point is near the contour.
    dense = _decode(centre, coefficients, 4000)
    assert _nearest_distance(truth[::20], dense).max() < 0.5


def test_fourier_descriptors_of_an_analytic_ellipse_are_exact():
    # A finely sampled ellipse x = x0 + A cos 2πt, y = y0 + D sin 2πt (t ∝ angle, nearly ∝ arc
    # length for a circle): a_1 = r, d_1 = r, all else ~0.
    t = np.arange(2000) / 2000
    polygon = np.stack([10.0 + 7.0 * np.cos(2 * np.pi * t), 20.0 + 7.0 * np.sin(2 * np.pi * t)], axis=1)
    centre, coefficients = elliptic_fourier_descriptors(polygon, order=4)
    np.testing.assert_allclose(centre, [10.0, 20.0], atol=1e-6)
    expected = np.zeros((4, 4))
    expected[0, 0] = 7.0
    expected[0, 3] = 7.0
    np.testing.assert_allclose(coefficients, expected, atol=1e-3)


def test_fourier_contour_starts_at_first_vertex_and_runs_like_the_polygon():
    # A square traversed from (0, 0): t = 0 must map back near (0, 0), t = 1/4 near (4, 0).
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], dtype=float)
    centre, coefficients = elliptic_fourier_descriptors(square, order=40)
    np.testing.assert_allclose(centre, [2.0, 2.0], atol=1e-9)
    points = _decode(centre, coefficients, 8)
    np.testing.assert_allclose(points[0], [0.0, 0.0], atol=0.15)
    np.testing.assert_allclose(points[2], [4.0, 0.0], atol=0.15)
    np.testing.assert_allclose(points[1], [2.0, 0.0], atol=0.05)  # edge midpoint


def test_elliptic_fourier_descriptors_ignore_closing_point_and_edge_subdivision():
    outline = trace_outline(_ellipse_mask((40, 40), 19.3, 21.1, 12.0, 7.0, 45.0))
    centre, coefficients = elliptic_fourier_descriptors(outline, order=8)
    closed = np.vstack([outline, outline[:1]])
    c2, k2 = elliptic_fourier_descriptors(closed, order=8)
    np.testing.assert_allclose(c2, centre, atol=1e-9)
    np.testing.assert_allclose(k2, coefficients, atol=1e-9)
    # Inserting the midpoint of every edge leaves the curve, hence the descriptors, unchanged.
    midpoints = (outline + np.roll(outline, -1, axis=0)) / 2
    denser = np.empty((2 * len(outline), 2))
    denser[0::2], denser[1::2] = outline, midpoints
    c3, k3 = elliptic_fourier_descriptors(denser, order=8)
    np.testing.assert_allclose(c3, centre, atol=1e-9)
    np.testing.assert_allclose(k3, coefficients, atol=1e-9)


def test_elliptic_fourier_descriptors_reject_degenerate_polygon():
    with pytest.raises(ValueError):
        elliptic_fourier_descriptors(np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]), order=3)


# ---------------------------------------------------------------- trace_outline


def _blob_masks():
    masks = {}
    m = np.zeros((12, 12), bool)
    m[2:10, 2:5] = True
    m[7:10, 2:10] = True
    masks["L_shape"] = m
    m = np.zeros((5, 14), bool)
    m[2, 1:12] = True
    masks["horizontal_line"] = m
    m = np.zeros((14, 5), bool)
    m[1:13, 3] = True
    masks["vertical_line"] = m
    m = np.zeros((6, 6), bool)
    m[3, 2] = True
    masks["single_pixel"] = m
    m = np.zeros((12, 12), bool)  # U shape: deep concavity
    m[2:10, 2:4] = True
    m[2:10, 8:10] = True
    m[8:10, 2:10] = True
    masks["U_shape"] = m
    m = np.zeros((10, 10), bool)  # plus sign, reaching the image border
    m[0:10, 4:6] = True
    m[4:6, 0:10] = True
    masks["plus_at_border"] = m
    m = np.zeros((8, 8), bool)  # staircase (4-connected)
    for i in range(6):
        m[i + 1, i : i + 2] = True
    masks["staircase"] = m
    masks["disc"] = _ellipse_mask((30, 30), 14.2, 15.7, 9.0, 6.0, 60.0)
    return masks


@pytest.mark.parametrize("name", list(_blob_masks()))
def test_traced_outline_rasterises_back_to_the_same_mask(name):
    mask = _blob_masks()[name]
    outline = trace_outline(mask)
    assert outline.ndim == 2 and outline.shape[1] == 2
    labels = polygons_to_label_map([outline], mask.shape)
    np.testing.assert_array_equal(labels > 0, mask)
    area = _shoelace(outline)  # positive: clockwise on screen (y down)
    count = int(mask.sum())
    assert area <= count
    # It loses 1/8 px² per convex corner (net 1/2 px² for a hole-free shape): a single pixel
    # keeps only half its area, anything of at least 4 px keeps >= 85 %.
    assert area >= (0.85 * count if count >= 4 else 0.5 * count)


def test_traced_outline_area_is_pixel_count_minus_half_for_simple_shapes():
    # Crack-midpoint polygon loses 1/8 px² per convex corner and gains 1/8 per concave one.
    mask = _blob_masks()["L_shape"]
    assert _shoelace(trace_outline(mask)) == pytest.approx(mask.sum() - 0.5)


def test_trace_outline_starts_at_top_edge_of_first_raster_pixel_and_runs_clockwise():
    mask = np.zeros((6, 6), bool)
    mask[2:4, 1:4] = True  # rows 2-3, cols 1-3
    outline = trace_outline(mask)
    np.testing.assert_allclose(outline[0], [1.5, 2.0])
    np.testing.assert_allclose(outline[1], [2.5, 2.0])  # moving right along the top edge
    assert len(outline) == 2 * (2 + 3)  # one midpoint per boundary crack
    assert _shoelace(outline) > 0


def test_trace_outline_ignores_holes():
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    outline = trace_outline(mask)
    filled = mask.copy()
    filled[3:6, 3:6] = True
    np.testing.assert_array_equal(polygons_to_label_map([outline], mask.shape) > 0, filled)


def test_trace_outline_takes_the_largest_component():
    mask = np.zeros((20, 20), bool)
    mask[1:4, 1:4] = True  # 9 px, first in raster order
    mask[8:15, 6:14] = True  # 56 px
    mask[4, 4] = True  # touches the small square only diagonally: its own component
    outline = trace_outline(mask)
    rasterised = polygons_to_label_map([outline], mask.shape) > 0
    expected = np.zeros_like(mask)
    expected[8:15, 6:14] = True
    np.testing.assert_array_equal(rasterised, expected)


def test_trace_outline_of_empty_mask_raises():
    with pytest.raises(ValueError):
        trace_outline(np.zeros((8, 8), bool))


# ------------------------------------------------------------- resample_polygon


def test_resample_polygon_square_exact_lattice_points():
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], dtype=float)
    points = resample_polygon(square, 16)
    expected = np.array(
        [[i, 0] for i in range(4)] + [[4, i] for i in range(4)] + [[4 - i, 4] for i in range(4)] + [[0, 4 - i] for i in range(4)],
        dtype=float,
    )
    np.testing.assert_allclose(points, expected, atol=1e-12)


def test_resample_polygon_equal_arc_length_steps_on_perimeter():
    square = np.array([[1, 2], [6, 2], [6, 7], [1, 7]], dtype=float)  # side 5, perimeter 20
    points = resample_polygon(square, 7)
    assert points.shape == (7, 2)
    # Each point lies on the square's boundary ...
    on_vertical = np.isclose(points[:, 0], 1) | np.isclose(points[:, 0], 6)
    on_horizontal = np.isclose(points[:, 1], 2) | np.isclose(points[:, 1], 7)
    assert np.all(on_vertical | on_horizontal)
    assert np.all((points[:, 0] >= 1 - 1e-9) & (points[:, 0] <= 6 + 1e-9))
    assert np.all((points[:, 1] >= 2 - 1e-9) & (points[:, 1] <= 7 + 1e-9))

    # ... at arc-length position i * 20 / 7 from the first vertex, clockwise on screen.
    def arc_position(p):
        x, y = p[0] - 1, p[1] - 2
        if np.isclose(y, 0) and x < 5 - 1e-9:
            return x
        if np.isclose(x, 5) and y < 5 - 1e-9:
            return 5 + y
        if np.isclose(y, 5) and x > 1e-9:
            return 10 + (5 - x)
        return 15 + (5 - y)

    positions = np.array([arc_position(p) for p in points])
    np.testing.assert_allclose(positions, np.arange(7) * 20 / 7, atol=1e-9)


# ------------------------------------------------------------------ rasteriser


def test_rasteriser_pixel_centre_rule():
    square = np.array([[1, 1], [3, 1], [3, 3], [1, 3]], dtype=float)
    full = _mask(square, (6, 6))
    expected = np.zeros((6, 6), bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(full, expected)


def test_rasteriser_includes_centres_just_inside_only():
    # Edges at x = 1.49 / 1.51: the column-1 centre (1.5) is outside the first, inside the second.
    outside = np.array([[1.51, 0.0], [4.0, 0.0], [4.0, 4.0], [1.51, 4.0]])
    inside = np.array([[1.49, 0.0], [4.0, 0.0], [4.0, 4.0], [1.49, 4.0]])
    for polygon, expect_col1 in ((outside, False), (inside, True)):
        labels = polygons_to_label_map([polygon], (4, 5))
        assert bool(labels[0, 1]) is expect_col1
        assert labels[:, 2:4].all() and not labels[:, 4].any() and not labels[:, 0].any()


def test_rasteriser_triangle():
    # Right triangle (0,0)-(4.3,0)-(0,4.3): centres with x + y < 4.3 are inside.
    triangle = np.array([[0, 0], [4.3, 0], [0, 4.3]], dtype=float)
    labels = polygons_to_label_map([triangle], (5, 5)) > 0
    yy, xx = np.mgrid[:5, :5] + 0.5
    np.testing.assert_array_equal(labels, xx + yy < 4.3)
    assert labels.sum() == 10


def test_rasteriser_clips_at_image_border():
    square = np.array([[-3, -2], [2, -2], [2, 3], [-3, 3]], dtype=float)
    full = _mask(square, (4, 4))
    expected = np.zeros((4, 4), bool)
    expected[0:3, 0:2] = True
    np.testing.assert_array_equal(full, expected)

    beyond = np.array([[2, 2], [10, 2], [10, 10], [2, 10]], dtype=float)
    labels = polygons_to_label_map([beyond], (4, 4))
    expected = np.zeros((4, 4), bool)
    expected[2:, 2:] = True
    np.testing.assert_array_equal(labels > 0, expected)


@pytest.mark.parametrize(
    "polygon",
    [
        np.array([[10, 10], [14, 10], [14, 14], [10, 14]], dtype=float),  # beyond bottom right
        np.array([[-9, -9], [-5, -9], [-5, -5], [-9, -5]], dtype=float),  # beyond top left
        np.array([[2, -6], [5, -6], [5, -1], [2, -1]], dtype=float),  # above
        np.array([[1.6, 1.6], [2.4, 1.6], [2.4, 2.4], [1.6, 2.4]], dtype=float),  # no centre inside
        np.array([[1, 1], [3, 3]], dtype=float),  # fewer than three points
    ],
)
def test_rasteriser_covers_nothing_without_covered_centres(polygon):
    assert not _mask(polygon, (8, 8)).any()


def _star(rng, centre, radius, points):
    """A closed random star-shaped ring (points + 1, 2) around ``centre``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = radius * rng.uniform(0.3, 1.0, points)
    ring = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
    return np.vstack([ring, ring[:1]])


def test_bounding_boxes():
    contours = np.array([[[1.0, 5.0], [3.0, -2.0], [0.5, 4.0]], [[7.0, 7.0], [8.0, 9.0], [6.0, 8.0]]])
    np.testing.assert_array_equal(bounding_boxes(contours), [[0.5, -2.0, 3.0, 5.0], [6.0, 7.0, 8.0, 9.0]])


def test_polygon_maxima_matches_rasterized_maximum():
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, (40, 50))
    rings, fallback = [], []
    for _ in range(300):
        centre = rng.uniform(-8, 58, 2)
        rings.append(_star(rng, centre, rng.choice([0.4, 3.0, 12.0]), int(rng.choice([5, 16, 33]))))
        fallback.append(centre)
    fallback = np.asarray(fallback)
    maxima = polygon_maxima(values, rings, fallback, chunk=37)  # several chunks per ring length
    for ring, point, maximum in zip(rings, fallback, maxima):
        inside = _mask(ring, values.shape)
        if not inside.any():  # no pixel centre inside: the value at the clamped fallback point
            expected = values[int(np.clip(point[1], 0, 39)), int(np.clip(point[0], 0, 49))]
        else:
            expected = values[inside].max()
        assert maximum == expected
    assert polygon_maxima(values, [], np.zeros((0, 2))).shape == (0,)


def test_centroids_match_shapely_for_rings_of_any_length():
    rng = np.random.default_rng(5)
    rings = [_star(rng, rng.uniform(0, 100, 2), 10.0, int(n)) for n in rng.integers(3, 40, 50)]
    rings.append(np.array([[1.0, 1.0], [3.0, 3.0], [5.0, 5.0], [1.0, 1.0]]))  # degenerate: vertex mean
    expected = [(p.x, p.y) for p in (shapely.Polygon(r).centroid for r in rings[:-1])] + [(3.0, 3.0)]
    np.testing.assert_allclose(centroids(rings), expected, atol=1e-9)


def test_polygons_to_label_map_earlier_polygons_win_overlaps():
    first = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], dtype=float)
    second = np.array([[2, 2], [6, 2], [6, 6], [2, 6]], dtype=float)
    labels = polygons_to_label_map([first, second], (8, 8))
    assert labels.dtype == np.int32
    assert (labels[0:4, 0:4] == 1).all()
    assert labels[3, 3] == 1  # overlap → first polygon
    assert labels[5, 5] == 2 and labels[2, 5] == 2 and labels[5, 2] == 2
    assert (labels == 2).sum() == 16 - 4
    assert (labels == 0).sum() == 64 - 16 - 12
    # Order reversed: the overlap goes to the other polygon.
    labels = polygons_to_label_map([second, first], (8, 8))
    assert labels[3, 3] == 1 and labels[0, 0] == 2


def test_polygons_to_label_map_accepts_closed_rings_and_skips_outside():
    ring = np.array([[1, 1], [3, 1], [3, 3], [1, 3], [1, 1]], dtype=float)
    outside = np.array([[20, 20], [24, 20], [24, 24]], dtype=float)
    labels = polygons_to_label_map([outside, ring], (5, 5))
    assert (labels == 2).sum() == 4 and (labels == 1).sum() == 0


def test_rasteriser_agrees_with_shapely_on_random_polygons():
    """Oracle: shapely's point-in-polygon on every pixel centre, for random star-shaped rings
    of many sizes and vertex counts, partly outside the image."""
    rng = np.random.default_rng(11)
    shape = (48, 56)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    centres_x, centres_y = cols.ravel() + 0.5, rows.ravel() + 0.5
    rings = [_star(rng, rng.uniform(-10, 66, 2), float(rng.choice([1.5, 6.0, 20.0])), int(rng.integers(3, 70))) for _ in range(200)]
    labels = polygons_to_label_map(rings, shape)
    covered = np.zeros(shape, dtype=bool)
    for index, ring in enumerate(rings):
        polygon = shapely.Polygon(ring)
        expected = shapely.contains_xy(polygon, centres_x, centres_y).reshape(shape)
        np.testing.assert_array_equal(_mask(ring, shape), expected)
        # In the label map, this ring owns the centres it holds that no earlier ring holds.
        np.testing.assert_array_equal(labels == index + 1, expected & ~covered)
        covered |= expected


def test_trace_outline_agrees_with_marching_squares():
    """Oracle: scikit-image's marching squares at level 0.5 passes through the same crack
    midpoints (background 8-connected, as the tracer's 4-connected components need)."""
    from scipy import ndimage
    from skimage.measure import find_contours

    rng = np.random.default_rng(4)
    for trial in range(300):
        mask = rng.random(tuple(rng.integers(2, 24, 2))) < rng.uniform(0.3, 0.9)
        if trial % 2:
            mask = ndimage.binary_opening(mask)
        if not mask.any():
            continue
        outline = trace_outline(mask)
        labelled, _ = ndimage.label(mask)
        component = np.pad(labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1, 1).astype(float)
        contours = [c[:-1, ::-1] - 0.5 for c in find_contours(component, 0.5, fully_connected="low")]  # (x, y), unpadded
        start = outline[0]
        matching = [c for c in contours if (np.abs(c - start).sum(axis=1) < 1e-9).any()]
        assert len(matching) == 1
        reference = matching[0]
        assert len(reference) == len(outline)
        assert {tuple(p) for p in reference.round(6)} == {tuple(p) for p in outline.round(6)}


# ------------------------------------------------------------------- torch ops


def test_fourier_basis_values():
    basis = fourier_basis(3, 4, dtype=torch.float64).numpy()
    assert basis.shape == (4, 3, 2)
    np.testing.assert_allclose(basis[1, 0], [0.0, 1.0], atol=1e-12)  # t = 1/4, k = 1
    np.testing.assert_allclose(basis[1, 1], [-1.0, 0.0], atol=1e-12)  # t = 1/4, k = 2
    np.testing.assert_allclose(basis[2, 2], [-1.0, 0.0], atol=1e-12)  # t = 1/2, k = 3


def test_decode_contours_follows_the_series_written_out():
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 100, size=(5, 2))
    coefficients = rng.normal(0, 5, size=(5, 7, 4))
    decoded = decode_contours(torch.tensor(centres, dtype=torch.float64), torch.tensor(coefficients, dtype=torch.float64), 48)
    assert decoded.shape == (5, 48, 2)
    t = np.arange(48) / 48
    for i in range(5):
        a, b, c, d = coefficients[i].T
        phase = 2 * np.pi * np.outer(t, np.arange(1, 8))
        x = centres[i, 0] + np.cos(phase) @ a + np.sin(phase) @ b
        y = centres[i, 1] + np.cos(phase) @ c + np.sin(phase) @ d
        np.testing.assert_allclose(decoded[i].numpy(), np.stack([x, y], axis=1), atol=1e-9)
    decoded32 = decode_contours(torch.tensor(centres, dtype=torch.float32), torch.tensor(coefficients, dtype=torch.float32), 48)
    np.testing.assert_allclose(decoded32.numpy(), decoded.numpy(), atol=1e-3)


def test_refine_contours_constant_field_moves_every_point_per_iteration():
    buckets, samples, iterations = 4, 16, 3
    input_size = (48, 64)  # (height, width) px; the field is at stride 2
    field = torch.zeros(2, 2 * buckets, 24, 32)
    field[:, 0::2] = 1.0  # dx of every bucket
    field[:, 1::2] = -2.0  # dy of every bucket
    rng = np.random.default_rng(0)
    contours = torch.tensor(rng.uniform(5, 40, size=(3, samples, 2)), dtype=torch.float32)
    image_index = torch.tensor([0, 1, 0])
    steps = refine_contours(contours, image_index, field, iterations, input_size)
    assert len(steps) == iterations
    shift = torch.tensor([1.0, -2.0])
    for i, step in enumerate(steps, start=1):
        assert step.shape == contours.shape
        torch.testing.assert_close(step, contours + i * shift, atol=1e-5, rtol=0)


def test_refine_contours_reads_field_at_point_position():
    # Field whose dx equals the x coordinate (px) of each field cell centre: a point at x moves
    # by x (interior points, bilinear interpolation of a linear function is exact).
    buckets = 2
    height, width = 40, 48
    xs = (torch.arange(width // 2, dtype=torch.float32) + 0.5) * 2.0
    field = torch.zeros(1, 2 * buckets, height // 2, width // 2)
    field[0, 0::2] = xs[None, None, :]
    contours = torch.tensor([[[7.3, 11.0], [20.0, 30.2], [31.7, 5.5], [12.25, 17.0]]])
    (step,) = refine_contours(contours, torch.tensor([0]), field, 1, (height, width))
    torch.testing.assert_close(step[..., 0], 2.0 * contours[..., 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(step[..., 1], contours[..., 1], atol=1e-6, rtol=0)


def test_refine_contours_interpolates_between_buckets_along_the_contour():
    # Bucket b moves by (b, 0); with S = 8 points and B = 4 buckets, point i sits at bucket
    # position i / 2, so it moves by the cyclic interpolation of the bucket values.
    buckets, samples = 4, 8
    field = torch.zeros(1, 2 * buckets, 8, 8)
    for b in range(buckets):
        field[0, 2 * b] = float(b)
    contours = torch.full((1, samples, 2), 8.0)
    (step,) = refine_contours(contours, torch.tensor([0]), field, 1, (16, 16))
    expected_dx = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 1.5])
    torch.testing.assert_close(step[0, :, 0] - 8.0, expected_dx, atol=1e-5, rtol=0)
    torch.testing.assert_close(step[0, :, 1], contours[0, :, 1])


def test_refine_contours_is_differentiable():
    field = torch.zeros(1, 8, 8, 8, requires_grad=True)
    contours = torch.full((1, 8, 2), 6.0, requires_grad=True)
    steps = refine_contours(contours, torch.tensor([0]), field, 2, (16, 16))
    steps[-1].sum().backward()
    assert field.grad is not None and torch.isfinite(field.grad).all() and field.grad.abs().sum() > 0
    assert contours.grad is not None
