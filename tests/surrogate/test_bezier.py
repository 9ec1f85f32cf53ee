import pytest
import torch

from segloss_d2.surrogate.autograd import bezier_curve
from segloss_d2.surrogate.bezier import (
    CONSTRAINTS,
    check_constraints,
    control_points_to_theta,
    curve_length,
    identity_theta,
    monotonic,
    theta_to_control_points,
    truth_table,
    validate_control_points,
)
from segloss_d2.surrogate.params import load_params

from ._reference import bezier as reference_bezier

GRID = [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.99]
# docs/method.md §3.5 curve table: (preset, term curve index) -> values on GRID.
TABLE = {
    ("voc_miou", 0): [.203, .408, .527, .646, .696, .756, .840, .890, .943, .994],
    ("voc_miou", 1): [.000, .002, .007, .026, .060, .191, .480, .782, .974, .997],
    ("voc_fwiou", 0): [.056, .263, .483, .714, .746, .815, .887, .924, .962, .996],
    ("voc_fwiou", 1): [.006, .028, .057, .115, .175, .300, .443, .613, .800, .979],
    ("voc_biou", 0): [.189, .396, .531, .692, .793, .910, .968, .983, .990, .997],
    ("voc_biou", 1): [.008, .038, .076, .152, .229, .386, .693, .805, .906, .991],
    ("voc_macc", 0): [.163, .398, .541, .691, .764, .825, .888, .920, .956, .994],
    ("voc_gacc", 0): [.163, .398, .541, .691, .764, .825, .888, .920, .956, .994],
    ("voc_bf1", 0): [.011, .052, .105, .209, .313, .519, .720, .819, .913, .992],
    ("voc_bf1", 1): [.002, .021, .054, .136, .230, .436, .656, .769, .884, .988],
    ("voc_bf1", 2): [.021, .095, .173, .305, .418, .611, .778, .855, .929, .993],
    ("voc_bf1", 3): [.086, .272, .409, .583, .698, .845, .932, .962, .984, .999],
}


def _assert_matches_reference(x, cp, gen):
    """bezier_curve equals the naive reference at float64 ``x``, in value and gradient; returns
    the reference values."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ga, gb = bezier_curve(xa, cp), reference_bezier(xb, cp)
    torch.testing.assert_close(ga, gb, atol=1e-12, rtol=1e-10)
    w = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    (ga * w).sum().backward()
    (gb * w).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-8, rtol=1e-7)
    return gb


def _random_curve(gen, n):
    return theta_to_control_points(torch.rand(4 * n - 2, generator=gen, dtype=torch.float64), n)


@pytest.mark.parametrize("key", sorted(TABLE))
def test_preset_curves_match_spec_table(key):
    cp = load_params(key[0]).control_points[0][key[1]]
    got = bezier_curve(torch.tensor(GRID, dtype=torch.float64), cp)
    torch.testing.assert_close(got, torch.tensor(TABLE[key], dtype=torch.float64), atol=1e-3,
                               rtol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_endpoints_and_monotone_for_random_theta(n):
    gen = torch.Generator().manual_seed(n)
    x = torch.linspace(0, 1, 10001, dtype=torch.float64)
    for _ in range(20):
        g = bezier_curve(x, _random_curve(gen, n))
        assert g[0] == 0.0
        assert abs(g[-1].item() - 1.0) < 1e-12
        assert (g.diff() >= 0).all()
        assert ((g >= 0) & (g <= 1 + 1e-12)).all()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_identity_theta_gives_identity_curve(n):
    x = torch.rand(1000, dtype=torch.float64)
    cp = theta_to_control_points(identity_theta(n), n)
    torch.testing.assert_close(bezier_curve(x, cp), x, atol=1e-12, rtol=0)
    assert identity_theta(2) == pytest.approx([1 / 4, 1 / 4, 1 / 3, 1 / 3, 1 / 2, 1 / 2])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_matches_per_piece_reference_value_and_gradient(n):
    gen = torch.Generator().manual_seed(10 + n)
    cp = _random_curve(gen, n).tolist()
    x = torch.rand(5000, generator=gen, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([0.0, 1.0], dtype=torch.float64),
                   torch.tensor(cp[0::2], dtype=torch.float64)])  # piece ends included
    _assert_matches_reference(x, cp, gen)


def test_float32_matches_float64_and_half_is_computed_in_float32():
    cp = load_params("voc_miou").control_points[0][0]
    x = torch.rand(10000, dtype=torch.float64)
    g64 = bezier_curve(x, cp)
    g32 = bezier_curve(x.float(), cp)
    assert g32.dtype == torch.float32
    torch.testing.assert_close(g32.double(), g64, atol=2e-6, rtol=0)
    assert bezier_curve(x.half(), cp).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bezier_curve(x.bfloat16(), cp).dtype == torch.float32


@pytest.mark.parametrize("preset", ["voc_miou", "voc_biou", "voc_bf1"])
def test_gradcheck_float64(preset):
    params = load_params(preset)
    x = (torch.rand(64, dtype=torch.float64) * 0.98 + 0.01).requires_grad_()
    for cp in params.control_points[0]:
        assert torch.autograd.gradcheck(lambda z, cp=cp: bezier_curve(z, cp), (x,))


def test_theta_round_trip_and_monotone_points():
    theta = torch.rand(3, 6, dtype=torch.float64)
    cp = theta_to_control_points(theta, 2)
    assert cp.shape == (3, 6)
    xs, ys = cp[:, 0::2], cp[:, 1::2]
    assert (xs.diff(dim=1) > 0).all() and (ys.diff(dim=1) >= 0).all()
    clamped = theta.clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(control_points_to_theta(cp, 2), clamped)
    # first pair is taken as is, later pairs move a fraction of the remaining distance
    assert cp[0, 0].item() == pytest.approx(clamped[0, 0].item())
    expected = clamped[0, 0] + clamped[0, 2] * (1 - clamped[0, 0])
    assert cp[0, 2].item() == pytest.approx(expected.item())


def test_theta_clamping_avoids_degenerate_pieces():
    cp = theta_to_control_points([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2)
    validate_control_points(cp, 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        validate_control_points(theta_to_control_points([1.0] * 6, 2, clamp=False), 2)


@pytest.mark.parametrize(
    "cp, match",
    [
        ([0.1, 0.2, 0.3], "needs 6 numbers"),
        ([0.1, 0.2, 0.5, 1.2, 0.7, 0.9], r"\[3\] = 1.2 is outside"),
        ([0.5, 0.2, 0.3, 0.4, 0.7, 0.9], "x_2 = 0.3 <= x_1 = 0.5"),
        ([0.1, 0.5, 0.3, 0.4, 0.7, 0.9], "y_2 = 0.4 < y_1 = 0.5"),
        ([0.1, 0.2, 0.3, 0.4, 1.0, 0.9], "degenerate"),
        ([0.1, float("nan"), 0.3, 0.4, 0.7, 0.9], "finite"),
        (["a", 0.2, 0.3, 0.4, 0.7, 0.9], "must be numbers"),
    ],
)
def test_validation_errors(cp, match):
    with pytest.raises(ValueError, match=match):
        validate_control_points(cp, 2, "cp")


def test_bad_theta_and_inputs():
    with pytest.raises(ValueError, match="last dimension 6"):
        theta_to_control_points([0.5] * 5, 2)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        theta_to_control_points([0.5] * 5 + [1.5], 2)
    with pytest.raises(ValueError, match="num_pieces"):
        identity_theta(0)
    with pytest.raises(TypeError, match="floating point"):
        bezier_curve(torch.ones(3, dtype=torch.long), [0.5, 0.5])
    with pytest.raises(ValueError, match="length 4n-2"):
        bezier_curve(torch.ones(3), [0.5, 0.5, 0.6])


# ----------------------------------------------------------------------------------------------
# Curve constraints (the ablation of the truth-table and monotonicity constraints)

# (truth table, monotonic) of every setting, written out independently of the module
CONSTRAINT_FLAGS = {"all": (True, True), "no_truth_table": (False, True),
                    "no_monotonic": (True, False), "none": (False, False)}
ENDS = torch.tensor([0.0, 1.0], dtype=torch.float64)
FINE = torch.linspace(0, 1, 10001, dtype=torch.float64)


def _random_constrained(gen, n, constraints, count=30):
    """``count`` random thetas of one setting and their control points."""
    thetas = torch.rand(count, curve_length(n, constraints), generator=gen, dtype=torch.float64)
    return thetas, theta_to_control_points(thetas, n, constraints=constraints)


def test_constraint_settings_and_sizes():
    assert CONSTRAINTS == ("all", "no_truth_table", "no_monotonic", "none")
    for c, (tt, mono) in CONSTRAINT_FLAGS.items():
        assert check_constraints(c) == c
        assert (truth_table(c), monotonic(c)) == (tt, mono)
        for n in (1, 2, 3):
            assert curve_length(n, c) == 4 * n - 2 + (0 if tt else 2)
    assert curve_length(2) == 6  # the paper's layout stays the default


@pytest.mark.parametrize("constraints", CONSTRAINTS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_truth_table_constraint(constraints, n):
    gen = torch.Generator().manual_seed(100 + n)
    _, cps = _random_constrained(gen, n, constraints)
    ends = torch.stack([bezier_curve(ENDS, cp) for cp in cps])
    if truth_table(constraints):
        # g(0) = 0 exactly; g(1) = 1 up to the round-off of the closed-form root (< 1e-13 seen)
        assert (ends[:, 0] == 0.0).all(), ends[:, 0]
        assert (ends[:, 1] - 1.0).abs().max() < 1e-12, ends[:, 1]
    else:
        # the end heights are free: the curve starts at y_0 and ends at y_2n (the appended pair)
        torch.testing.assert_close(ends, cps[:, -2:], atol=1e-12, rtol=0)
        assert (ends[:, 0] > 1e-3).any() and (ends[:, 1] < 1 - 1e-3).any()


@pytest.mark.parametrize("constraints", CONSTRAINTS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_monotonicity_constraint(constraints, n):
    gen = torch.Generator().manual_seed(200 + n)
    _, cps = _random_constrained(gen, n, constraints)
    drops = torch.stack([bezier_curve(FINE, cp).diff().min() for cp in cps])
    if monotonic(constraints):
        assert (drops >= 0).all(), drops.min()
    elif constraints == "no_monotonic" and n == 1:
        # one piece from (0, 0) to (1, 1) with a control height in [0, 1] is monotone whatever
        # that height: freeing y changes the parameterization (y_1 = theta_y), not the shape
        assert (drops >= 0).all()
        theta = torch.tensor([0.3, 0.05], dtype=torch.float64)
        assert theta_to_control_points(theta, 1, constraints=constraints).tolist() == \
            pytest.approx([0.3, 0.05])
    else:
        assert (drops < -1e-6).any(), drops  # the switch really frees the curve


@pytest.mark.parametrize("constraints", CONSTRAINTS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_constrained_curves_match_reference_value_and_gradient(constraints, n):
    """Both compute paths (the fixture) honor free end heights and free y like the naive
    per-piece reference."""
    gen = torch.Generator().manual_seed(300 + n)
    _, cps = _random_constrained(gen, n, constraints, count=5)
    for cp in cps.tolist():
        x = torch.cat([torch.rand(2000, generator=gen, dtype=torch.float64), ENDS])
        gb = _assert_matches_reference(x, cp, gen)
        g32 = bezier_curve(x[:-2].float(), cp)  # float32 too (the training dtype)
        torch.testing.assert_close(g32.double(), gb[:-2].detach(), atol=1e-3, rtol=0)


def test_identity_theta_of_every_setting():
    third = 1 / 3
    assert identity_theta(2, "all") == pytest.approx([1 / 4, 1 / 4, third, third, 1 / 2, 1 / 2])
    assert identity_theta(2, "no_truth_table") == pytest.approx(
        [1 / 4, 1 / 4, third, third, 1 / 2, 1 / 2, 0, 1])
    assert identity_theta(2, "no_monotonic") == pytest.approx(
        [1 / 4, 1 / 4, third, 1 / 2, 1 / 2, 3 / 4])
    assert identity_theta(2, "none") == pytest.approx(
        [1 / 4, 1 / 4, third, 1 / 2, 1 / 2, 3 / 4, 0, 1])
    assert identity_theta(1, "none") == pytest.approx([1 / 2, 1 / 2, 0, 1])


@pytest.mark.parametrize("constraints", CONSTRAINTS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_identity_theta_gives_identity_curve_under_every_setting(constraints, n):
    theta = identity_theta(n, constraints)
    assert len(theta) == curve_length(n, constraints)
    cp = theta_to_control_points(theta, n, constraints=constraints)  # clamped to [1e-4, 1-1e-4]
    assert validate_control_points(cp, n, "identity", constraints) == cp.tolist()
    x = torch.cat([FINE, ENDS])
    assert (bezier_curve(x, cp) - x).abs().max() < 1e-3
    if truth_table(constraints):  # nothing is clamped away: exactly the identity
        torch.testing.assert_close(bezier_curve(x, cp), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("constraints", CONSTRAINTS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_validate_accepts_own_setting_and_checks_the_other_layout(constraints, n):
    gen = torch.Generator().manual_seed(400 + n)
    _, cps = _random_constrained(gen, n, constraints, count=10)
    for cp in cps:
        assert validate_control_points(cp, n, "cp", constraints) == pytest.approx(cp.tolist())
    # the other layout has another length, with a message that says which is needed
    other = "no_truth_table" if truth_table(constraints) else "all"
    need, got = curve_length(n, constraints), curve_length(n, other)
    ends = "" if truth_table(constraints) else f", y_0, y_{2 * n}"
    match = (rf"cp: a curve with {n} piece\(s\) needs {need} numbers "
             rf"\[x_1, y_1, \.\.\., x_{2 * n - 1}, y_{2 * n - 1}{ends}\] "
             rf"\(constraints '{constraints}'\), got {got}")
    with pytest.raises(ValueError, match=match):
        validate_control_points(_random_constrained(gen, n, other, 1)[1][0], n, "cp",
                                constraints)


# two pieces, 4n-2 layout: y_2 = 0.4 < y_1 = 0.5
DIPPING = [0.1, 0.5, 0.3, 0.4, 0.7, 0.9]


@pytest.mark.parametrize(
    "constraints, cp, match",
    [
        ("all", DIPPING, "y_2 = 0.4 < y_1 = 0.5"),
        ("no_truth_table", DIPPING + [0.0, 1.0], "y_2 = 0.4 < y_1 = 0.5"),
        # the free end heights are part of the monotone sequence
        ("no_truth_table", [0.1, 0.2, 0.3, 0.4, 0.7, 0.9, 0.3, 1.0], "y_1 = 0.2 < y_0 = 0.3"),
        ("no_truth_table", [0.1, 0.2, 0.3, 0.4, 0.7, 0.9, 0.0, 0.8], "y_4 = 0.8 < y_3 = 0.9"),
        # x must increase strictly under every setting
        ("no_monotonic", [0.5, 0.2, 0.3, 0.4, 0.7, 0.9], "x_2 = 0.3 <= x_1 = 0.5"),
        ("none", [0.5, 0.2, 0.3, 0.4, 0.7, 0.9, 0.1, 0.2], "x_2 = 0.3 <= x_1 = 0.5"),
        ("none", [0.1, 0.2, 0.3, 0.4, 0.7, 0.9, 0.1, 1.5], r"\[7\] = 1.5 is outside"),
    ],
)
def test_validation_errors_under_constraints(constraints, cp, match):
    with pytest.raises(ValueError, match=match):
        validate_control_points(cp, 2, "cp", constraints)


def test_non_monotone_points_are_valid_without_monotonicity():
    assert validate_control_points(DIPPING, 2, "cp", "no_monotonic") == DIPPING
    assert validate_control_points(DIPPING + [0.6, 0.2], 2, "cp", "none") == DIPPING + [0.6, 0.2]
    g = bezier_curve(FINE, DIPPING + [0.6, 0.2])
    assert g[0].item() == pytest.approx(0.6) and g[-1].item() == pytest.approx(0.2)


@pytest.mark.parametrize("bad", ["monotone", "ALL", None, 1])
def test_bad_constraints_value_raises_naming_it(bad):
    for call in (lambda: check_constraints(bad), lambda: curve_length(2, bad),
                 lambda: identity_theta(2, bad),
                 lambda: theta_to_control_points([0.5] * 6, 2, constraints=bad),
                 lambda: validate_control_points([0.1, 0.2, 0.3, 0.4, 0.7, 0.9], 2, "cp", bad)):
        with pytest.raises(ValueError, match=rf"constraints must be one of .*got {bad!r}"):
            call()
