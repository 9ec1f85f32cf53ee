"""Cost of the statistics scopes (docs/method.md §2.5): ``image`` vs ``local``, per surrogate.

Usage: python benchmarks/bench_stats.py [--quick] [--repeat R] [--threads T] [--torch-path]

``image`` computes every surrogate on each image alone (a loop over the images), ``local`` on the
whole mini-batch at once. For each searched preset and each input shape, the ratio is the median
of paired forward+backward times (each ``image`` step right after a ``local`` step on the same
input, as in bench_loss.py), so load from other jobs cancels out. ``global`` is not timed: in one
process it is ``local``; with several it adds one all-reduce of a few C numbers per term each way,
which depends on the interconnect, not on this code.

Shapes (N, C, H, W): (2, 19, 256, 512) (bench_loss.py's), (8, 7, 96, 128) (the segloss_shapes
training batch) and (16, 19, 64, 128) (many small images); ``--quick``: the last two.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_loss import SURROGATES, make_inputs, measure  # noqa: E402

from segloss_d2.surrogate import SurrogateLoss, kernels, load_params  # noqa: E402

SHAPES = [(2, 19, 256, 512), (8, 7, 96, 128), (16, 19, 64, 128)]


def run(shape, repeat):
    logits, labels = make_inputs(shape, torch.device("cpu"))
    print(f"\n== {tuple(shape)}, {torch.get_num_threads()} thread(s), median of {repeat} paired "
          f"forward+backward ==")
    print(f"{'surrogate':10s} {'local ms':>9s} {'image ms':>9s} {'image/local':>11s}")
    for name, preset in SURROGATES:
        params = load_params(preset)
        local = SurrogateLoss(params, shape[1], tolerance=2 if shape[2] < 128 else 5)
        image = SurrogateLoss(params, shape[1], tolerance=local.tolerance, stats="image")
        t_local, _, _, _ = measure(local, logits, labels, repeat)
        t_image, ratio, _, _ = measure(image, logits, labels, repeat, baseline=local)
        print(f"{name:10s} {t_local * 1e3:9.1f} {t_image * 1e3:9.1f} {ratio:11.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two small-image shapes")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--torch-path", action="store_true",
                        help="surrogates on the pure-torch path, not the compiled CPU kernels")
    args = parser.parse_args()
    if args.torch_path:
        kernels.ENABLED = False
    if args.threads:
        torch.set_num_threads(args.threads)
    path = "compiled CPU kernels" if kernels.ENABLED else "pure torch"
    print(f"surrogates on {path}")
    for shape in SHAPES[1:] if args.quick else SHAPES:
        run(shape, args.repeat)


if __name__ == "__main__":
    main()
