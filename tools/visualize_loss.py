#!/usr/bin/env python
"""Plot the g curves and h_AND / h_OR surfaces of a params file or preset.

    tools/visualize_loss.py voc_miou                       # -> output/visualize/voc_miou_*.png
    tools/visualize_loss.py output/search/best_params.json voc_bf1 --output-dir plots/
    tools/visualize_loss.py --list                         # the shipped presets
"""
import argparse
import os

from segloss_d2.surrogate.params import list_presets, load_params
from segloss_d2.visualize import plot_curves, plot_surfaces


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("params", nargs="*", help="preset names or params JSON files")
    parser.add_argument("--output-dir", default="output/visualize")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    args = parser.parse_args()
    if args.list or not args.params:
        print("presets:", ", ".join(list_presets()))
        return
    for name in args.params:
        params = load_params(name)
        stem = os.path.splitext(os.path.basename(name))[0]
        title = f"{name}: {' + '.join(params.metrics)}"
        for kind, plot in (("curves", plot_curves), ("surfaces", plot_surfaces)):
            path = os.path.join(args.output_dir, f"{stem}_{kind}.png")
            plot(params, path, title=title)
            print("wrote", path)


if __name__ == "__main__":
    main()
