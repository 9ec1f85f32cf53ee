"""Plots of surrogate parameters: g curves and the h_AND / h_OR surfaces (matplotlib ``Figure``:
no pyplot, so importing this never switches a notebook's backend).

Core module (torch + matplotlib; no detectron2). Used by tools/visualize_loss.py, the search's
outputs and the demo.
"""
import os
import textwrap

import torch
from matplotlib.figure import Figure

from .surrogate.autograd import bezier_curve
from .surrogate.bezier import control_point_coordinates

__all__ = ["curve_names", "plot_curves", "plot_surfaces"]

_NAMES = {1: ("AND",), 2: ("AND", "OR"), 4: ("g1: AND(p)", "g2: AND(erode p)", "g3: OR(p)",
                                            "g4: OR(erode p)")}


def curve_names(num_curves):
    """Curve labels: AND (Acc), AND/OR (IoU-type) or g1..g4 (BF1, docs/method.md §2.2)."""
    return _NAMES[num_curves]


def _g(control_points, x):
    return bezier_curve(x, control_points).numpy()


def plot_curves(params, path, title=None):
    """One panel per metric with its g curves (and the identity, dashed); saves a PNG at ``path``.

    Args:
        params (SurrogateParams): parameters to draw.
        path (str): output PNG path (parent directories are created).
    """
    x = torch.linspace(0, 1, 501, dtype=torch.float64)
    n = len(params.metrics)
    fig = Figure(figsize=(4.2 * n, 4))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, metric, curves, pieces in zip(axes[0], params.metrics, params.control_points,
                                          params.num_pieces):
        ax.plot(x, x, "k--", lw=0.8, label="identity (naive)")
        for name, cp in zip(curve_names(len(curves)), curves):
            ax.plot(x, _g(cp, x), lw=2, label=name)
            xs, ys = control_point_coordinates(cp)
            ax.plot(xs, ys, "o", ms=3, alpha=0.5, color=ax.lines[-1].get_color())
        ax.set(title=f"{metric} ({pieces} piece{'s' * (pieces > 1)})", xlabel="probability p",
               ylabel="g(p)", xlim=(0, 1), ylim=(0, 1), aspect="equal")
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(textwrap.fill(title, width=int(60 * n)), fontsize=10)
    _save(fig, path)


def plot_surfaces(params, path, title=None):
    """h_AND and h_OR of every metric on [0, 1]^2 as heat maps with contours; saves a PNG.

    For IoU/Acc-type metrics the first argument is the prediction (warped by g) and the second the
    ground truth: h_AND = g_A(a)·b, h_OR = g_O(a) + b − g_O(a)·b. For BF1 both arguments are
    continuous (p and its erosion): h_AND = g1(a)·g2(b), h_OR = g3(a) + g4(b) − g3(a)·g4(b).
    """
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="xy")
    panels = []
    for metric, curves in zip(params.metrics, params.control_points):
        if len(curves) == 4:
            h_and = torch.from_numpy(_g(curves[0], a)) * torch.from_numpy(_g(curves[1], b))
            ga, gb = torch.from_numpy(_g(curves[2], a)), torch.from_numpy(_g(curves[3], b))
            panels += [(f"{metric} h_AND", h_and), (f"{metric} h_OR", ga + gb - ga * gb)]
        else:
            ga = torch.from_numpy(_g(curves[0], a))
            panels.append((f"{metric} h_AND", ga * b))
            if len(curves) == 2:
                go = torch.from_numpy(_g(curves[1], a))
                panels.append((f"{metric} h_OR", go + b - go * b))
    fig = Figure(figsize=(3.8 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, h) in zip(axes[0], panels):
        im = ax.imshow(h.numpy(), origin="lower", extent=(0, 1, 0, 1), vmin=0, vmax=1,
                       cmap="viridis")
        ax.contour(grid.numpy(), grid.numpy(), h.numpy(), levels=[0.1, 0.3, 0.5, 0.7, 0.9],
                   colors="white", linewidths=0.6)
        ax.set(title=name, xlabel="a (prediction)", ylabel="b")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def _save(fig, path):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
