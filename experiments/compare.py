"""Train the same model with several losses (same seed, data order and schedule) and compare.

detectron2 adapter used by the demo (tools/demo.py) and by anyone who wants the paper's Table 1 on
their own data: every row is one ``LOSS_TYPE``/``SURROGATE`` override of one config.
"""
import json
import logging
import math
import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.env import seed_all_rng
from matplotlib.figure import Figure
from tabulate import tabulate

from segloss_d2.engine import SegLossTrainer
from segloss_d2.evaluation.evaluator import RESULTS_FILE

__all__ = ["train_and_evaluate", "comparison_table", "plot_predictions", "TABLE_METRICS"]

TABLE_METRICS = ("mIoU", "fwIoU", "BIoU", "BF1", "mACC", "pACC")
"""The six metrics of the paper's Table 1, in its column order (detectron2's key names)."""

logger = logging.getLogger(__name__)


def train_and_evaluate(cfg):
    """Seed with ``cfg.SEED``, train ``cfg`` with SegLossTrainer, evaluate on ``DATASETS.TEST[0]``.

    Returns:
        (model, dict): the trained model (eval mode) and the evaluator's results in percent
        (``mIoU``, ``fwIoU``, ``mACC``, ``pACC``, ``BIoU``, ``BF1``, ``BoundaryIoU``, per class).
    Raises:
        FloatingPointError: the loss diverged (detectron2's NaN check).
    """
    if cfg.SEED < 0:
        raise ValueError(f"cfg.SEED must be >= 0 for a fair comparison, got {cfg.SEED}")
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(cfg.SEED)
    trainer = SegLossTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # its EvalHook evaluates DATASETS.TEST once training ends
    path = os.path.join(cfg.OUTPUT_DIR, "inference", cfg.DATASETS.TEST[0], RESULTS_FILE)
    with open(path) as f:
        results = {k: (math.nan if v is None else v) for k, v in json.load(f).items()}
    trainer.model.eval()
    return trainer.model, results


def comparison_table(rows, metrics=TABLE_METRICS, target=None):
    """A GitHub-markdown table: one row per ``(name, results)``, where ``results`` is one
    evaluator result dict or a list of them (several training seeds: "mean ± std"); the best
    (mean) value per column is marked with ``*``; ``target`` (a metric name) is named in the
    header."""
    rows = [(name, r if isinstance(r, (list, tuple)) else [r]) for name, r in rows]

    def stats(runs, m):
        values = np.array([r[m] for r in runs], dtype=np.float64)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None

    best = {m: max((stats(r, m)[0] for _, r in rows if not math.isnan(stats(r, m)[0])),
                   default=math.nan) for m in metrics}

    def cell(runs, m):
        mean, std = stats(runs, m)
        text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
        return text + ("*" if mean == best[m] else "")

    header = ["loss"] + [f"{m} (target)" if m == target else m for m in metrics]
    body = [[name] + [cell(r, m) for m in metrics] for name, r in rows]
    return tabulate(body, headers=header, tablefmt="github")


@torch.no_grad()
def plot_predictions(models, dataset_name, path, input_format="RGB", num_images=4):
    """Image | ground truth | one column per model, for the first ``num_images`` of a dataset.

    Args:
        models (list[(str, nn.Module)]): detectron2 models in eval mode (``[{"image"}] ->
            [{"sem_seg"}]``), with their column titles.
        input_format (str): the models' ``cfg.INPUT.FORMAT`` ("RGB" or "BGR").
    """
    meta = MetadataCatalog.get(dataset_name)
    colors = np.array(meta.get("stuff_colors", None) or
                      [np.random.RandomState(i).randint(0, 255, 3) for i in
                       range(len(meta.stuff_classes))], dtype=np.uint8)
    void = np.array([128, 128, 128], dtype=np.uint8)  # ignore label: grey

    def paint(label):
        out = np.empty(label.shape + (3,), dtype=np.uint8)
        valid = label < len(colors)
        out[valid] = colors[label[valid]]
        out[~valid] = void
        return out

    records = DatasetCatalog.get(dataset_name)[:num_images]
    cols = 2 + len(models)
    fig = Figure(figsize=(2.6 * cols, 2.1 * len(records)))
    axes = fig.subplots(len(records), cols, squeeze=False)
    for row, rec in zip(axes, records):
        image = read_image(rec["file_name"], format="RGB")
        model_input = image[:, :, ::-1] if input_format == "BGR" else image
        tensor = torch.as_tensor(np.ascontiguousarray(model_input.transpose(2, 0, 1))).float()
        gt = read_image(rec["sem_seg_file_name"]).astype(np.int64)
        if gt.ndim == 3:
            gt = gt[..., 0]
        panels = [("image", image), ("ground truth", paint(gt))]
        for name, model in models:
            out = model([{"image": tensor, "height": gt.shape[0], "width": gt.shape[1]}])
            panels.append((name, paint(out[0]["sem_seg"].argmax(0).cpu().numpy())))
        for ax, (title, img) in zip(row, panels):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
