#!/usr/bin/env python
"""detectron2's PointRend project (``detectron2.projects.point_rend``), semantic segmentation,
unmodified, trained with a searched Auto Seg-Loss surrogate. Everything segloss-specific is the
three marked lines plus two config keys.

    python projects/PointRend-SegLoss/train_net.py --config-file <your PointRend semantic config> \
        MODEL.SEM_SEG_HEAD.NAME PointRendSemSegLossHead \
        MODEL.POINT_HEAD.COARSE_SEM_SEG_HEAD_NAME SemSegFPNSegLossHead \
        MODEL.SEM_SEG_HEAD.LOSS_TYPE searched MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS voc_miou
"""
import os

import detectron2.data.transforms as T
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import CityscapesSemSegEvaluator, SemSegEvaluator
from detectron2.projects.point_rend import ColorAugSSDTransform, add_pointrend_config

import segloss_d2.modeling  # noqa: F401  [segloss 1/3] registers PointRendSemSegLossHead etc.
from segloss_d2 import add_segloss_config  # [segloss 2/3]


def build_sem_seg_train_aug(cfg):
    augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                 cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augs.append(T.RandomFlip())
    return augs


class Trainer(DefaultTrainer):
    """PointRend's semantic segmentation trainer (detectron2/projects/PointRend/train_net.py)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluator_type = MetadataCatalog.get(dataset_name).evaluator_type
        if evaluator_type == "sem_seg":
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        if evaluator_type == "cityscapes_sem_seg":
            return CityscapesSemSegEvaluator(dataset_name)
        raise NotImplementedError(f"no evaluator for {dataset_name} (type {evaluator_type})")

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = DatasetMapper(cfg, is_train=True, augmentations=build_sem_seg_train_aug(cfg))
        return build_detection_train_loader(cfg, mapper=mapper)


def setup(args):
    cfg = get_cfg()
    add_pointrend_config(cfg)
    add_segloss_config(cfg)  # [segloss 3/3] LOSS_TYPE, SURROGATE.* keys
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
