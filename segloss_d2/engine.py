"""detectron2 training adapter: config set-up and ``SegLossTrainer`` (tools/, search, demo).

Importing this module registers segloss_d2's heads, backbone and datasets.
"""
import os

from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.engine import DefaultTrainer
from detectron2.projects.deeplab import add_deeplab_config, build_lr_scheduler

from . import data as _data  # noqa: F401  (registers datasets)
from . import modeling as _modeling  # noqa: F401  (registers heads and backbone)
from .config import add_search_config, add_segloss_config
from .data.catalog import check_datasets
from .data.mapper import SemSegDatasetMapper

__all__ = ["get_segloss_cfg", "build_sem_seg_train_aug", "build_segloss_evaluator",
           "SegLossTrainer"]


def get_segloss_cfg():
    """detectron2's default config + DeepLab keys + segloss_d2's loss, eval and search keys."""
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_segloss_config(cfg)
    add_search_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "cross_entropy"  # not DeepLab's hard_pixel_mining default
    return cfg


def build_sem_seg_train_aug(cfg):
    """The sem-seg training augmentations of detectron2's DeepLab project: resize by the shortest
    edge, category-area-constrained random crop (if ``INPUT.CROP.ENABLED``), horizontal flip."""
    augs = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    augs.append(T.RandomFlip())
    return augs


def build_segloss_evaluator(cfg, dataset_name, output_folder=None):
    """SegLossEvaluator for ``dataset_name`` with the ``TEST.SEGLOSS`` options."""
    from .evaluation.evaluator import SegLossEvaluator, segloss_metric_options

    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return SegLossEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                            **segloss_metric_options(cfg))


class SegLossTrainer(DefaultTrainer):
    """DefaultTrainer with the sem-seg mapper, the DeepLab poly LR schedule and SegLossEvaluator.

    Both loaders map with :class:`~segloss_d2.data.mapper.SemSegDatasetMapper`, which names the
    dataset and file of an unreadable image or label and of out-of-range label values. Each
    loader first runs the pre-flight :func:`~segloss_d2.data.check_datasets` on its datasets
    (unregistered names, missing files), before anything is loaded.
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_segloss_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        check_datasets(cfg.DATASETS.TRAIN, key="DATASETS.TRAIN")  # pre-flight: clear errors
        mapper = SemSegDatasetMapper(cfg, is_train=True,
                                     augmentations=build_sem_seg_train_aug(cfg))
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_datasets([dataset_name], key="DATASETS.TEST")
        mapper = SemSegDatasetMapper(cfg, is_train=False, dataset_names=(dataset_name,))
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)
