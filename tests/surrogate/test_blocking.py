"""Cache blocking of the curve evaluations: results must not depend on the block size.

``bezier.block_size`` decides how many elements one cache block holds (``BLOCK_ELEMENTS`` per
CPU thread). The consumers (``ops``, ``boundary`` and ``morphology``, through ``bezier``) are
run here with monkeypatched block sizes: a single element, sizes that divide nothing, the row
length of the (N, K, H*W) layout and one more, and more than the whole tensor. Every call of the
block kernel is counted, so a patch that does not take effect fails instead of testing nothing.
"""
import math

import pytest
import torch

from segloss_d2.surrogate import bezier, kernels
from segloss_d2.surrogate.bezier import (
    ACCELERATOR_BLOCK_ELEMENTS,
    BLOCK_ELEMENTS,
    bezier_curve,
    block_size,
)
from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import list_presets, load_params

from ._reference import surrogate as reference_surrogate
from .test_loss import C, blob_labels, random_logits

H, W = 5, 7  # H * W = 35: the row length of the dense (N, K, H*W) blocks
# 1 element; 4 divides no row; the row length and one more (whole-row blocks of 1 row);
# 150 (4 rows, does not divide 6 classes); more than everything
RELAXED_STEPS = [1, 4, H * W, H * W + 1, 150, 10**7]
# metrics whose per-pixel work is elementwise and whose sums do not depend on the blocks
ELEMENTWISE = {"mACC", "pACC", "BF1"}


@pytest.fixture(autouse=True)
def compute_path(monkeypatch):
    """Blocking is the pure-torch path's (the C++ kernels block internally): torch path only."""
    monkeypatch.setattr(kernels, "ENABLED", False)
    return "torch"


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _use_block_size(monkeypatch, step):
    """Make every consumer block by ``step`` elements; returns the block-kernel call counter.

    Also (re)selects the pure-torch path: the tests call ``monkeypatch.undo()`` between steps."""
    monkeypatch.setattr(kernels, "ENABLED", False)
    # every consumer (ops, boundary, morphology) reads these from the bezier module at call time
    monkeypatch.setattr(bezier, "block_size", lambda x: step)
    counter = _Counter(bezier.evaluate_block)
    monkeypatch.setattr(bezier, "evaluate_block", counter)
    return counter


def test_block_size_follows_block_elements_and_devices(monkeypatch):
    x = torch.empty(10)
    assert block_size(x) == BLOCK_ELEMENTS * torch.get_num_threads()
    monkeypatch.setattr(bezier, "BLOCK_ELEMENTS", 3)
    assert block_size(x) == 3 * torch.get_num_threads()
    # off the CPU a fixed cap, whatever the size (checked on the meta device, no GPU needed)
    assert block_size(torch.empty(5, 7, device="meta")) == ACCELERATOR_BLOCK_ELEMENTS
    assert block_size(torch.empty(2**23 + 1, device="meta")) == ACCELERATOR_BLOCK_ELEMENTS
    monkeypatch.setattr(bezier, "ACCELERATOR_BLOCK_ELEMENTS", 5)
    assert block_size(torch.empty(0, device="meta")) == 5
    assert block_size(x) == 3 * torch.get_num_threads()  # CPU blocks do not follow the cap


def test_block_elements_drives_the_blocking(monkeypatch):
    """The documented knob itself: BLOCK_ELEMENTS per thread, through the real block_size."""
    cp = load_params("voc_miou").control_points[0][0]
    x = torch.rand(1000, dtype=torch.float64)
    expected = bezier_curve(x, cp)
    monkeypatch.setattr(bezier, "BLOCK_ELEMENTS", 3)
    counter = _Counter(bezier.evaluate_block)
    monkeypatch.setattr(bezier, "evaluate_block", counter)
    got = bezier_curve(x, cp)
    assert counter.calls == math.ceil(1000 / (3 * torch.get_num_threads()))
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_pieces", [1, 2, 3])
def test_bezier_curve_is_bitwise_block_size_invariant(monkeypatch, dtype, num_pieces):
    gen = torch.Generator().manual_seed(num_pieces)
    theta = torch.rand(4 * num_pieces - 2, generator=gen, dtype=torch.float64)
    cp = bezier.theta_to_control_points(theta, num_pieces).tolist()
    x = torch.rand(3, 7, 11, generator=gen, dtype=torch.float64)
    x.view(-1)[: 2 + len(cp) // 2] = torch.tensor([0.0, 1.0] + cp[0::2], dtype=torch.float64)
    x = x.to(dtype)
    weight = torch.randn(x.shape, generator=gen, dtype=dtype)

    def run():
        leaf = x.clone().requires_grad_()
        value = bezier_curve(leaf, cp)
        value.backward(weight)
        return value.detach(), leaf.grad

    expected = run()
    for step in (1, 2, 50, x.numel(), x.numel() + 1, 10**6):  # 231 = 3 * 7 * 11 is odd
        counter = _use_block_size(monkeypatch, step)
        got = run()
        assert counter.calls == math.ceil(x.numel() / step)
        torch.testing.assert_close(got, expected, atol=0, rtol=0, msg=f"block of {step}")
        monkeypatch.undo()


@pytest.mark.parametrize("preset", sorted(list_presets()))
@pytest.mark.parametrize("ignore", [True, False], ids=["void", "no-void"])
def test_surrogate_loss_is_block_size_invariant(monkeypatch, preset, ignore):
    params = load_params(preset)
    metric = params.metrics[0]
    labels = blob_labels(n=2, h=H, w=W, cell=2, ignore=ignore)
    loss = SurrogateLoss(params, C, tolerance=2)
    for dtype in (torch.float64, torch.float32):
        logits = random_logits(labels, dtype=dtype)

        def run(logits=logits):
            leaf = logits.clone().requires_grad_()
            value = loss(leaf, labels)
            value.backward()
            return value.detach(), leaf.grad

        expected = run()
        scale = expected[1].abs().max().item()
        assert scale > 0
        for step in RELAXED_STEPS:
            counter = _use_block_size(monkeypatch, step)
            value, grad = run()
            assert counter.calls >= math.ceil(labels.numel() / step)
            msg = f"{metric} {dtype} block of {step}"
            if metric in ELEMENTWISE and dtype == torch.float64:
                torch.testing.assert_close(value, expected[0], atol=0, rtol=0, msg=msg)
                torch.testing.assert_close(grad, expected[1], atol=0, rtol=0, msg=msg)
            else:
                # the per-class region sums are reduced block by block: summation order only
                eps = torch.finfo(dtype).eps
                torch.testing.assert_close(value, expected[0], atol=0, rtol=8 * eps, msg=msg)
                torch.testing.assert_close(grad, expected[1], atol=8 * eps * scale, rtol=64 * eps,
                                           msg=msg)
            monkeypatch.undo()


def _simulate_accelerator(monkeypatch, cap):
    """Block every consumer as on a GPU (the real non-CPU branch of ``block_size``, its cap set to
    ``cap``); returns the block-kernel counter and the list of every workspace's block length."""
    monkeypatch.setattr(kernels, "ENABLED", False)  # the torch path, also after an undo()
    monkeypatch.setattr(bezier, "ACCELERATOR_BLOCK_ELEMENTS", cap)
    real_block_size, real_workspace = bezier.block_size, bezier.workspace
    blocks = []

    def recording_workspace(x, step):
        work = real_workspace(x, step)
        blocks.append(work.shape[1])
        return work

    monkeypatch.setattr(bezier, "block_size",  # x's size on a device other than the CPU
                        lambda x: real_block_size(torch.empty(x.shape, device="meta")))
    monkeypatch.setattr(bezier, "workspace", recording_workspace)
    counter = _Counter(bezier.evaluate_block)
    monkeypatch.setattr(bezier, "evaluate_block", counter)
    return counter, blocks


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_accelerator_blocks_bound_the_scratch_and_match_the_reference(monkeypatch, preset):
    """The GPU path blocks too: scratch of at most ``cap`` elements per temporary, same results."""
    params = load_params(preset)
    metric, cps = params.metrics[0], params.control_points[0]
    labels = blob_labels(n=2, h=30, w=34)  # rows of 1020 elements in the (N, K, H*W) layout
    loss = SurrogateLoss(params, C, tolerance=2)
    logits = random_logits(labels, dtype=torch.float64)

    def run(fn):
        leaf = logits.clone().requires_grad_()
        value = fn(leaf)
        value.backward()
        return value.detach(), leaf.grad

    cpu = run(lambda x: loss(x, labels))
    reference = run(lambda x: 1 - reference_surrogate(metric, x, labels, cps, tol=2))
    scale = reference[1].abs().max().item()
    for cap in (300, 2500):  # part of a row; two rows and part of a third
        counter, blocks = _simulate_accelerator(monkeypatch, cap)
        value, grad = run(lambda x: loss(x, labels))
        assert blocks and max(blocks) <= cap
        assert counter.calls >= math.ceil(labels.numel() / cap)
        msg = f"{metric} accelerator block of {cap}"
        torch.testing.assert_close(value, reference[0], atol=1e-12, rtol=1e-10, msg=msg)
        torch.testing.assert_close(grad, reference[1], atol=1e-12 * scale, rtol=1e-8, msg=msg)
        eps = torch.finfo(torch.float64).eps  # vs the CPU blocks: summation order only
        torch.testing.assert_close(value, cpu[0], atol=0, rtol=8 * eps, msg=msg)
        torch.testing.assert_close(grad, cpu[1], atol=8 * eps * scale, rtol=64 * eps, msg=msg)
        monkeypatch.undo()
