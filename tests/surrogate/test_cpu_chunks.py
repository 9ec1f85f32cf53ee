"""The pure-torch path's CPU chunks (``ops.CPU_CHUNK_ELEMENTS``, docs/method.md §2.6): on CPU,
above that many elements, the region surrogates' dense curve evaluation goes a class or a few at
a time and BF1's erosion, soft boundary and window maxima a group of whole planes at a time
(``ops.plane_chunks``). Chunked results equal the whole tensor's. Only the pure-torch path reads
the chunk size, so this module runs on it alone (``compute_path`` below replaces the conftest's
parametrized fixture).
"""
import pytest
import torch

from segloss_d2.surrogate import SurrogateLoss, load_params, ops

from .conftest import use_torch_path
from .test_autograd import LABELS, _check_retained_graph
from .test_loss import C, blob_labels, random_logits


@pytest.fixture(autouse=True)
def compute_path(monkeypatch):
    use_torch_path(monkeypatch)
    return "torch"


# elements per chunk: 2 (20, 24) planes (2 classes of one image), less than one plane
@pytest.mark.parametrize("chunk", [2 * 20 * 24, 100])
@pytest.mark.parametrize("preset", ["voc_miou", "voc_biou", "voc_fwiou", "voc_bf1"])
def test_cpu_chunks_equal_the_whole_tensor(preset, chunk, monkeypatch):
    """Forced with a tiny chunk: the region sums in chunks of one or two classes, with a class
    absent from the labels and BIoU's pixel weights; BF1's erosion, soft boundary and window
    maxima by whole planes, two or one at a time. Same value and gradient as the whole tensor."""
    labels = blob_labels(n=2, h=20, w=24, cell=5)
    labels[labels == 3] = 0  # class 3 absent: the dense sum runs over the present classes only
    loss = SurrogateLoss(load_params(preset), C, tolerance=2)
    logits = random_logits(labels, dtype=torch.float64)

    def run():
        leaf = logits.clone().requires_grad_()
        value = loss(leaf, labels)
        value.backward()
        return value.detach(), leaf.grad

    whole = run()
    monkeypatch.setattr(ops, "CPU_CHUNK_ELEMENTS", chunk)
    assert len(ops.plane_chunks(logits)) > 1
    chunked = run()
    torch.testing.assert_close(chunked[0], whole[0], atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(chunked[1], whole[1], atol=1e-13, rtol=1e-12)


@pytest.mark.parametrize("preset", ["voc_bf1", "voc_miou", "all-metrics"])
def test_retained_graph_in_cpu_chunks(preset, monkeypatch):
    """BF1's partials, written chunk by chunk into full-size tensors and consumed by the first
    backward, are recomputed the same way by the next (test_autograd.py's contract)."""
    monkeypatch.setattr(ops, "CPU_CHUNK_ELEMENTS", 2 * 11 * 13)
    _check_retained_graph(preset, LABELS["void"]())


@pytest.mark.parametrize("shape, chunk, expected", [
    ((2, 3, 4, 5), 40, [slice(0, 2), slice(2, 4), slice(4, 6)]),  # two planes a chunk
    ((2, 3, 4, 5), 50, [slice(0, 2), slice(2, 4), slice(4, 6)]),  # whole planes only
    ((2, 3, 4, 5), 7, [slice(i, i + 1) for i in range(6)]),  # a plane is larger than a chunk
    ((2, 3, 4, 5), 120, [slice(None)]),  # fits one chunk
    ((0, 3, 4, 5), 7, [slice(None)]),  # empty
])
def test_plane_chunks(shape, chunk, expected, monkeypatch):
    monkeypatch.setattr(ops, "CPU_CHUNK_ELEMENTS", chunk)
    assert ops.plane_chunks(torch.empty(shape)) == expected
    # elsewhere (accelerators) always the whole tensor: a fixed number of ops
    assert ops.plane_chunks(torch.empty(shape, device="meta")) == [slice(None)]


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_map_planes(layout, monkeypatch):
    """A plane-wise function computed chunk by chunk equals it on the whole tensor, for one output
    and for several, on a non-contiguous input too."""
    monkeypatch.setattr(ops, "CPU_CHUNK_ELEMENTS", 50)  # two (4, 5) planes a chunk
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if layout == "transposed":
        x = torch.randn(2, 3, 5, 4, dtype=torch.float64).transpose(-1, -2)
    torch.testing.assert_close(ops.map_planes(lambda t: t.cumsum(-1).cumsum(-2), x),
                               x.cumsum(-1).cumsum(-2), atol=0, rtol=0)
    first, second = ops.map_planes(lambda t: (t.flip(-1), t.amax(-2, keepdim=True) - t), x, 2)
    torch.testing.assert_close(first, x.flip(-1), atol=0, rtol=0)
    torch.testing.assert_close(second, x.amax(-2, keepdim=True) - x, atol=0, rtol=0)
