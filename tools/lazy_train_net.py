#!/usr/bin/env python
"""Train or evaluate a detectron2 LazyConfig (Python config) with segloss_d2's losses.

    tools/lazy_train_net.py --config-file configs/lazy/tiny_deeplab_searched.py
    tools/lazy_train_net.py --config-file configs/lazy/tiny_deeplab_searched.py train.max_iter=100
    tools/lazy_train_net.py --config-file ... --eval-only \
        train.init_checkpoint=output/.../model_final.pth

The config defines ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer`` (its
``params.model`` is set here), ``lr_multiplier`` and ``train`` (output_dir, init_checkpoint,
max_iter, amp, ddp, checkpointer, eval_period, log_period, device), as detectron2's own
LazyConfigs do; overrides are ``key=value``. Multi-GPU: detectron2's --num-gpus / --num-machines.
An unreadable ``train.init_checkpoint`` stops before training with one error line.
"""
import logging
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

import segloss_d2.data  # noqa: F401  (registers segloss_shapes and VOC)
from segloss_d2.checkpoint import WeightsUnavailableError, check_model_weights

logger = logging.getLogger("segloss_d2")


def do_test(cfg, model):
    """Evaluate ``model`` with ``dataloader.test`` and ``dataloader.evaluator``; their results."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test),
                                   instantiate(cfg.dataloader.evaluator))
    print_csv_format(results)
    return results


def do_train(args, cfg):
    """Train with detectron2's SimpleTrainer/AMPTrainer and the usual hooks."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader,
                                                                       optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if comm.is_main_process() else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)  # EvalHook evaluates once more at the end
    if comm.is_main_process():
        checkpointer.save("model_final")


def main(args):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    try:
        if not args.resume:
            check_model_weights(cfg.train.init_checkpoint, key="train.init_checkpoint")
    except WeightsUnavailableError as e:
        sys.exit(f"lazy_train_net.py: error: {e}")
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
