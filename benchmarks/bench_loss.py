"""Forward+backward time, peak memory and operator calls of each surrogate and baseline vs CE.

Usage: python benchmarks/bench_loss.py [--quick] [--shape N,C,H,W] [--repeat R]
                                      [--device cpu|cuda|all] [--threads T] [--torch-path]
                                      [--losses mIoU,BF1,... | --one-process]

Input: logits (2, 19, 256, 512) (``--quick``: (2, 19, 64, 128); ``--shape 2,19,512,1024``: the
Cityscapes batch of issue 21's targets for the pure-torch path); labels are piecewise-constant
(random 32x32-pixel cells, every class present, a void band), so boundaries are realistic.
Time ratios are against cross-entropy measured in the same run, interleaved (robust to other jobs
on the machine), two ways (:func:`measure`): paired steps, and alternating blocks of steps. The
targets depend on the path (:data:`TARGETS`). Each loss is timed in its own process (the other
losses' allocations, e.g. lovasz's gigabytes, would otherwise shape the allocator state it runs
in); ``--one-process`` times them all in one. Peak memory: CUDA peak allocated
(``torch.cuda.max_memory_allocated``); on CPU the peak of memory allocated by torch, tracked with
the profiler. On CPU the surrogates run segloss_d2's compiled kernels when ``segloss_d2._C`` is
built, on CUDA the fused Triton kernels (``segloss_d2.surrogate.fused``); ``--torch-path``
measures the pure-torch implementation instead (the fallback on every device).
``ops``: operator calls of one forward+backward (:func:`count_ops`), which must not grow with the
image size on any path.
"""
import argparse
import contextlib
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segloss_d2.losses import LOSSES  # noqa: E402
from segloss_d2.surrogate import (  # noqa: E402
    SurrogateLoss,
    fused,
    identity_params,
    kernels,
    load_params,
)

# Ratio to cross-entropy per path and kind of surrogate (issue 21: the C++ kernels at the default
# shape, the pure-torch path at the Cityscapes batch 2,19,512,1024; fused: the first targets).
TARGETS = {
    "cpu_kernels": {"region": 1.5, "BIoU": 1.5, "BF1": 3.0},
    "torch": {"region": 3.0, "BIoU": 3.0, "BF1": 5.0},
    "fused": {"region": 3.0, "BIoU": 4.0, "BF1": 6.0},
}
SURROGATES = [("mIoU", "voc_miou"), ("fwIoU", "voc_fwiou"), ("BIoU", "voc_biou"),
              ("BF1", "voc_bf1"), ("mACC", "voc_macc"), ("pACC", "voc_gacc")]


def make_inputs(shape, device, seed=0):
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    cell = 32 if h >= 128 else 8
    cells = torch.randint(0, c, (n, -(-h // cell), -(-w // cell)), generator=gen)
    first = min(c, cells.numel())  # every class present when there are enough cells
    cells.view(-1)[:first] = torch.arange(first)
    labels = cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :h, :w].contiguous()
    labels[:, h // 2 : h // 2 + 3, :] = 255
    logits = torch.randn(shape, generator=gen) * 2
    return logits.to(device), labels.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stepper(loss_fn, logits, labels):
    x = logits.clone().requires_grad_()

    def step():
        x.grad = None
        loss_fn(x, labels).backward()

    return step


def _timed(step, device):
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


BLOCK = 3  # steps per block of the block estimate (its median drops a switch-over outlier)


def measure(loss_fn, logits, labels, repeat, baseline=None):
    """(median seconds per forward+backward, paired ratio, block ratio, peak bytes).

    With a baseline loss, two estimates of the ratio, each a median over ``repeat``
    repetitions, so that load from other jobs on the machine (which changes over seconds)
    cancels out instead of skewing every ratio the same way:

    - paired: one baseline step right before one loss step. Each step then follows the other
      loss, whose freed memory the allocator hands out differently (on CPU, large tensors
      are fresh pages: page faults), which can favour either side.
    - block: ``BLOCK`` baseline steps, then ``BLOCK`` loss steps, the ratio of the two
      blocks' medians: each loss in its steady state, as in a training loop that calls the
      same loss every step.

    Without a baseline both ratios are 1.
    """
    device = logits.device
    step = _stepper(loss_fn, logits, labels)
    base_step = None if baseline is None else _stepper(baseline, logits, labels)
    step()
    if base_step is not None:
        base_step()
    times, ratios, block_ratios = [], [], []
    for _ in range(repeat):
        base = None if base_step is None else _timed(base_step, device)
        times.append(_timed(step, device))
        if base is not None:
            ratios.append(times[-1] / base)
    for _ in range(repeat if base_step is not None else 0):
        base = _median([_timed(base_step, device) for _ in range(BLOCK)])
        block_ratios.append(_median([_timed(step, device) for _ in range(BLOCK)]) / base)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with profiled(memory=True) as prof:
            step()
        peak = _cpu_peak(prof)
    return _median(times), _median(ratios) if ratios else 1.0, \
        _median(block_ratios) if block_ratios else 1.0, peak


def _median(values):
    return sorted(values)[len(values) // 2]


@contextlib.contextmanager
def profiled(cuda=False, memory=False):
    """``torch.profiler.profile`` of the CPU (and CUDA) activity, its start/stop lines (printed
    on stderr by the profiler's backend) silenced; yields the profile."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with torch.profiler.profile(activities=activities, profile_memory=memory) as prof:
                yield prof
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def count_ops(prof):
    """Operator calls and kernel launches in a profile (:func:`profiled`), as a dict:

    - ``aten_calls``: aten operators called from Python or autograd, each counted once (the aten
      ops an operator calls internally are not counted again);
    - ``aten_events``: every aten event, nested ones included (what issue 21 counted);
    - ``fused_launches``: launches of the fused path's Triton kernels (ops inside them, e.g. the
      copies of Triton's interpreter on CPU, are not counted as aten ops);
    - ``cuda_kernels``: kernels that ran on the GPU (CUDA activity only; else None).
    """
    calls = events = launches = kernels_run = 0
    saw_cuda = False
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            saw_cuda = True
            kernels_run += 1
            continue
        if e.name.startswith(fused.PROFILER_PREFIX):
            launches += 1
            continue
        if not e.name.startswith("aten::"):
            continue
        parent, nested, in_launch = e.cpu_parent, False, False
        while parent is not None:
            nested |= parent.name.startswith("aten::")
            in_launch |= parent.name.startswith(fused.PROFILER_PREFIX)
            parent = parent.cpu_parent
        if in_launch:
            continue
        events += 1
        calls += not nested
    return {"aten_calls": calls, "aten_events": events, "fused_launches": launches,
            "cuda_kernels": kernels_run if saw_cuda else None}


def operator_counts(loss_fn, logits, labels, cuda=None):
    """:func:`count_ops` of one forward+backward of ``loss_fn`` after a warm-up step; the GPU's
    kernels too if ``cuda`` (default: on a CUDA device)."""
    step = _stepper(loss_fn, logits, labels)
    step()
    _sync(logits.device)
    with profiled(cuda=logits.device.type == "cuda" if cuda is None else cuda) as prof:
        step()
        _sync(logits.device)
    return count_ops(prof)


def _cpu_peak(prof):
    """Peak bytes allocated by torch on CPU during ``prof``: the running sum of each event's own
    allocations minus frees (``self_cpu_memory_usage``: an op's ``cpu_memory_usage`` includes
    the ops it calls, e.g. ``empty_like`` -> ``empty_strided``, so summing it counted an
    allocation once per nesting level)."""
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def build_losses(num_classes):
    rows = [("cross_entropy", LOSSES["cross_entropy"](num_classes), None)]
    for name, preset in SURROGATES:
        kind = name if name in ("BIoU", "BF1") else "region"
        rows.append((f"{name} (searched)", SurrogateLoss(load_params(preset), num_classes), kind))
    rows.append(("mIoU (naive/identity)", SurrogateLoss(identity_params(["mIoU"]), num_classes),
                 "region"))
    for key in ("wce", "dice", "lovasz", "hard_pixel_mining"):
        rows.append((key, LOSSES[key](num_classes), None))
    return rows


def run(device, shape, repeat, only=None):
    logits, labels = make_inputs(shape, device)
    rows = build_losses(shape[1])
    if only:  # cross-entropy (the baseline) and the losses whose name starts with one of these
        rows = rows[:1] + [r for r in rows[1:] if r[0].split()[0] in only]
    if device.type != "cpu":
        path_kind = "fused" if fused.use_fused(logits) else "torch"
        path = ("fused Triton kernels" if path_kind == "fused"
                else f"pure torch (Triton: {fused.load_error() or 'disabled'})")
    elif kernels.use_kernels(logits):
        path_kind, path = "cpu_kernels", "compiled CPU kernels (segloss_d2._C)"
    else:
        path_kind = "torch"
        path = f"pure torch (segloss_d2._C: {kernels.load_error() or 'disabled'})"
    targets = TARGETS[path_kind]
    print(f"\n== {device} {tuple(shape)}, {torch.get_num_threads()} thread(s), median of {repeat} "
          f"forward+backward; surrogates on {path} ==")
    print(f"x CE: median of paired ratios (each step right after a CE step); blocks: median of "
          f"the ratios of {BLOCK} loss steps to the {BLOCK} CE steps before them (each loss in "
          f"its steady state); targets are judged on the larger of the two")
    print("ops: aten operator calls (+ fused kernel launches) of one forward+backward")
    print(f"{'loss':24s} {'ms':>9s} {'x CE':>6s} {'blocks':>7s} {'peak MiB':>9s} {'x CE':>6s} "
          f"{'ops':>9s} {'target':>7s}")
    for _, loss_fn, _ in rows:  # warm every loss (allocator, workspaces) before timing any
        _stepper(loss_fn.to(device), logits, labels)()
    baseline, base_m = None, None
    for name, loss_fn, kind in rows:
        t, ratio, block_ratio, m = measure(loss_fn.to(device), logits, labels, repeat, baseline)
        ops = operator_counts(loss_fn, logits, labels)
        ops = f"{ops['aten_calls']}" + (f"+{ops['fused_launches']}" if ops["fused_launches"]
                                          else "")
        if baseline is None:
            baseline, base_m = loss_fn, max(m, 1)
        target = targets.get(kind)
        worst = max(ratio, block_ratio)  # judged on the less favourable of the two estimates
        verdict = "" if target is None else (f"<={target:g} " + ("ok" if worst <= target
                                                                  else "MISS"))
        print(f"{name:24s} {t * 1e3:9.1f} {ratio:6.2f} {block_ratio:7.2f} {m / 2**20:9.1f} "
              f"{m / base_m:6.2f} {ops:>9s} "
              f"{verdict}")


def _one_process_per_loss(names, devices):
    """Per device, run this script once per loss (``--device D --losses NAME``, the other
    arguments as given; the last occurrence wins) and print the first run whole, then only the
    loss rows of the others. Returns the exit status."""
    for device in devices:
        for i, name in enumerate(names):
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                                   "--device", device, "--losses", name],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                return proc.returncode
            for line in proc.stdout.splitlines():
                if i == 0 or line.split()[:1] == [name]:
                    print(line, flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small input (2, 19, 64, 128)")
    parser.add_argument("--shape", default=None,
                        help="N,C,H,W of the logits, e.g. 2,19,512,1024 (default 2,19,256,512)")
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--torch-path", action="store_true",
                        help="surrogates on the pure-torch path, not the compiled CPU kernels "
                             "or the fused Triton kernels")
    parser.add_argument("--losses", default=None,
                        help="only these losses (comma-separated first words of the rows, e.g. "
                             "mIoU,BF1,dice) besides cross-entropy, in this process")
    parser.add_argument("--one-process", action="store_true",
                        help="time every loss in this process (default: one process per loss, "
                             "so that no loss's memory, e.g. lovasz's gigabytes, shapes the "
                             "allocator state another loss is timed in)")
    args = parser.parse_args()
    known = [row[0].split()[0] for row in build_losses(2)[1:]]
    only = None
    if args.losses:
        only = {name.strip() for name in args.losses.split(",") if name.strip()}
        if not only or not only <= set(known):
            parser.error(f"--losses {args.losses!r}: expected names among {sorted(set(known))}")
    devices = ["cpu"] if args.device == "cpu" else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    if args.device == "all":
        devices.insert(0, "cpu")
    if not args.losses and not args.one_process:
        return _one_process_per_loss(list(dict.fromkeys(known)), devices)
    if args.torch_path:
        kernels.ENABLED = False
        fused.ENABLED = False
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (2, 19, 64, 128) if args.quick else (2, 19, 256, 512)
    if args.shape:
        try:
            shape = tuple(int(v) for v in args.shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 4 or min(shape) < 1:
            parser.error(f"--shape {args.shape!r}: expected four positive ints N,C,H,W")
    repeat = args.repeat or 5
    for device in devices:
        run(torch.device(device), shape, repeat, only)


if __name__ == "__main__":
    sys.exit(main())
