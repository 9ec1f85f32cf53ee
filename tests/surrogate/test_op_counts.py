"""The number of operator calls per loss call does not grow with the image (docs/method.md §2.6).

The fused accelerator path launches a fixed set of Triton kernels, and the pure-torch path works
on whole tensors (on CPU, above ``ops.CPU_CHUNK_ELEMENTS``, the region surrogates' dense curve
evaluation and BF1's plane-wise work go in chunks of that size, to keep their temporaries in the
caches: see test_cpu_chunks.py), so one forward+backward of any surrogate makes the same number of
aten calls (and kernel launches) at two image sizes. Counted with ``torch.profiler`` by
``benchmarks/bench_loss.count_ops`` (the ops Triton's interpreter runs inside a launch are not
counted: on a GPU a launch is one kernel). The fused path is forced onto
CPU tensors (Triton's interpreter), so the sizes stay small; the two sizes differ by 4x in pixels
and keep the same label statistics (cells scaled with the image), hence the same branches.

Results at the larger size, where the old code blocked: equal to the reference formulas.
"""
import pytest
import torch

from benchmarks.bench_loss import count_ops, profiled
from segloss_d2.surrogate import SurrogateLoss, bezier, fused, load_params
from segloss_d2.surrogate.bezier import curve_pieces, evaluate
from segloss_d2.surrogate.params import list_presets

from ._reference import surrogate as reference_surrogate
from .conftest import use_fused_on_cpu, use_torch_path
from .test_loss import C, blob_labels, random_logits

PRESETS = sorted(list_presets())
# (n, h, w, cell): 4x the pixels, the cells (and so the boundary fraction) scaled with the image
SIZES = [(2, 12, 16, 3), (2, 24, 32, 6)]
# the kernels each surrogate launches per forward+backward on the fused path
LAUNCHES = {"BF1": {"bf1_forward_kernel": 1, "window_argmax_kernel": 1, "scatter_add_kernel": 1,
                    "bf1_backward_kernel": 1, "bf1_route_kernel": 1}}
REGION_LAUNCHES = {"region_forward_kernel": 1, "region_backward_kernel": 1}


@pytest.fixture(autouse=True, params=["torch", "fused"])
def compute_path(request, monkeypatch):
    """The pure-torch path, and the fused path in Triton's interpreter."""
    if request.param == "torch":
        use_torch_path(monkeypatch)
    else:
        pytest.importorskip("triton")
        use_fused_on_cpu(monkeypatch)
    return request.param


def _count(loss, n, h, w, cell, dtype=torch.float32):
    labels = blob_labels(n=n, h=h, w=w, cell=cell)
    leaf = random_logits(labels, dtype=dtype).requires_grad_()
    loss(leaf, labels).backward()  # warm-up (lazy caches)
    leaf.grad = None
    fused.LAUNCHES.clear()
    with profiled() as prof:
        loss(leaf, labels).backward()
    counts = count_ops(prof)
    counts["launches"] = dict(fused.LAUNCHES)
    return counts


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.slow
def test_operator_calls_do_not_grow_with_the_image(preset, compute_path):
    params = load_params(preset)
    metric = params.metrics[0]
    loss = SurrogateLoss(params, C, tolerance=1)
    small, large = (_count(loss, *size) for size in SIZES)
    # (the aten events nested inside one call may vary: e.g. CPU reductions split large inputs)
    assert small["aten_calls"] == large["aten_calls"], (small, large)
    assert small["launches"] == large["launches"]
    expected = {} if compute_path == "torch" else LAUNCHES.get(metric, REGION_LAUNCHES)
    assert large["launches"] == expected
    assert large["fused_launches"] == sum(expected.values())
    # far from the thousands of block-loop calls of before (BF1 was 3,340 at 2x19x128x256)
    assert large["aten_calls"] < 450


@pytest.mark.parametrize("num_pieces", [1, 2, 3])
def test_curve_evaluation_is_a_fixed_number_of_ops(num_pieces, compute_path):
    """The pure-torch curve: 10 kernels for one piece, 22 for several (plus the views of the
    gathered coefficients), at any size."""
    if compute_path == "fused":
        pytest.skip("bezier.evaluate is the pure-torch path")
    cp = bezier.theta_to_control_points(torch.full((4 * num_pieces - 2,), 0.3),
                                        num_pieces).tolist()
    pieces = curve_pieces(cp)
    counts = []
    for size in (10, 100_000):
        x = torch.rand(size)
        evaluate(x, pieces, True)  # warm the coefficient table's cache
        with profiled() as prof:
            g, d = evaluate(x, pieces, True)
        counts.append(count_ops(prof)["aten_calls"])
    assert counts[0] == counts[1] <= (12 if num_pieces == 1 else 36), counts


def test_coefficient_table_is_cached_per_curve_dtype_and_device(compute_path):
    pieces = curve_pieces(load_params("voc_miou").control_points[0][0])
    x32, x64 = torch.rand(3), torch.rand(3, dtype=torch.float64)
    table = bezier.coefficient_table(pieces, x32)
    assert table.shape == (len(bezier.FIELDS), len(pieces)) and table.dtype == torch.float32
    assert bezier.coefficient_table(list(pieces), x32) is table
    assert bezier.coefficient_table(pieces, x64).dtype == torch.float64
    assert table[bezier.FIELDS.index("lo")].tolist() == pytest.approx([p.lo for p in pieces])


@pytest.mark.parametrize("preset", PRESETS)
def test_large_whole_tensor_matches_the_reference(preset, compute_path):
    """A batch that the old code cut into many blocks: equal to the reference formulas."""
    if compute_path == "fused":
        pytest.skip("test_fused.py compares the fused path with the torch path")
    params = load_params(preset)
    metric, cps = params.metrics[0], params.control_points[0]
    labels = blob_labels(n=2, h=60, w=68, cell=7)
    loss = SurrogateLoss(params, C, tolerance=2)
    logits = random_logits(labels, dtype=torch.float64)

    def run(fn):
        leaf = logits.clone().requires_grad_()
        value = fn(leaf)
        value.backward()
        return value.detach(), leaf.grad

    value, grad = run(lambda x: loss(x, labels))
    ref_value, ref_grad = run(lambda x: 1 - reference_surrogate(metric, x, labels, cps, tol=2))
    scale = ref_grad.abs().max().item()
    torch.testing.assert_close(value, ref_value, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12 * scale, rtol=1e-8)


def test_evaluate_leaves_its_input_alone(compute_path):
    x = torch.rand(7, 5, dtype=torch.float64)
    before = x.clone()
    for cp in ([0.5, 0.5], [0.2, 0.3], load_params("voc_miou").control_points[0][0]):
        evaluate(x, curve_pieces(cp), True)
        assert torch.equal(x, before)
