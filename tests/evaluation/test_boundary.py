"""evaluation/boundary.py: OpenCV morphology against brute force, and radii past the image."""
import numpy as np
import pytest

from segloss_d2.evaluation.boundary import dilate_mask, effective_radius, label_boundary


def _window_any(mask, r):
    """OR over the (2r+1)^2 window cut at the border (brute force)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            out[i, j] = mask[max(0, i - r): i + r + 1, max(0, j - r): j + r + 1].any()
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (6, 9), (16, 16)])
def test_dilate_mask_for_every_radius_up_to_past_the_image(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.1
    mask[0, 0] = True
    for radius in list(range(0, max(shape) + 3)) + [10**6, 10**12]:
        got = dilate_mask(mask, radius).astype(bool)
        assert np.array_equal(got, _window_any(mask, radius)), radius


@pytest.mark.parametrize("border_is_boundary", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (7, 9)])
def test_label_boundary_past_the_image_is_the_clamped_one(shape, border_is_boundary):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    labels[0, 0] = 0
    bound = max(shape)
    want = label_boundary(labels, bound, border_is_boundary)
    for radius in (bound + 1, 10**6, 10**12):
        assert np.array_equal(label_boundary(labels, radius, border_is_boundary), want), radius
    # a uniform map has no boundary inside the image, but every pixel reaches the outside
    uniform = np.zeros(shape, np.uint8)
    assert label_boundary(uniform, 10**6, border_is_boundary).all() == border_is_boundary


def test_effective_radius():
    assert effective_radius(5, 16, 16) == 5
    assert effective_radius(10**6, 16, 9) == 15
    assert effective_radius(10**6, 16, 9, extra=1) == 16
    assert effective_radius(10**6, 1, 1) == 0
    assert effective_radius(np.int64(7), 30, 30) == 7
    with pytest.raises(ValueError, match="radius must be >= 0"):
        effective_radius(-1, 4, 4)
    with pytest.raises(TypeError, match="radius must be an int"):
        effective_radius(2.0, 4, 4)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        dilate_mask(np.zeros((3, 3), bool), -3)


def _window_other_label(labels, r, border_is_boundary):
    """Brute force of label_boundary: the (2r+1)^2 window holds another label (or, with
    border_is_boundary, reaches outside the image)."""
    h, w = labels.shape
    out = np.zeros(labels.shape, bool)
    for i in range(h):
        for j in range(w):
            window = labels[max(0, i - r): i + r + 1, max(0, j - r): j + r + 1]
            outside = i - r < 0 or j - r < 0 or i + r >= h or j + r >= w
            out[i, j] = (window != labels[i, j]).any() or (border_is_boundary and outside)
    return out


@pytest.mark.parametrize("shape", [(1, 6), (5, 1), (9, 14), (17, 12)])
def test_distance_transform_path_equals_brute_force(shape, monkeypatch):
    """From DISTANCE_RADIUS on, dilations and label boundaries come from a chessboard distance
    transform (time independent of the radius); patched down so small images reach it."""
    from segloss_d2.evaluation import boundary

    monkeypatch.setattr(boundary, "DISTANCE_RADIUS", 2)
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.08
    labels = rng.integers(0, 3, (shape[0] // 2 + 1, shape[1] // 2 + 1)).repeat(2, 0).repeat(
        2, 1)[: shape[0], : shape[1]].astype(np.uint8)
    for radius in range(2, max(shape) + 2):
        assert np.array_equal(dilate_mask(mask, radius).astype(bool),
                              _window_any(mask, radius)), radius
        for border in (False, True):
            assert np.array_equal(label_boundary(labels, radius, border),
                                  _window_other_label(labels, radius, border)), (radius, border)
    assert not dilate_mask(np.zeros(shape, bool), 5).any()  # nothing to dilate
