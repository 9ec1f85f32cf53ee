#!/usr/bin/env python
"""Train or evaluate a semantic-segmentation model with segloss_d2's losses and evaluator.

    tools/train_net.py --config-file configs/shapes/tiny_deeplab_ce.yaml MODEL.DEVICE cpu
    tools/train_net.py --config-file ... MODEL.SEM_SEG_HEAD.LOSS_TYPE searched \
        MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS voc_miou
    tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth

Multi-GPU / multi-machine: detectron2's usual --num-gpus / --num-machines / --dist-url.
``MODEL.WEIGHTS`` that cannot be read (a missing file, or a download while offline), a dataset of
``DATASETS.TRAIN`` / ``DATASETS.TEST`` that is not registered or whose files are missing (the
pre-flight ``segloss_d2.data.check_config_datasets``; ``--eval-only`` checks ``DATASETS.TEST``
only) stop the run before anything is built, with one ``train_net.py: error:`` paragraph and exit
status 1, before ``config.yaml`` or ``log.txt`` is written.
"""
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch

from segloss_d2.checkpoint import WeightsUnavailableError, check_weights_to_load
from segloss_d2.data import check_config_datasets
from segloss_d2.engine import SegLossTrainer, get_segloss_cfg


def setup(args):
    """The frozen config, checked (weights, datasets) before ``default_setup`` writes
    ``config.yaml`` and ``log.txt``: a refused run leaves ``OUTPUT_DIR`` as it was."""
    cfg = get_segloss_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    try:
        check_weights_to_load(cfg, resume=args.resume)
    except WeightsUnavailableError as e:
        sys.exit(f"train_net.py: error: {e}")
    keys = ("DATASETS.TEST",) if args.eval_only else ("DATASETS.TRAIN", "DATASETS.TEST")
    try:
        check_config_datasets(cfg, keys)
    except (ValueError, FileNotFoundError) as e:  # unregistered, empty id list / missing files
        sys.exit(f"train_net.py: error: {e}")
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = SegLossTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return SegLossTrainer.test(cfg, model)
    trainer = SegLossTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
