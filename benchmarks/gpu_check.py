#!/usr/bin/env python
"""The measurements a GPU user needs, in one run of at most ~5 minutes on one GPU.

    python benchmarks/gpu_check.py --output gpu_check.json         # cuda, full sizes, JSON
    python benchmarks/gpu_check.py --sections loss,eval             # a subset
    python benchmarks/gpu_check.py --device cpu                     # small sizes: CI smoke test
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --device cpu  # + the fused path on CPU

It needs only torch, numpy and OpenCV for its ``loss`` and ``eval`` sections (no detectron2, no
compiled extension ``segloss_d2._C``); Triton (installed with torch) for the fused rows. Run it
from a checkout (the repository root goes on ``sys.path``); nothing is downloaded.

Sections (each measured against a baseline in the same run, never against a stored number):

1. ``loss``: forward+backward of every surrogate (mIoU, fwIoU, BIoU, BF1, mACC, pACC; the VOC
   presets) on the Cityscapes batch (2, 19, 512, 1024), on two paths: ``eager`` (the pure-torch
   path) and ``fused`` (the Triton kernels of ``segloss_d2.surrogate.fused``), vs cross-entropy,
   in fp32 and under autocast (float16 logits, the AMP recipe; bfloat16 on CPU). Each loss step
   follows a cross-entropy step and the ratio is the median of these pairs; peak memory is
   ``torch.cuda.max_memory_allocated`` above what was allocated before the step. Also: the
   largest differences between the two paths (value and gradient; on the full batch and on
   odd-sized batches with void pixels, an absent class and all pixels ignored; under autocast
   on the loss scaled as AMP's GradScaler scales it), and the operator calls and
   kernel launches of one forward+backward at two image sizes (they must not grow with the
   image; ``bench_loss.count_ops``).
2. ``proxy`` (needs detectron2): the search's inner loop (``train_candidates``) on the paper's
   proxy config ``configs/voc_miou.yaml`` (R50-DeepLabV3+, 128x128 crops, batch 32) from scratch
   on synthetic VOC-sized data: K=1 vs K=4 models per worker (one data pipeline), and K=4 with
   ``SOLVER.AMP.ENABLED`` (CUDA only): trials per hour of ``SEARCH.PROXY.MAX_ITER`` proxies.
3. ``train`` (needs detectron2): a few iterations of the VOC DeepLabV3+ R101 config
   (``configs/voc/deeplabv3plus_R101_miou.yaml``, ``LOSS_TYPE searched``) from scratch
   (``MODEL.WEIGHTS ""``) on synthetic 512x512 images with 21 classes, batch 4 (one GPU's share
   of the paper's 32), vs the same model with cross-entropy; fp32 and AMP (CUDA only): seconds per
   iteration, peak memory, loss finite.
4. ``eval``: ``SegMetrics`` (all metrics) on 1024x2048 predictions with 19 classes: seconds per
   image; with detectron2 also ``SegLossEvaluator``, which must agree with it.

The detectron2 sections (and the evaluator part of ``eval``) run only when detectron2 imports;
otherwise they are reported as skipped, with the reason, and do not fail the run. No dataset is
downloaded: images and labels are generated into a temporary directory (and registered as
detectron2 datasets). On CPU (or with ``--small``) every size shrinks so that the whole run takes
well under a minute (what tests/benchmarks/test_gpu_check.py runs); there the fused rows run only
in Triton's interpreter (``TRITON_INTERPRET=1``: slow, timings meaningless). A failing section is
reported (traceback, ``"error"`` in the JSON) and the others still run; the exit status is 1 if
any section failed.
"""
import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

from bench_eval import make_scene  # noqa: E402
from bench_loss import SURROGATES, make_inputs, operator_counts  # noqa: E402

SECTIONS = ("loss", "proxy", "train", "eval")
D2_SECTIONS = ("proxy", "train")  # need detectron2 (eval: only its evaluator part)
PATHS = ("eager", "fused")
PROXY_CONFIG = os.path.join(REPO, "configs", "voc_miou.yaml")
TRAIN_CONFIG = os.path.join(REPO, "configs", "voc", "deeplabv3plus_R101_miou.yaml")

# Sizes per mode: "full" on a GPU (the whole run ~5 minutes or less on one GPU), "small" on CPU.
SIZES = {
    "full": dict(
        loss_shape=(2, 19, 512, 1024), loss_repeat=10,
        count_shapes=((2, 19, 128, 256), (2, 19, 512, 1024)),
        image=512, proxy_train_images=96, proxy_reward_images=16, proxy_iters=20,
        proxy_batch=32, proxy_crop=128, proxy_min_sizes=(64, 96, 128, 160, 192, 224, 256),
        proxy_test_size=128, proxy_workers=8, proxy_candidates_k1=2, proxy_candidates_k4=4,
        train_images=32, train_batch=4, train_crop=512, train_iters=12, train_warmup=2,
        train_workers=8, eval_size=(1024, 2048), eval_images=4,
    ),
    "small": dict(
        loss_shape=(2, 6, 16, 32), loss_repeat=1,
        count_shapes=((2, 6, 16, 32), (2, 6, 32, 64)),
        image=64, proxy_train_images=8, proxy_reward_images=2, proxy_iters=1,
        proxy_batch=2, proxy_crop=32, proxy_min_sizes=(32, 48, 64),
        proxy_test_size=32, proxy_workers=0, proxy_candidates_k1=1, proxy_candidates_k4=4,
        train_images=4, train_batch=2, train_crop=64, train_iters=2, train_warmup=1,
        train_workers=0, eval_size=(128, 256), eval_images=2,
    ),
}
# Small mode also thins the networks (same depth, dilations, output stride and heads; 1/8 of the
# widths), so the CPU smoke run exercises the same code in seconds.
THIN = ["MODEL.RESNETS.WIDTH_PER_GROUP", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", 32,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", [8]]


def detectron2_error():
    """None if detectron2 imports, else why not (a string)."""
    try:
        import detectron2  # noqa: F401
    except Exception as e:  # not installed, or broken against this torch
        return f"{type(e).__name__}: {e}"
    return None


# --- timing helpers ------------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Seconds of ``with timer:`` blocks: CUDA events (GPU time between the two records, after a
    synchronize) on a GPU, wall time on CPU."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self._end.record()
            torch.cuda.synchronize(self.device)
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0
        return False


def _reset_peak(device):
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return None


def _peak_mib(device, base):
    """MiB allocated at the peak since ``_reset_peak`` above ``base``; None on CPU."""
    if device.type != "cuda":
        return None
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def _fmt(value, spec=".2f", none="n/a"):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _amp_dtype(device):
    """The autocast dtype of AMP: float16 on CUDA (detectron2's AMPTrainer), bfloat16 on CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


# --- synthetic VOC-sized data --------------------------------------------------------------------

def _label_map(rng, size, num_classes):
    """(H, W) uint8: blocky regions of random classes, a few void (255) blobs."""
    cell = max(size // 8, 4)
    cells = rng.integers(0, num_classes, (-(-size // cell), -(-size // cell)))
    labels = np.kron(cells, np.ones((cell, cell), dtype=np.int64))[:size, :size].astype(np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, size - 4, 2)
        labels[y:y + max(size // 16, 2), x:x + max(size // 16, 2)] = 255
    return labels


def make_voc_like(root, name, count, size, seed, num_classes=21):
    """Write ``count`` (size x size) RGB images and label PNGs under ``root`` and register them as
    the detectron2 dataset ``name`` (VOC metadata: 21 classes, ignore 255). Returns the dicts."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    from segloss_d2.data.voc import VOC_CLASSES

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    dicts = []
    for i in range(count):
        labels = _label_map(rng, size, num_classes)
        image = palette[labels] // 2 + rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
        image_path = os.path.join(root, name, f"{i:04d}.jpg")
        label_path = os.path.join(root, name, f"{i:04d}.png")
        Image.fromarray(image).save(image_path, quality=90)
        Image.fromarray(labels).save(label_path)
        dicts.append({"file_name": image_path, "sem_seg_file_name": label_path,
                      "height": size, "width": size, "image_id": i})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: list(dicts))
    MetadataCatalog.get(name).set(stuff_classes=list(VOC_CLASSES), ignore_label=255,
                                  evaluator_type="sem_seg")
    return dicts


# --- 1. losses -----------------------------------------------------------------------------------

class _Autocast(torch.nn.Module):
    """A loss called under ``torch.autocast`` (as in an AMP training step: the head's logits come
    in the autocast dtype, the backward runs outside the context)."""

    def __init__(self, loss, device_type, dtype):
        super().__init__()
        self.loss, self.device_type, self.dtype = loss, device_type, dtype

    def forward(self, logits, labels):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.loss(logits, labels)


def _loss_step(loss_fn, logits, labels):
    x = logits.detach().clone().requires_grad_()

    def step():
        x.grad = None
        loss = loss_fn(x, labels)
        loss.backward()
        return loss

    step.input = x
    return step


def fused_status(device):
    """(None, or why the fused rows are skipped on ``device``); on CPU, with
    ``TRITON_INTERPRET=1``, the fused path is switched on for CPU tensors (Triton's interpreter)."""
    from segloss_d2.surrogate import fused

    if not fused.available():
        return f"Triton is not available: {fused.load_error()}"
    if device.type != "cuda":
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            return ("the fused path runs on CUDA (on CPU only in Triton's interpreter: set "
                    "TRITON_INTERPRET=1)")
        fused.DEVICES = tuple(fused.DEVICES) + (device.type,)
    saved, fused.ENABLED = fused.ENABLED, True
    try:
        if not fused.use_fused(torch.empty(1, device=device)):
            return f"the fused path does not run on {device} (see the warning above)"
    finally:
        fused.ENABLED = saved
    return None


@contextlib.contextmanager
def loss_path(path):
    """Run the surrogates on ``path``: ``eager`` (pure torch; the compiled CPU kernels off too)
    or ``fused`` (the Triton kernels)."""
    from segloss_d2.surrogate import fused, kernels

    saved = fused.ENABLED, kernels.ENABLED
    fused.ENABLED, kernels.ENABLED = path == "fused", False
    try:
        yield
    finally:
        fused.ENABLED, kernels.ENABLED = saved


# GradScaler's initial scale: unscaled, the gradient of a loss averaged over a million pixels
# (~1e-7) is float16-subnormal, and both paths would round it to multiples of 2**-24
AMP_LOSS_SCALE = 2.0**16


def _value_and_grad(loss_fn, logits, labels):
    """Value and gradient in float64; for float16/bfloat16 logits the backward runs on the loss
    scaled by ``AMP_LOSS_SCALE`` (as AMP training does) and the gradient is unscaled."""
    x = logits.detach().clone().requires_grad_()
    value = loss_fn(x, labels)
    scale = AMP_LOSS_SCALE if x.dtype in (torch.float16, torch.bfloat16) else 1.0
    (value * scale).backward()
    return value.detach().double(), x.grad.detach().double() / scale


def _agreement(name, precision, loss_fn, logits, labels):
    """Largest differences between the eager and the fused path, value and gradient, and whether
    they are within float32 round-off (or one unit in the last place of a float16/bfloat16
    gradient)."""
    with loss_path("eager"):
        value, grad = _value_and_grad(loss_fn, logits, labels)
    with loss_path("fused"):
        value_f, grad_f = _value_and_grad(loss_fn, logits, labels)
    scale = float(grad.abs().max())
    row = {"loss": name, "precision": precision, "value_eager": float(value),
           "value_abs_diff": float((value - value_f).abs()),
           "grad_max_abs_diff": float((grad - grad_f).abs().max()), "grad_scale": scale}
    # float32 round-off of sums over millions of pixels, in a different order
    # (under autocast the gradient has the logits' dtype: one unit of its last place, relative)
    grad_tol = max(1e-3, 2 * torch.finfo(logits.dtype).eps)
    row["agree"] = (row["value_abs_diff"] <= 1e-4 * max(1.0, abs(row["value_eager"]))
                    and row["grad_max_abs_diff"] <= grad_tol * max(scale, 1e-12))
    return row


def section_loss(device, sizes):
    from segloss_d2.losses import LOSSES
    from segloss_d2.surrogate import SurrogateLoss, load_params

    shape, repeat = sizes["loss_shape"], sizes["loss_repeat"]
    skip_fused = fused_status(device)
    paths = [p for p in PATHS if p != "fused" or skip_fused is None]
    logits32, labels = make_inputs(shape, device)
    ce = LOSSES["cross_entropy"](shape[1]).to(device)
    surrogates = [(name, SurrogateLoss(load_params(preset), shape[1]).to(device))
                  for name, preset in SURROGATES]
    amp = _amp_dtype(device)
    print(f"logits {tuple(shape)} on {device}; median of {repeat} forward+backward; paths: eager "
          f"(pure torch), fused (Triton kernels"
          + (")" if skip_fused is None else f": skipped, {skip_fused})"))
    print("x CE = median of paired ratios (each step right after a CE step of the same "
          "precision); peak = memory allocated during the step above its inputs")
    print(f"{'loss':16s} {'path':>6s} {'precision':>9s} {'ms':>9s} {'x CE':>6s} {'peak MiB':>9s} "
          f"{'x CE':>6s} {'loss':>10s}")
    rows, agreement = [], []
    for precision in ("fp32", "amp"):
        label = precision if precision == "fp32" else str(amp)
        logits = logits32 if precision == "fp32" else logits32.to(amp)

        def wrap(fn, precision=precision):
            return fn if precision == "fp32" else _Autocast(fn, device.type, amp)

        ce_step = _loss_step(wrap(ce), logits, labels)
        ce_step()
        runs = [("cross_entropy", None, ce_step)]
        for name, fn in surrogates:
            for path in paths:
                runs.append((name, path, _loss_step(wrap(fn), logits, labels)))
        for _, path, step in runs:  # warm every loss (kernels, allocator) before timing any
            with loss_path(path or "eager"):
                step()
        base_time = base_peak = None
        for name, path, step in runs:
            with loss_path(path or "eager"):
                times, ratios = [], []
                for _ in range(repeat):
                    with _Timer(device) as t_ce:
                        ce_step()
                    with _Timer(device) as t:
                        value = step()
                    times.append(t.seconds)
                    ratios.append(t.seconds / max(t_ce.seconds, 1e-9))
                base = _reset_peak(device)
                step()
                peak = _peak_mib(device, base)
            seconds = _median(times)
            if base_time is None:
                base_time, base_peak = seconds, peak
            value = float(value.detach())
            row = {"loss": name, "path": path, "precision": label, "ms": seconds * 1e3,
                   "ratio_vs_ce": _median(ratios), "median_ratio_vs_ce": seconds / base_time,
                   "peak_mib": peak,
                   "peak_ratio_vs_ce": None if peak is None else peak / max(base_peak, 1e-9),
                   "loss_value": value, "finite": math.isfinite(value)}
            rows.append(row)
            print(f"{name:16s} {path or '-':>6s} {label:>9s} {row['ms']:9.2f} "
                  f"{row['ratio_vs_ce']:6.2f} {_fmt(peak, '9.1f'):>9s} "
                  f"{_fmt(row['peak_ratio_vs_ce'], '6.2f'):>6s} {value:10.4f}"
                  + ("" if row["finite"] else "  NON-FINITE"))
        del runs, ce_step
        if skip_fused is None:
            for name, fn in surrogates:
                agreement.append(_agreement(name, label, wrap(fn), logits, labels))
    if skip_fused is None:
        agreement += edge_agreement(device, amp)
        print("eager vs fused: largest |value difference|, largest |gradient difference| / "
              "largest |gradient|")
        for row in agreement:
            print(f"{row['loss']:16s} {row['precision']:>26s} {row['value_abs_diff']:10.2e} "
                  f"{row['grad_max_abs_diff'] / max(row['grad_scale'], 1e-30):10.2e}"
                  + ("" if row["agree"] else "  DISAGREE"))
    ops = section_ops(device, sizes, surrogates, ce, paths)
    return {"shape": list(shape), "repeat": repeat, "paths": paths, "fused_skipped": skip_fused,
            "rows": rows, "agreement": agreement, "ops": ops}


# the edge cases of tests/surrogate/test_fused.py, on the device: odd sizes with void pixels and
# absent classes, one all-ignore batch; fp32 and under autocast
EDGE_SHAPES = ((1, 5, 37, 53), (3, 7, 61, 29))


def edge_agreement(device, amp):
    """Agreement rows of every surrogate on the edge inputs of ``EDGE_SHAPES``."""
    from segloss_d2.surrogate import SurrogateLoss, load_params

    rows = []
    for shape in EDGE_SHAPES:
        n, c, h, w = shape
        gen = torch.Generator().manual_seed(sum(shape))
        logits = (torch.randn(shape, generator=gen) * 3).to(device)
        labels = torch.randint(0, c - 1, (n, h, w), generator=gen)  # class c-1 absent
        labels[torch.rand(n, h, w, generator=gen) < 0.1] = 255
        cases = [("", labels.to(device)), (" all-ignore", torch.full_like(labels, 255).to(device))]
        for name, preset in SURROGATES:
            fn = SurrogateLoss(load_params(preset), c).to(device)
            for suffix, target in cases:
                for label, x, loss_fn in (("fp32", logits, fn),
                                          (str(amp), logits.to(amp), _Autocast(fn, device.type,
                                                                               amp))):
                    row = _agreement(f"{name}{suffix}", f"{label} {tuple(shape)}", loss_fn, x,
                                     target)
                    row["edge"] = True
                    rows.append(row)
    return rows


def section_ops(device, sizes, surrogates, ce, paths):
    """Operator calls and kernel launches of one fp32 forward+backward at two image sizes."""
    shapes = sizes["count_shapes"]
    print(f"operator calls of one fp32 forward+backward at {' and '.join(map(str, shapes))}: aten "
          f"calls + fused Triton launches" + (" (CUDA kernels run)" if device.type == "cuda"
                                             else ""))
    inputs = [make_inputs(shape, device) for shape in shapes]
    rows = []
    cuda, cuda_error = device.type == "cuda", None
    for name, fn, path in [("cross_entropy", ce, None)] + [
            (name, fn, path) for name, fn in surrogates for path in paths]:
        with loss_path(path or "eager"):
            try:
                counts = [operator_counts(fn, logits, labels, cuda) for logits, labels in inputs]
            except Exception as e:  # e.g. CUPTI not permitted in a container: CPU events only
                if not cuda:
                    raise
                cuda, cuda_error = False, f"{type(e).__name__}: {e}"
                print(f"CUDA kernels not counted (the profiler's CUDA activity failed: "
                      f"{cuda_error})")
                counts = [operator_counts(fn, logits, labels, False) for logits, labels in inputs]
        row = {"loss": name, "path": path, "shapes": [list(s) for s in shapes], "counts": counts,
               # what the loss calls; the kernels torch runs for one call may vary with the
               # size (e.g. the radix sort of index_put_ on a GPU), reported apart
               "constant": all(counts[0][k] == c[k] for c in counts
                               for k in ("aten_calls", "fused_launches")),
               "cuda_kernels_constant": all(counts[0]["cuda_kernels"] == c["cuda_kernels"]
                                            for c in counts),
               "cuda_profiler_error": cuda_error}
        rows.append(row)
        cells = [f"{c['aten_calls']}+{c['fused_launches']}"
                 + (f" ({c['cuda_kernels']})" if c["cuda_kernels"] is not None else "")
                 for c in counts]
        print(f"{name:16s} {path or '-':>6s} " + "  ".join(f"{c:>16s}" for c in cells)
              + ("" if row["constant"] else "  GROWS WITH THE IMAGE")
              + ("" if row["cuda_kernels_constant"] else "  (CUDA kernels vary)"))
    return rows


# --- 2. the search's proxies ---------------------------------------------------------------------

def _proxy_cfg(device, sizes, train_name, opts=()):
    from segloss_d2.engine import get_segloss_cfg

    cfg = get_segloss_cfg()
    cfg.merge_from_file(PROXY_CONFIG)
    s = sizes
    cfg.merge_from_list([
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", str(device), "DATASETS.TRAIN", (train_name,),
        "SEARCH.PROXY.MAX_ITER", s["proxy_iters"], "SOLVER.IMS_PER_BATCH", s["proxy_batch"],
        "INPUT.CROP.SIZE", (s["proxy_crop"], s["proxy_crop"]),
        "INPUT.MIN_SIZE_TRAIN", s["proxy_min_sizes"], "INPUT.MIN_SIZE_TEST", s["proxy_test_size"],
        "DATALOADER.NUM_WORKERS", s["proxy_workers"], "OUTPUT_DIR", "",
    ] + (THIN if s is SIZES["small"] else []) + list(opts))
    return cfg


def section_proxy(device, sizes, root):
    from segloss_d2.search.settings import SearchSettings
    from segloss_d2.search.trial import train_candidates

    s = sizes
    train = make_voc_like(root, "gpu_check_proxy_train", s["proxy_train_images"], s["image"], 1)
    reward = make_voc_like(root, "gpu_check_proxy_reward", s["proxy_reward_images"], s["image"], 2)
    settings = SearchSettings.from_config(_proxy_cfg(device, sizes, "gpu_check_proxy_train"))
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor(settings.space.initial_mu())
    n = max(s["proxy_candidates_k1"], s["proxy_candidates_k4"])
    thetas = torch.stack([mu] + [(mu + 0.2 * torch.randn(mu.shape, generator=g)).clamp(0, 1)
                                 for _ in range(n - 1)])
    print(f"configs/voc_miou.yaml from scratch on synthetic {s['image']}x{s['image']} images: "
          f"{s['proxy_iters']} iterations of batch {s['proxy_batch']} at {s['proxy_crop']}x"
          f"{s['proxy_crop']}, reward on {len(reward)} images, {s['proxy_workers']} loader workers")
    if device.type == "cuda":  # warm-up: CUDA context, cuDNN autotuning, loader workers
        warm = _proxy_cfg(device, sizes, "gpu_check_proxy_train", ["SEARCH.PROXY.MAX_ITER", 1])
        train_candidates(SearchSettings.from_config(warm), thetas[:1], train, reward)
    runs = [("K=1", 1, s["proxy_candidates_k1"], ()), ("K=4", 4, s["proxy_candidates_k4"], ())]
    if device.type == "cuda":
        runs.append(("K=4 AMP", 4, s["proxy_candidates_k4"], ("SOLVER.AMP.ENABLED", True)))
    rows = []
    print(f"{'models/worker':14s} {'trials':>6s} {'s/trial':>8s} {'trials/h':>9s} {'x K=1':>6s} "
          f"{'peak MiB':>9s}  rewards")
    for name, k, count, opts in runs:
        settings = SearchSettings.from_config(
            _proxy_cfg(device, sizes, "gpu_check_proxy_train", list(opts)))
        results, peak = [], 0.0
        start = time.perf_counter()
        for first in range(0, count, k):
            base = _reset_peak(device)
            group = thetas[first:min(first + k, count)]
            results += train_candidates(settings, group, train, reward)
            group_peak = _peak_mib(device, base)
            peak = None if group_peak is None else max(peak, group_peak)
        _sync(device)
        seconds = time.perf_counter() - start
        row = {"run": name, "models_per_worker": k, "trials": count,
               "seconds_per_trial": seconds / count, "trials_per_hour": 3600 * count / seconds,
               "peak_mib": peak, "rewards": [r["reward"] for r in results],
               "statuses": [r["status"] for r in results]}
        rows.append(row)
        row["ratio_vs_k1"] = row["trials_per_hour"] / rows[0]["trials_per_hour"]
        print(f"{name:14s} {count:6d} {row['seconds_per_trial']:8.2f} "
              f"{row['trials_per_hour']:9.0f} {row['ratio_vs_k1']:6.2f} {_fmt(peak, '9.1f'):>9s}"
              f"  {[round(r, 4) for r in row['rewards']]}")
    if device.type != "cuda":
        print("K=4 AMP: skipped (SOLVER.AMP.ENABLED needs CUDA, as detectron2's AMPTrainer)")
    same = rows[0]["rewards"] == rows[1]["rewards"][:len(rows[0]["rewards"])]
    print(f"K=1 and K=4 give the same rewards (the search's promise): {same}")
    return {"proxy_iters": s["proxy_iters"], "batch": s["proxy_batch"], "rows": rows,
            "k1_equals_k4": same}


# --- 3. VOC DeepLabV3+ R101 training iterations --------------------------------------------------

def _train_cfg(device, sizes, train_name, loss_type, amp):
    from segloss_d2.engine import get_segloss_cfg

    s = sizes
    cfg = get_segloss_cfg()
    cfg.merge_from_file(TRAIN_CONFIG)
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", str(device), "DATASETS.TRAIN", (train_name,),
            "SOLVER.IMS_PER_BATCH", s["train_batch"], "SOLVER.MAX_ITER", s["train_iters"],
            "SOLVER.AMP.ENABLED", amp, "INPUT.CROP.SIZE", (s["train_crop"], s["train_crop"]),
            "DATALOADER.NUM_WORKERS", s["train_workers"], "MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type,
            "OUTPUT_DIR", ""]
    if s is SIZES["small"]:
        opts += THIN + ["INPUT.MIN_SIZE_TRAIN", (s["train_crop"],),
                        "INPUT.MAX_SIZE_TRAIN", 4 * s["image"]]
    cfg.merge_from_list(opts)
    cfg.freeze()
    return cfg


def _train_run(device, sizes, train_name, loss_type, amp):
    """Seconds per iteration (median after the warm-up), data seconds, peak MiB, last loss of a
    few iterations of SegLossTrainer's model/optimizer/schedule/loader, stepped like detectron2's
    SimpleTrainer (fp32) or AMPTrainer (autocast float16 + GradScaler)."""
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    from segloss_d2.engine import SegLossTrainer

    cfg = _train_cfg(device, sizes, train_name, loss_type, amp)
    seed_all_rng(cfg.SEED)
    model = SegLossTrainer.build_model(cfg)
    model.train()
    optimizer = SegLossTrainer.build_optimizer(cfg, model)
    scheduler = SegLossTrainer.build_lr_scheduler(cfg, optimizer)
    loader = iter(SegLossTrainer.build_train_loader(cfg))
    scaler = None
    if amp:  # detectron2's AMPTrainer: one GradScaler, float16 autocast
        scaler = (torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler")
                  else torch.cuda.amp.GradScaler())
    times, data_times, losses = [], [], []
    base = None
    with EventStorage(0):
        for it in range(sizes["train_iters"]):
            if it == sizes["train_warmup"]:
                base = _reset_peak(device)
            t0 = time.perf_counter()
            data = next(loader)
            data_times.append(time.perf_counter() - t0)
            with _Timer(device) as t:
                with torch.autocast("cuda") if amp else contextlib.nullcontext():
                    loss_dict = model(data)
                    loss = sum(loss_dict.values())
                optimizer.zero_grad()
                if amp:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
            times.append(t.seconds)
            losses.append(float(loss.detach()))
    peak = _peak_mib(device, base if base is not None else 0)  # above model + optimizer state
    total = _peak_mib(device, 0)
    timed = times[sizes["train_warmup"]:] or times
    del model, optimizer, scheduler, loader
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"loss_type": loss_type, "amp": amp, "seconds_per_iter": _median(timed),
            "data_seconds_per_iter": _median(data_times[sizes["train_warmup"]:] or data_times),
            "peak_mib": peak, "peak_total_mib": total, "losses": losses,
            "finite": all(map(math.isfinite, losses))}


def section_train(device, sizes, root):
    s = sizes
    make_voc_like(root, "gpu_check_voc_train", s["train_images"], s["image"], 3)
    print(f"configs/voc/deeplabv3plus_R101_miou.yaml from scratch (MODEL.WEIGHTS \"\") on "
          f"synthetic {s['image']}x{s['image']} images, 21 classes: batch {s['train_batch']}, crop "
          f"{s['train_crop']}, {s['train_iters']} iterations ({s['train_warmup']} warm-up not "
          f"timed), {s['train_workers']} loader workers")
    runs = [("cross_entropy", False), ("searched", False)]
    if device.type == "cuda":
        runs += [("cross_entropy", True), ("searched", True)]
    rows = []
    print("peak MiB: allocated at the peak of the timed iterations, in all / above the model and "
          "optimizer state")
    print(f"{'loss':14s} {'precision':>9s} {'s/iter':>8s} {'x CE':>6s} {'data s':>7s} "
          f"{'peak MiB':>17s}  losses")
    for loss_type, amp in runs:
        row = _train_run(device, sizes, "gpu_check_voc_train", loss_type, amp)
        ce = next((r for r in rows if r["loss_type"] == "cross_entropy" and r["amp"] == amp), row)
        row["ratio_vs_ce"] = row["seconds_per_iter"] / ce["seconds_per_iter"]
        rows.append(row)
        print(f"{loss_type:14s} {'amp' if amp else 'fp32':>9s} {row['seconds_per_iter']:8.3f} "
              f"{row['ratio_vs_ce']:6.2f} {row['data_seconds_per_iter']:7.3f} "
              f"{_fmt(row['peak_total_mib'], '8.0f'):>8s} {_fmt(row['peak_mib'], '8.0f'):>8s}  "
              f"{[round(v, 3) for v in row['losses']]}"
              + ("" if row["finite"] else "  NON-FINITE"))
    if device.type != "cuda":
        print("AMP rows: skipped (SOLVER.AMP.ENABLED needs CUDA, as detectron2's AMPTrainer)")
    return {"batch": s["train_batch"], "crop": s["train_crop"], "iters": s["train_iters"],
            "rows": rows}


# --- 4. evaluator --------------------------------------------------------------------------------

def section_eval(device, sizes, root):
    from segloss_d2.evaluation.metrics import SegMetrics

    (h, w), count, num_classes = sizes["eval_size"], sizes["eval_images"], 19
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, num_classes, h, w) for _ in range(count)]
    print(f"{count} predictions of {h}x{w}, {num_classes} classes, all metrics (BIoU, BF1, "
          f"Boundary IoU included), tolerance 5")

    metrics = SegMetrics(num_classes, ignore_value=255, tolerance=5)
    start = time.perf_counter()
    for pred, gt in scenes:
        metrics.update(pred, gt)
    update_s = (time.perf_counter() - start) / count
    start = time.perf_counter()
    summary = metrics.compute()
    compute_s = time.perf_counter() - start
    print(f"SegMetrics.update        {update_s:8.3f} s/image (compute {compute_s:.3f} s)")
    print(f"mIoU {summary['mIoU']:.2f} BIoU {summary['BIoU']:.2f} BF1 {summary['BF1']:.2f}")
    result = {"size": [h, w], "images": count, "segmetrics_seconds_per_image": update_s,
              "segmetrics_compute_seconds": compute_s, "mIoU": summary["mIoU"],
              "BIoU": summary["BIoU"], "BF1": summary["BF1"]}
    missing = detectron2_error()
    if missing is not None:
        print(f"SegLossEvaluator: skipped, detectron2 is not importable ({missing})")
        result["evaluator_skipped"] = f"detectron2 is not importable: {missing}"
        return result
    result.update(_evaluator(device, root, scenes, summary, num_classes, h, w))
    return result


def _evaluator(device, root, scenes, summary, num_classes, h, w):
    """SegLossEvaluator (detectron2) on the same predictions: seconds per image, agreement."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    from segloss_d2.evaluation.evaluator import SegLossEvaluator

    count = len(scenes)
    folder = os.path.join(root, "gpu_check_eval")
    os.makedirs(folder, exist_ok=True)
    dicts = []
    for i, (_, gt) in enumerate(scenes):
        path = os.path.join(folder, f"{i}_gt.png")
        Image.fromarray(gt).save(path)
        dicts.append({"file_name": f"image_{i}.png", "sem_seg_file_name": path,
                      "height": h, "width": w})
    name = "gpu_check_eval"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: list(dicts))
    MetadataCatalog.get(name).set(stuff_classes=[f"c{i}" for i in range(num_classes)],
                                  ignore_label=255)
    # the detectron2 evaluator gets (C, H, W) scores on the model's device, as from inference
    outputs = []
    for pred, _ in scenes:
        scores = torch.zeros((num_classes, h, w), device=device)
        scores.scatter_(0, torch.from_numpy(pred.astype(np.int64)).to(device)[None], 1.0)
        outputs.append(scores)
    evaluator = SegLossEvaluator(name, distributed=False, tolerance=5)
    evaluator.reset()
    _sync(device)
    start = time.perf_counter()
    for d, scores in zip(dicts, outputs):
        evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": scores}])
    results = evaluator.evaluate()["sem_seg"]
    evaluator_s = (time.perf_counter() - start) / count
    same = all(results[k] == summary[k] or (math.isnan(results[k]) and math.isnan(summary[k]))
               for k in ("mIoU", "BIoU", "BF1"))
    print(f"SegLossEvaluator         {evaluator_s:8.3f} s/image (process from {device} scores, "
          f"GT PNG read, evaluate); agrees with SegMetrics: {same}")
    return {"evaluator_seconds_per_image": evaluator_s, "agree": same}


# --- main ----------------------------------------------------------------------------------------

def _environment(device):
    from segloss_d2.surrogate import fused, kernels

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # optional
        triton_version = None
    d2_error = detectron2_error()
    if d2_error is None:
        import detectron2

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "triton": triton_version, "numpy": np.__version__,
           "detectron2": detectron2.__version__ if d2_error is None else None,
           "detectron2_error": d2_error, "device": str(device),
           "torch_threads": torch.get_num_threads(),
           "cpu_kernels": bool(kernels.ENABLED),
           "cpu_kernels_error": None if kernels.available() else str(kernels.load_error()),
           "fused_available": fused.available(),
           "fused_error": None if fused.available() else str(fused.load_error()),
           "fused_enabled": bool(fused.ENABLED)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:N or cpu (default: cuda if available, else cpu)")
    parser.add_argument("--small", action="store_true",
                        help="small sizes (automatic on cpu): a smoke test in well under a minute")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--output", default="", help="write every number to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available (use --device cpu)")
    if device.type == "cuda":  # "cuda" alone is the current device (set_device wants an index)
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None
                              else device.index)
        torch.cuda.set_device(device)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        parser.error(f"--sections {args.sections!r}: expected a comma-separated subset of "
                     f"{list(SECTIONS)}")
    mode = "small" if args.small or device.type == "cpu" else "full"
    sizes = SIZES[mode]

    d2_error = detectron2_error()
    if d2_error is None and any(name in D2_SECTIONS for name in sections):
        from segloss_d2 import engine  # noqa: F401  (registers segloss_d2's heads and datasets)

    report = {"environment": _environment(device), "mode": mode, "sections": {}}
    print(f"== environment ==\n{json.dumps(report['environment'])}\nsizes: {mode}")
    failed = []
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segloss_gpu_check_") as root:
        for name in sections:
            print(f"\n== {name} ==")
            start = time.perf_counter()
            try:
                if name in D2_SECTIONS and d2_error is not None:
                    print(f"skipped: detectron2 is not importable ({d2_error})")
                    result = {"skipped": f"detectron2 is not importable: {d2_error}"}
                elif name == "loss":
                    result = section_loss(device, sizes)
                else:
                    result = globals()[f"section_{name}"](device, sizes, root)
            except Exception as e:  # report, run the other sections, exit 1 at the end
                traceback.print_exc()
                result = {"error": f"{type(e).__name__}: {e}"}
                failed.append(name)
            result["seconds"] = time.perf_counter() - start
            report["sections"][name] = result
            print(f"({name}: {result['seconds']:.1f} s)")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["seconds"] = time.perf_counter() - total
    report["failed"] = failed
    report["skipped"] = [name for name in sections if "skipped" in report["sections"][name]]
    ran = "every section ran" if not report["skipped"] else (
        f"skipped: {report['skipped']} (detectron2 not importable), the others ran")
    print(f"\n== done in {report['seconds']:.1f} s" +
          (f"; FAILED sections: {failed} ==" if failed else f"; {ran} =="))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"JSON: {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
