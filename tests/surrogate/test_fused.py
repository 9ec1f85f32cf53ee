"""The fused accelerator path (Triton kernels, ``segloss_d2.surrogate.fused``) against the
pure-torch path it replaces on GPUs.

On CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py before
they are first imported), so the inputs are small. Covered: all six metrics, float32 and float64,
float16/bfloat16 logits under autocast, odd sizes, absent classes, void pixels and all-ignore
batches, the image statistics scope, exact ties in BF1's erosion and window argmax, retained
graphs and double backward, the switch, the core without Triton, and (when Triton's compiler is
installed) the compilation of every kernel variant the losses launch for real GPU targets.
Every comparison also checks that the fused kernels ran (``fused.LAUNCHES``), so a silent
fallback to the torch path cannot pass.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from segloss_d2.surrogate import SurrogateLoss, fused, load_params, ops
from segloss_d2.surrogate.autograd import bezier_curve
from segloss_d2.surrogate.bezier import curve_pieces, theta_to_control_points
from segloss_d2.surrogate.params import METRICS, SurrogateParams, list_presets

from .conftest import use_fused_on_cpu, use_torch_path
from .test_loss import C, blob_labels, random_logits
from .test_routing import bf1_of_probs, tie_values

pytest.importorskip("triton")

PRESETS = sorted(list_presets())
PRESET_OF = {load_params(p).metrics[0]: p for p in PRESETS}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def compute_path(monkeypatch):
    """Each test switches paths itself (overrides the path fixture of conftest.py)."""
    use_fused_on_cpu(monkeypatch)
    return "fused-vs-torch"


def _fused_then_torch(monkeypatch, fn, launched=True):
    """``fn()`` on the fused path (checking that its kernels ran), then on the pure-torch path."""
    use_fused_on_cpu(monkeypatch)
    before = sum(fused.LAUNCHES.values())
    fast = fn()
    if launched:
        assert sum(fused.LAUNCHES.values()) > before, "the fused kernels did not run"
    use_torch_path(monkeypatch)
    slow = fn()
    use_fused_on_cpu(monkeypatch)
    return fast, slow


def _value_and_grad(loss, logits, labels):
    x = logits.clone().requires_grad_()
    value = loss(x, labels)
    value.backward()
    return value.detach(), x.grad


def _assert_same(got, expected, dtype, msg=""):
    (value, grad), (value_ref, grad_ref) = got, expected
    scale = max(grad_ref.abs().max().item(), 1e-30)
    if dtype == torch.float64:  # the same formulas, summed in another order
        torch.testing.assert_close(value, value_ref, atol=1e-13, rtol=1e-12, msg=msg)
        torch.testing.assert_close(grad, grad_ref, atol=1e-13 * scale, rtol=1e-10, msg=msg)
    else:
        torch.testing.assert_close(value, value_ref, atol=1e-6, rtol=1e-5, msg=msg)
        torch.testing.assert_close(grad, grad_ref, atol=1e-6 * scale, rtol=1e-4, msg=msg)


def all_metrics_params():
    """One loss with all six metrics (several Functions sharing one softmax)."""
    params = [load_params(PRESET_OF[m]) for m in METRICS]
    return SurrogateParams(metrics=list(METRICS), weights=[1.0 + i for i in range(len(METRICS))],
                           num_pieces=[p.num_pieces[0] for p in params],
                           thetas=[None] * len(METRICS),
                           control_points=[p.control_points[0] for p in params])


LABELS = {
    "void": lambda: blob_labels(n=2, h=7, w=9, cell=3),  # void pixels: pixel weights
    "no-void": lambda: blob_labels(n=2, h=7, w=9, cell=3, ignore=False),
    "absent": lambda: blob_labels(n=2, h=7, w=9, c=3, cell=3),  # classes 3..5 absent: subsets
}


@pytest.mark.parametrize("labels_kind", sorted(LABELS))
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.slow
def test_every_metric_matches_the_torch_path(monkeypatch, preset, labels_kind):
    labels = LABELS[labels_kind]()
    loss = SurrogateLoss(load_params(preset), C, tolerance=2)
    for dtype in (torch.float64, torch.float32):
        logits = random_logits(labels, dtype=dtype)
        got, expected = _fused_then_torch(
            monkeypatch, lambda logits=logits: _value_and_grad(loss, logits, labels))
        assert expected[1].abs().max() > 0
        _assert_same(got, expected, dtype, f"{preset} {labels_kind} {dtype}")


ODD_SHAPES = [(1, 1, 1), (2, 1, 7), (1, 7, 1), (2, 3, 5), (1, 13, 11)]


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.slow
def test_odd_sizes_all_metrics(monkeypatch, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    labels = torch.randint(0, C, shape, generator=gen)
    labels[torch.rand(shape, generator=gen) < 0.15] = 255
    labels.view(-1)[0] = 1  # never all void (tested apart)
    loss = SurrogateLoss(all_metrics_params(), C, tolerance=1)
    logits = random_logits(labels, dtype=torch.float64)
    got, expected = _fused_then_torch(monkeypatch, lambda: _value_and_grad(loss, logits, labels))
    _assert_same(got, expected, torch.float64, f"{shape}")
    values, expected_values = _fused_then_torch(
        monkeypatch, lambda: loss.surrogates(logits, labels)[0], launched=False)
    for metric in METRICS:
        if expected_values[metric] is None:
            assert values[metric] is None, metric
        else:
            torch.testing.assert_close(values[metric], expected_values[metric], atol=1e-13,
                                       rtol=1e-12, msg=metric)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.slow
def test_autocast_half_logits(monkeypatch, dtype):
    labels = blob_labels(n=2, h=7, w=9, cell=3)
    loss = SurrogateLoss(all_metrics_params(), C, tolerance=2)
    logits = random_logits(labels, dtype=torch.float32).to(dtype)

    def run():
        x = logits.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            value = loss(x, labels)
        value.backward()
        assert value.dtype == torch.float32 and x.grad.dtype == dtype
        return value.detach(), x.grad.float()

    got, expected = _fused_then_torch(monkeypatch, run)
    value, grad = got
    torch.testing.assert_close(value, expected[0], atol=1e-6, rtol=1e-5)
    # the gradient is rounded to the logits' dtype at the end
    scale = expected[1].abs().max().item()
    torch.testing.assert_close(grad, expected[1], atol=1e-2 * scale, rtol=1e-2)


def test_all_ignore_batch_is_zero_with_zero_gradient(monkeypatch):
    labels = torch.full((2, 5, 6), 255, dtype=torch.long)
    for params in [load_params(p) for p in PRESETS] + [all_metrics_params()]:
        loss = SurrogateLoss(params, C)
        for dtype in (torch.float32, torch.float64):
            logits = random_logits(labels, dtype=dtype)
            # no class is present and BF1 has no boundary: the region kernels run over no class
            got, expected = _fused_then_torch(
                monkeypatch, lambda loss=loss, logits=logits: _value_and_grad(loss, logits, labels),
                launched=False)
            for value, grad in (got, expected):
                assert value.item() == 0.0 and grad.abs().max() == 0.0


@pytest.mark.slow
def test_image_statistics_scope(monkeypatch):
    labels = blob_labels(n=3, h=7, w=9, cell=3)
    labels[1] = 255  # an image where every surrogate is undefined
    loss = SurrogateLoss(all_metrics_params(), C, tolerance=2, stats="image")
    logits = random_logits(labels, dtype=torch.float64)
    got, expected = _fused_then_torch(monkeypatch, lambda: _value_and_grad(loss, logits, labels))
    _assert_same(got, expected, torch.float64)


@pytest.mark.parametrize("kind", ["quantized", "binary", "checker"])
def test_bf1_ties_route_like_max_pooling(monkeypatch, kind):
    """Exact ties in the erosion and the window maxima: the fused kernels pick the same element as
    the reference's max pooling (first in row-major window order, windows cut at the border)."""
    labels = blob_labels(n=2, h=7, w=9, cell=3)
    p = tie_values(kind, (2, C, 7, 9), seed=3)
    p[1, :, :2, :] = 1.0  # border windows whose minimum ties with the pad value
    curves = load_params("voc_bf1").control_points[0]
    leaf, ref_leaf = p.clone().requires_grad_(), p.clone().requires_grad_()
    before = fused.LAUNCHES["bf1_backward_kernel"]
    from segloss_d2.surrogate.boundary import relaxed_bf1

    value = relaxed_bf1(leaf, labels, curves, tolerance=2)
    expected = bf1_of_probs(ref_leaf, labels, curves, 2, False)
    torch.testing.assert_close(value, expected, atol=1e-12, rtol=1e-10)
    value.backward()
    expected.backward()
    assert fused.LAUNCHES["bf1_backward_kernel"] == before + 1
    assert ref_leaf.grad.abs().max() > 0
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("radius", [0, 1, 3])
@pytest.mark.parametrize("kind", ["quantized", "constant", "checker", "continuous"])
def test_window_argmax_is_max_pool_index(kind, radius):
    values = tie_values(kind, (2, 3, 5, 7), seed=radius, dtype=torch.float32)
    _, index = F.max_pool2d(values, 2 * radius + 1, stride=1, padding=radius,
                            return_indices=True)
    n_idx, c_idx, h_idx, w_idx = torch.nonzero(torch.ones_like(values, dtype=torch.bool),
                                               as_tuple=True)
    got = fused.window_argmax(values, n_idx, c_idx, h_idx, w_idx, radius)
    plane = (n_idx * 3 + c_idx) * 35
    torch.testing.assert_close(got, plane + index.reshape(-1), atol=0, rtol=0)


def test_window_argmax_dispatch_scans_sparse_positions_only(monkeypatch):
    values = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    one = [torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([3])]
    every = torch.nonzero(torch.ones_like(values, dtype=torch.bool), as_tuple=True)
    for positions, radius, scans in ((one, 1, True), (every, 5, False)):
        before = fused.LAUNCHES["window_argmax_kernel"]
        got = ops.window_argmax(values, *positions, radius)
        assert (fused.LAUNCHES["window_argmax_kernel"] > before) == scans
        use_torch_path(monkeypatch)
        torch.testing.assert_close(got, ops.window_argmax(values, *positions, radius))
        use_fused_on_cpu(monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_pieces", [1, 2, 3, 7])
def test_bezier_curve_matches_the_torch_path(monkeypatch, num_pieces, dtype):
    gen = torch.Generator().manual_seed(num_pieces)
    theta = torch.rand(4 * num_pieces - 2, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    cp = theta_to_control_points(theta, num_pieces).tolist()
    x = torch.rand(3, 5, 17, generator=gen, dtype=torch.float64)
    x.view(-1)[: 2 + len(cp) // 2] = torch.tensor([0.0, 1.0] + cp[0::2], dtype=torch.float64)
    x = x.to(dtype)
    pieces = curve_pieces(cp)
    for need_grad in (True, False):
        (g, d), (g_ref, d_ref) = _fused_then_torch(
            monkeypatch, lambda need_grad=need_grad: ops.bezier(x, pieces, need_grad))
        tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-14,
                                                                              rtol=1e-12)
        torch.testing.assert_close(g, g_ref, **tol)
        if need_grad:
            scale = d_ref.abs().max().item()
            torch.testing.assert_close(d, d_ref, atol=tol["atol"] * scale, rtol=tol["rtol"])
        else:
            assert d is None and d_ref is None
    # and through autograd
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)

    def run():
        leaf = x.clone().requires_grad_()
        bezier_curve(leaf, cp).backward(weight)
        return leaf.grad

    grad, grad_ref = _fused_then_torch(monkeypatch, run)
    torch.testing.assert_close(grad, grad_ref, atol=1e-5 if dtype == torch.float32 else 1e-12,
                               rtol=1e-4 if dtype == torch.float32 else 1e-10)


@pytest.mark.slow
def test_retained_graph_and_double_backward(monkeypatch):
    labels = blob_labels(n=2, h=7, w=9, cell=3)
    loss = SurrogateLoss(all_metrics_params(), C, tolerance=2)
    logits = random_logits(labels, dtype=torch.float64)
    fresh = logits.clone().requires_grad_()
    loss(fresh, labels).backward()
    x = logits.clone().requires_grad_()
    value = loss(x, labels)
    (first,) = torch.autograd.grad(value, x, retain_graph=True)
    (second,) = torch.autograd.grad(value, x, retain_graph=True)
    torch.testing.assert_close(first, fresh.grad, atol=0, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="double backward|create_graph|differentiate twice"):
        (grad,) = torch.autograd.grad(loss(x, labels), x, create_graph=True)
        grad.square().sum().backward()


def test_switch_and_devices(monkeypatch):
    x = torch.rand(4)
    assert fused.use_fused(x) and ops.accelerated(x)
    assert not fused.use_fused(x.to(torch.float16))  # the loss computes in float32/float64
    assert not fused.use_fused(torch.zeros(4, dtype=torch.int64))
    monkeypatch.setattr(fused, "ENABLED", False)
    assert not fused.use_fused(x)
    monkeypatch.setattr(fused, "ENABLED", True)
    monkeypatch.setattr(fused, "DEVICES", ("cuda",))
    assert not fused.use_fused(x)
    labels = blob_labels(n=1, h=5, w=6, cell=2)
    before = sum(fused.LAUNCHES.values())
    SurrogateLoss(all_metrics_params(), C)(random_logits(labels), labels)
    assert sum(fused.LAUNCHES.values()) == before  # CPU tensors: never the fused path


def _python(code, env=None):
    environment = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=environment)


@pytest.mark.slow
def test_environment_switch():
    code = "from segloss_d2.surrogate import fused; print(fused.ENABLED)"
    assert _python(code, {"SEGLOSS_DISABLE_FUSED": "1"}).stdout.strip() == "False"
    assert _python(code, {"SEGLOSS_DISABLE_FUSED": "0"}).stdout.strip() == "True"


BLOCK_TRITON = """
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Blocker())
"""


@pytest.mark.slow
def test_core_works_without_triton():
    """Triton is optional: importing the surrogates never imports it, and without it the fused
    path is unavailable and the losses run on the pure-torch path (one warning)."""
    code = BLOCK_TRITON + """
import torch
import segloss_d2.surrogate as surrogate
from segloss_d2.surrogate import SurrogateLoss, fused, kernels, load_params
assert "triton" not in sys.modules
kernels.ENABLED = False
labels = torch.zeros(1, 6, 7, dtype=torch.long); labels[:, :, 4:] = 2
logits = torch.randn(1, 3, 6, 7, requires_grad=True)
loss = SurrogateLoss(load_params("voc_bf1"), 3, tolerance=1)
expected = loss(logits, labels)
fused.DEVICES = ("cuda", "cpu")
assert not fused.available() and "blocked" in str(fused.load_error())
assert not fused.use_fused(logits)
value = loss(logits, labels)
value.backward()
assert torch.equal(value, expected) and sum(fused.LAUNCHES.values()) == 0
print("ok")
"""
    proc = _python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    assert "Triton is not available" in proc.stderr


@pytest.mark.slow
def test_importing_the_core_does_not_import_triton():
    code = ("import sys, torch\nimport segloss_d2.surrogate, segloss_d2.surrogate.region\n"
            "import segloss_d2.surrogate.boundary, segloss_d2.surrogate.autograd\n"
            "assert 'triton' not in sys.modules, 'triton imported'\n"
            "assert 'segloss_d2.surrogate.triton_kernels' not in sys.modules\nprint('ok')")
    proc = _python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# --- the kernels compile for real GPUs (Triton's compiler needs no GPU) --------------------------

_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32",
          torch.uint8: "u8", torch.int8: "i8"}


def _recorded_launches(monkeypatch):
    """Every distinct kernel variant the losses launch, on small inputs: (kernel name, positional
    argument types, compile-time meta-parameters), the types as Triton writes them (``*fp32``,
    ``i32``, ...; an int 1 as ``one``: Triton makes it a constant at a real launch)."""
    variants = {}
    real = fused._launch

    def recording(name, grid, device, *args, **meta):
        types = tuple("*" + _TYPES[a.dtype] if torch.is_tensor(a) else
                      "one" if type(a) is int and a == 1 else
                      "i32" if type(a) is int else "fp32" for a in args)
        variants.setdefault((name, types, tuple(sorted(meta.items()))),
                            {"name": name, "types": list(types), "meta": meta})
        return real(name, grid, device, *args, **meta)

    monkeypatch.setattr(fused, "_launch", recording)
    loss = SurrogateLoss(all_metrics_params(), C, tolerance=1)
    for labels in (blob_labels(n=2, h=6, w=7, cell=3),  # void pixels: weights
                   blob_labels(n=1, h=6, w=7, c=3, cell=3, ignore=False)):  # no weights, absent
        for dtype in (torch.float32, torch.float64):
            loss(random_logits(labels, dtype=dtype).requires_grad_(), labels).backward()
            for cp in (load_params("voc_miou").control_points[0][0], [0.3, 0.6]):
                for need_grad in (False, True):
                    fused.bezier(torch.rand(50, dtype=dtype), curve_pieces(cp), need_grad)
    return list(variants.values())


COMPILE = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from segloss_d2.surrogate import triton_kernels

assert not triton_kernels.INTERPRETED
target = GPUTarget("cuda", int(sys.argv[1]), 32)
num_warps = int(sys.argv[2])


def compile_variant(name, types, meta, specialize_ones):
    kernel = getattr(triton_kernels, name)
    signature, constants = {}, dict(meta)
    for arg, kind in zip(kernel.arg_names, types):
        if kind == "one" and specialize_ones:
            signature[arg], constants[arg] = "constexpr", 1
        else:
            signature[arg] = "i32" if kind == "one" else kind
    for arg in meta:
        signature[arg] = "constexpr"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=target, options={"num_warps": num_warps})


try:  # can Triton's CUDA toolchain (ptxas) compile here at all?
    compile_variant("bezier_kernel", ["*fp32", "*fp32", "*fp32", "*fp32", "i32", "i32"],
                    {"NEED_GRAD": True, "BLOCK": 128}, False)
except Exception as e:
    print(f"SKIP Triton cannot compile for {target} here: {type(e).__name__}: {e}")
    sys.exit(0)
failures = []
for variant in json.load(sys.stdin):  # ints equal to 1 made constants, as Triton launches them
    label = f"{variant['name']} {variant['types']} {variant['meta']}"
    try:
        ptx = compile_variant(variant["name"], variant["types"], variant["meta"], True).asm["ptx"]
    except Exception as e:
        failures.append(f"{label}: {type(e).__name__}: {e}")
        continue
    if "sqrt.approx" in ptx or "div.full" in ptx:
        failures.append(f"{label}: approximate float32 square root or division")
print("\n".join(failures) or "ok")
"""


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.slow
def test_every_launched_kernel_compiles_for_a_gpu(monkeypatch, arch):
    """Compile (Triton -> PTX -> cubin, in a process without the interpreter) every kernel
    variant the losses launch, for sm_80 (A100) and sm_90 (H100/H200), so that GPU-only compile
    errors show up on a CPU machine; and no approximate float32 sqrt or division."""
    import json

    variants = _recorded_launches(monkeypatch)
    assert {v["name"] for v in variants} == {
        "bezier_kernel", "region_forward_kernel", "region_backward_kernel", "bf1_forward_kernel",
        "bf1_backward_kernel", "bf1_route_kernel", "window_argmax_kernel", "scatter_add_kernel"}
    proc = subprocess.run([sys.executable, "-c", COMPILE, str(arch), str(fused.NUM_WARPS)],
                          input=json.dumps(variants), capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=dict(os.environ, TRITON_INTERPRET="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip()[5:])
    assert proc.stdout.strip() == "ok", proc.stdout[-5000:]
