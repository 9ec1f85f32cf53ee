"""Statistics scope (segloss_d2.surrogate.stats, SurrogateLoss(stats=...)): docs/method.md §2.5.

``global`` runs in two gloo processes on CPU and must give, on every process, the loss value of one
process holding the concatenated batch, and logits gradients W times that process's slice of the
one-process gradient (W = 2), so that DDP's averaging gives the parameters exactly the one-process
gradient (checked with a real DistributedDataParallel model too). Both compute paths (the
conftest fixture) run in the child processes.
"""
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segloss_d2.surrogate import kernels
from segloss_d2.surrogate.loss import SurrogateLoss
from segloss_d2.surrogate.params import METRICS, identity_params, list_presets, load_params
from segloss_d2.surrogate.stats import LOCAL, STATS_SCOPES, Reducer, check_stats, reducer

C = 5
PRESET = {load_params(name).metrics[0]: name for name in list_presets()}  # metric -> its preset
WORLD = 2


def _blobs(n, h, w, seed, classes):
    """(n, h, w) piecewise-constant labels drawn from ``classes`` (cells of 6 px)."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(classes), (n, -(-h // 6), -(-w // 6)), generator=gen)
    cells = torch.tensor(classes)[pick]
    return cells.repeat_interleave(6, 1).repeat_interleave(6, 2)[:, :h, :w].contiguous()


def scenarios():
    """Global batches (4, H, W) split 2 + 2 over the ranks, chosen so that the per-rank batches
    disagree with the global one: name -> (labels, logits)."""
    h, w = 20, 22
    out = {}
    # 1. both ranks have every kind of pixel, void bands included
    labels = _blobs(4, h, w, 0, list(range(C)))
    labels[0, 5:7] = 255
    labels[3, :, 4] = 255
    out["mixed"] = labels
    # 2. rank 0 holds classes {0, 1} only, rank 1 classes {0, 2, 3} and a single-class image:
    #    present classes and BF1 classes differ per rank; class 4 is absent everywhere
    labels = torch.cat([_blobs(2, h, w, 1, [0, 1]), _blobs(2, h, w, 2, [0, 2, 3])])
    labels[3] = 2
    out["disjoint_classes"] = labels
    # 3. every pixel of rank 1 is void, and rank 0 has no ground-truth boundary (uniform images):
    #    each rank alone would skip terms the global batch has
    labels = torch.cat([torch.full((1, h, w), 1), torch.full((1, h, w), 3),
                        torch.full((2, h, w), 255)])
    out["one_rank_void"] = labels
    gen = torch.Generator().manual_seed(7)
    return {name: (lab, torch.randn(4, C, h, w, generator=gen, dtype=torch.float64) * 2)
            for name, lab in out.items()}


def losses(stats):
    """One loss per metric (released curves, all six) and one sum of all six, float64."""
    out = {m: SurrogateLoss(load_params(PRESET[m]), C, tolerance=2, stats=stats) for m in METRICS}
    out["mIoU_present_only"] = SurrogateLoss(load_params("voc_miou"), C, tolerance=2,
                                             present_classes_only=True, stats=stats)
    out["all_six"] = SurrogateLoss(identity_params(list(METRICS)), C, tolerance=2, stats=stats)
    return out


def assert_close(got, want, what, rtol=1e-10):
    torch.testing.assert_close(got, want, rtol=rtol, atol=1e-12, msg=lambda m: f"{what}: {m}")


def value_and_grad(loss, logits, labels):
    x = logits.clone().requires_grad_()
    value = loss(x, labels)
    value.backward()
    return value.detach(), x.grad


class _Net(torch.nn.Module):
    """A 1x1 convolution: images (N, 3, H, W) -> logits (N, C, H, W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, C, 1).double()

    def forward(self, x):
        return self.conv(x)


def _images(n, h, w):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, h, w, generator=gen, dtype=torch.float64)


def _worker(rank, init_file, use_kernels, out_dir):
    """One rank of the gloo group: global-scope values and gradients of every scenario and
    loss, and the parameter gradients of a DDP model."""
    try:
        torch.set_num_threads(1)
        kernels.ENABLED = use_kernels
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=WORLD)
        part = slice(2 * rank, 2 * rank + 2)
        results = {}
        for name, (labels, logits) in scenarios().items():
            for key, loss in losses("global").items():
                results[name, key] = value_and_grad(loss, logits[part], labels[part])
        labels = scenarios()["mixed"][0]
        model = torch.nn.parallel.DistributedDataParallel(_Net())
        loss = SurrogateLoss(identity_params(list(METRICS)), C, tolerance=2, stats="global")
        loss(model(_images(4, *labels.shape[1:])[part]), labels[part]).backward()
        results["ddp"] = [p.grad for p in model.parameters()]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


def test_global_two_processes_equal_one_process_on_the_whole_batch(tmp_path, compute_path):
    # fork: the children inherit the imported modules (spawned ones re-import torch, several
    # seconds on a loaded CPU); DDP's construction imports torch._dynamo, so import it here once
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    import torch._dynamo  # noqa: F401
    procs = [ctx.Process(target=_worker, args=(r, str(tmp_path / "store"),
                                               compute_path == "cpu_kernels", str(tmp_path)))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    errors = [(tmp_path / f"rank{r}.err") for r in range(WORLD)]
    errors = [e.read_text() for e in errors if e.exists()]
    assert not hung, "a rank hung (collectives out of step)"
    assert not errors and all(p.exitcode == 0 for p in procs), errors
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    checked = 0
    for name, (labels, logits) in scenarios().items():
        for key, loss in losses("local").items():
            value, grad = value_and_grad(loss, logits, labels)
            for rank, results in enumerate(ranks):
                r_value, r_grad = results[name, key]
                assert_close(r_value, value, f"{name} {key} rank {rank}")
                # W x the one-process gradient of this rank's slice (DDP then averages)
                assert_close(r_grad / WORLD, grad[2 * rank: 2 * rank + 2],
                             f"{name} {key} rank {rank} grad", rtol=1e-9)
            checked += bool(grad.abs().sum() > 0)
    assert checked >= 20  # the comparisons are not between zero gradients

    # a real DDP model: averaged parameter gradients == one process on the whole batch
    labels = scenarios()["mixed"][0]
    model = _Net()
    loss = SurrogateLoss(identity_params(list(METRICS)), C, tolerance=2)
    loss(model(_images(4, *labels.shape[1:])), labels).backward()
    for rank, results in enumerate(ranks):
        for got, want in zip(results["ddp"], model.parameters()):
            assert_close(got, want.grad, f"DDP parameter gradient, rank {rank}", rtol=1e-9)


def test_global_without_process_group_is_local():
    assert not dist.is_initialized()
    assert reducer("global") is LOCAL and reducer("image") is LOCAL
    labels, logits = scenarios()["mixed"]
    local, glob = losses("local"), losses("global")
    for key in local:
        v1, g1 = value_and_grad(local[key], logits, labels)
        v2, g2 = value_and_grad(glob[key], logits, labels)
        assert torch.equal(v1, v2) and torch.equal(g1, g2), key


@pytest.mark.parametrize("name", ["mixed", "disjoint_classes"])
def test_image_is_the_mean_of_per_image_losses(name):
    labels, logits = scenarios()[name]
    local, image = losses("local"), losses("image")
    differs = 0
    for key in local:
        if key == "all_six" and name == "disjoint_classes":
            continue  # no single per-image loss: its terms average over different images
        # image 3 of "disjoint_classes" has one class and no boundary: BF1 (and BIoU, whose band
        # is empty) may be undefined there and are then left out of their means (next test)
        images = [i for i in range(len(labels)) if key == "all_six" or local[key].surrogates(
            logits[i:i + 1], labels[i:i + 1])[0][local[key].metrics[0]] is not None]
        value, grad = value_and_grad(image[key], logits, labels)
        parts = [value_and_grad(local[key], logits[i:i + 1], labels[i:i + 1]) for i in images]
        assert_close(value, torch.stack([v for v, _ in parts]).mean(), key)
        want = torch.zeros_like(grad)
        want[images] = torch.cat([g for _, g in parts]) / len(images)
        assert_close(grad, want, f"{key} grad", rtol=1e-9)
        differs += not torch.allclose(value, local[key](logits, labels))
    assert differs >= 3  # per-image statistics are not the batch's


def test_image_leaves_out_images_where_a_metric_is_undefined():
    """A surrogate undefined on an image (BF1/BIoU without ground-truth boundary, a metric that
    counts no pixel of an all-void image: docs/method.md §2.3) is left out of the mean over the
    images, never counted as 0 or NaN."""
    labels, logits = scenarios()["mixed"]
    labels = labels.clone()
    labels[1] = 255  # image 1: every pixel void
    labels[2] = 3    # image 2: one class, no boundary
    local, leaving = losses("local"), 0
    for key, loss in losses("image").items():
        if key == "all_six":
            continue
        metric = loss.metrics[0]
        defined = [i for i in range(len(labels))
                   if local[key].surrogates(logits[i:i + 1], labels[i:i + 1])[0][metric]
                   is not None]
        assert defined, key
        leaving += len(defined) < len(labels)
        value, grad = value_and_grad(loss, logits, labels)
        want = torch.stack([local[key](logits[i:i + 1], labels[i:i + 1]) for i in defined])
        assert_close(value, want.mean(), key)
        left_out = [i for i in range(len(labels)) if i not in defined]
        assert not grad[left_out].any(), key
    assert leaving >= 3  # at least fwIoU, BIoU and BF1 leave images out
    x = logits.clone().requires_grad_()
    value = losses("image")["all_six"](x, torch.full_like(labels, 255))
    value.backward()
    assert torch.isfinite(value) and not x.grad.any()


@pytest.mark.parametrize("bad", ["batch", "GLOBAL", "", None, 1])
def test_unknown_scope_is_refused(bad):
    with pytest.raises(ValueError, match=r"stats.*must be one of \['local', 'global', 'image'\]"):
        SurrogateLoss(identity_params(["mIoU"]), C, stats=bad)
    with pytest.raises(ValueError, match="SURROGATE.STATS must be one of"):
        check_stats(bad, "SURROGATE.STATS")


def test_scopes_and_reducer_basics():
    assert STATS_SCOPES == ("local", "global", "image")
    assert "stats=image" in repr(SurrogateLoss(identity_params(["mIoU"]), C, stats="image"))
    t = torch.arange(3.0, requires_grad=True)
    (out,) = LOCAL.sums(t)
    assert out is t and LOCAL.counts(t) is t
    assert Reducer(True).distributed and not LOCAL.distributed
