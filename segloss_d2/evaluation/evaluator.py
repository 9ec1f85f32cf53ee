"""SegLossEvaluator: detectron2 adapter around :class:`~segloss_d2.evaluation.metrics.SegMetrics`.

A drop-in companion of detectron2's ``SemSegEvaluator`` (same constructor, ``reset/process/
evaluate`` contract, GT files and metadata) that also reports the boundary metrics of Auto Seg-Loss.
All math lives in SegMetrics; this module only reads files, gathers states and formats results.
"""
import json
import logging
import math
import os
from collections import OrderedDict

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table
from PIL import Image
from tabulate import tabulate

from .metrics import ALL_METRICS, SegMetrics

__all__ = ["SegLossEvaluator", "load_sem_seg_gt", "segloss_metric_options", "build_seg_metrics"]

_PER_CLASS_COLUMNS = ("IoU", "ACC", "BIoU", "BF1", "BoundaryIoU")
RESULTS_FILE = "sem_seg_segloss_evaluation.json"


def segloss_metric_options(cfg, metrics=None) -> dict:
    """The ``TEST.SEGLOSS`` options as keyword arguments of :class:`SegMetrics` and
    :class:`SegLossEvaluator`: ``tolerance``, ``drop_background`` and ``metrics`` (the given
    ones, else ``TEST.SEGLOSS.METRICS``; None = all)."""
    return {"tolerance": cfg.TEST.SEGLOSS.TOLERANCE,
            "drop_background": cfg.TEST.SEGLOSS.DROP_BACKGROUND,
            "metrics": list(metrics or cfg.TEST.SEGLOSS.METRICS) or None}


def build_seg_metrics(cfg, metrics=None) -> SegMetrics:
    """A :class:`SegMetrics` for a config's model: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` and
    ``IGNORE_VALUE`` plus :func:`segloss_metric_options`."""
    head = cfg.MODEL.SEM_SEG_HEAD
    return SegMetrics(head.NUM_CLASSES, ignore_value=head.IGNORE_VALUE,
                      **segloss_metric_options(cfg, metrics))


def load_sem_seg_gt(path: str, dataset_name=None) -> np.ndarray:
    """Read a semantic-segmentation GT file as detectron2's ``SemSegEvaluator`` does: the stored
    pixel values, i.e. the palette indices of a "P" PNG (not its luminance) or the values of an
    "L"/"I" PNG.

    Args:
        path (str): a label image, opened through detectron2's PathManager.
        dataset_name (str or None): named in the error messages.

    Returns:
        ndarray: (H, W) int64 class ids (and the void label).

    Raises:
        OSError: the file cannot be read or decoded (e.g. truncated); the message names the file
            and the dataset, the reader's exception is chained.
        ValueError: the image has more than one channel (e.g. an RGB color-coded label file).
    """
    try:
        with PathManager.open(path, "rb") as f:
            gt = np.array(Image.open(f), dtype=np.int64)
    except (OSError, SyntaxError, EOFError) as e:  # PIL's errors for truncated/corrupt files
        where = f"Dataset '{dataset_name}': " if dataset_name else ""
        raise OSError(
            f"{where}cannot read GT file '{path}' ({type(e).__name__}: {e}); it is probably "
            f"missing, truncated or corrupt: restore it from the dataset's original archive"
        ) from e
    if gt.ndim != 2:
        raise ValueError(
            f"GT file {path} must be a single-channel label image (PNG mode L, P or I), got an "
            f"array of shape {gt.shape}"
        )
    return gt


class SegLossEvaluator(DatasetEvaluator):
    """Evaluates mIoU, fwIoU, mACC, pACC (detectron2's names) plus BIoU, BF1 (Auto Seg-Loss,
    docs/method.md §1.2-1.4) and Boundary IoU, all accumulated over the dataset, in percent.

    mIoU convention (docs/method.md §1.4): a class predicted but absent from the ground truth has
    IoU 0 (``IoU-<class>`` 0) and counts in the mean, as in detectron2 v0.6's ``SemSegEvaluator``,
    cityscapesScripts and MMSegmentation. detectron2's upstream main leaves every class without GT
    pixels out of its mIoU, which is then the mean of our ``IoU-<class>`` over the classes whose
    ``ACC-<class>`` is not NaN. fwIoU, mACC, pACC and the IoU/ACC of classes present in the GT agree
    with both versions; main's extra ``BoundaryIoU-<class>`` keys (boundaries of the label map) are
    not the Boundary IoU reported here (per-class bands, docs/method.md §1.4).

    Results: ``OrderedDict({"sem_seg": {"mIoU": .., "fwIoU": .., "mACC": .., "pACC": .., "BIoU": ..,
    "BF1": .., "BoundaryIoU": .., "IoU-<class>": .., "ACC-<class>": .., "BIoU-<class>": ..,
    "BF1-<class>": .., "BoundaryIoU-<class>": ..}})`` (only the requested metrics). They are
    also written to ``<output_dir>/sem_seg_segloss_evaluation.json`` (NaN as null).
    """

    def __init__(
        self,
        dataset_name,
        distributed=True,
        output_dir=None,
        *,
        num_classes=None,
        ignore_label=None,
        metrics=None,
        tolerance=5,
        drop_background=False,
    ):
        """
        Args:
            dataset_name (str): a registered dataset whose dicts have "file_name" and
                "sem_seg_file_name" (a label PNG), and whose metadata has ``stuff_classes``.
            distributed (bool): gather the statistics of all ranks and report on the main one.
            output_dir (str or None): where to write the JSON results.
            num_classes (int or None): must equal ``len(stuff_classes)`` if both are known; needed
                when the metadata has no ``stuff_classes``.
            ignore_label (int or None): void label of the GT files; default: the metadata's
                ``ignore_label``, else 255.
            metrics (iterable[str] or None): subset of ``mIoU, fwIoU, mACC, pACC, BIoU, BF1,
                BoundaryIoU``; None for all.
            tolerance (int): BIoU trimap / BF1 matching radius in pixels (reference: 5).
            drop_background (bool): class 0 is background (PASCAL VOC semantics, see SegMetrics).
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._input_file_to_gt_file = {
            record["file_name"]: record["sem_seg_file_name"]
            for record in DatasetCatalog.get(dataset_name)
        }
        meta = MetadataCatalog.get(dataset_name)
        class_names = meta.get("stuff_classes", None)
        if class_names is None:
            if num_classes is None:
                raise ValueError(
                    f"dataset {dataset_name!r} has no metadata 'stuff_classes'; pass num_classes"
                )
            class_names = [str(i) for i in range(num_classes)]
        elif num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} but dataset {dataset_name!r} has "
                f"{len(class_names)} stuff_classes"
            )
        if ignore_label is None:
            ignore_label = meta.get("ignore_label", 255)
        self._metrics_args = dict(
            num_classes=len(class_names),
            ignore_value=ignore_label,
            tolerance=tolerance,
            drop_background=drop_background,
            metrics=metrics,
            class_names=list(class_names),
        )
        self.reset()

    def reset(self):
        self._metrics = SegMetrics(**self._metrics_args)

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): model inputs; each has "file_name" (a key of the dataset).
            outputs (list[dict]): model outputs; each has "sem_seg", a (C, H, W) tensor of scores
                at the GT resolution.
        """
        for input, output in zip(inputs, outputs):
            pred = output["sem_seg"].argmax(dim=0).cpu()
            gt_file = self._input_file_to_gt_file[input["file_name"]]
            gt = load_sem_seg_gt(gt_file, self._dataset_name)
            try:
                self._metrics.update(pred, gt)
            except ValueError as e:
                raise ValueError(f"{e} (prediction for {input['file_name']}, GT {gt_file})") from e

    def evaluate(self):
        """Gathers the statistics (distributed) and computes the metrics on the main process.

        Returns:
            OrderedDict: ``{"sem_seg": {metric: value in percent}}`` on the main process, None on
            the others, ``{}`` if no image was processed.
        """
        metrics = self._metrics
        if self._distributed:
            comm.synchronize()
            states = comm.gather(metrics.state_dict(), dst=0)
            if not comm.is_main_process():
                return None
            metrics = SegMetrics(**self._metrics_args)
            for state in states:
                metrics.merge(state)
        if metrics.num_images == 0:
            self._logger.warning("[SegLossEvaluator] did not receive any prediction.")
            return {}
        res = metrics.compute()
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, RESULTS_FILE)
            with PathManager.open(path, "w") as f:
                json.dump({k: None if math.isnan(v) else v for k, v in res.items()}, f, indent=1)
        self._log_tables(res, metrics)
        return OrderedDict({"sem_seg": res})

    def _log_tables(self, res, metrics):
        summary = {k: res[k] for k in ALL_METRICS if k in res}
        self._logger.info(
            f"Evaluation results of {self._dataset_name} ({metrics.num_images} images), "
            f"in percent:\n" + create_small_table(summary)
        )
        columns = [c for c in _PER_CLASS_COLUMNS if f"{c}-{metrics.class_names[-1]}" in res]
        rows = [
            [name] + [res.get(f"{c}-{name}", "-") for c in columns] for name in metrics.class_names
        ]
        table = tabulate(
            rows, headers=["class"] + columns, tablefmt="pipe", floatfmt=".2f", numalign="left"
        )
        self._logger.info("Per-class results:\n" + table)
