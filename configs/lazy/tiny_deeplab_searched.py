"""LazyConfig (detectron2 Python config): the tiny DeepLabV3+ on segloss_shapes, trained with a
searched Auto Seg-Loss surrogate. The same model as configs/shapes/tiny_deeplab_searched_miou.yaml,
written as objects instead of config keys:

    .venv/bin/python tools/lazy_train_net.py --config-file configs/lazy/tiny_deeplab_searched.py
    .venv/bin/python tools/lazy_train_net.py --config-file configs/lazy/tiny_deeplab_searched.py \\
        train.max_iter=100 "model.sem_seg_head.loss_fn.params.name_or_path=voc_bf1"

The loss is an ordinary object: ``model.sem_seg_head.loss_fn`` is a ``SurrogateLoss`` of the
parameters ``load_params`` reads (a preset name or a search's ``best_params.json``); any loss of
segloss_d2 (or your own nn.Module ``loss(logits, labels)``) can take its place.
"""
import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling import SemanticSegmentor
from detectron2.solver import WarmupParamScheduler, get_default_optimizer_params
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from omegaconf import OmegaConf

from segloss_d2.data import SemSegDatasetMapper
from segloss_d2.evaluation.evaluator import SegLossEvaluator
from segloss_d2.modeling import DeepLabV3PlusSegLossHead, TinySegBackbone
from segloss_d2.surrogate import SurrogateLoss, load_params

NUM_CLASSES, IGNORE, TOLERANCE = 7, 255, 2  # segloss_shapes; boundaries scored at 2 px (96x128)

model = L(SemanticSegmentor)(
    backbone=L(TinySegBackbone)(in_channels=3, channels=[16, 32, 64, 96], norm="BN",
                                out_features=("res2", "res5")),
    sem_seg_head=L(DeepLabV3PlusSegLossHead)(
        input_shape={"res2": L(ShapeSpec)(channels=16, stride=4),
                     "res5": L(ShapeSpec)(channels=96, stride=16)},
        project_channels=[16],
        aspp_dilations=[2, 4, 6],
        aspp_dropout=0.0,
        decoder_channels=[48, 48],
        common_stride=4,
        norm="BN",
        train_size=None,
        ignore_value=IGNORE,
        num_classes=NUM_CLASSES,
        loss_fn=L(SurrogateLoss)(
            params=L(load_params)(name_or_path="voc_miou"),
            num_classes=NUM_CLASSES,
            ignore_value=IGNORE,
            tolerance=TOLERANCE,
        ),
    ),
    pixel_mean=[128.0, 128.0, 128.0],
    pixel_std=[64.0, 64.0, 64.0],
)

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="segloss_shapes_train"),
    mapper=L(SemSegDatasetMapper)(
        is_train=True,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=96, max_size=1000),
                       L(T.RandomFlip)()],
        image_format="RGB",
        num_classes=NUM_CLASSES,
        ignore_label=IGNORE,
        dataset_names=["segloss_shapes_train"],
    ),
    total_batch_size=8,
    num_workers=0,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="segloss_shapes_val", filter_empty=False),
    mapper=L(SemSegDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=96, max_size=1000)],
        image_format="RGB",
        dataset_names=["segloss_shapes_val"],
    ),
    num_workers=0,
)
dataloader.evaluator = L(SegLossEvaluator)(dataset_name="segloss_shapes_val", tolerance=TOLERANCE)

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # .model set by the script
    lr=0.05,
    momentum=0.9,
    weight_decay=1e-4,
)
lr_multiplier = L(WarmupParamScheduler)(  # DeepLab's poly schedule, no warm-up
    scheduler=L(PolynomialDecayParamScheduler)(base_value=1.0, power=0.9),
    warmup_length=0.0,
    warmup_factor=1.0,
)

train = dict(
    output_dir="./output/lazy_tiny_searched",
    init_checkpoint="",  # like MODEL.WEIGHTS: "" = random initialization
    max_iter=300,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=1000000, max_to_keep=1),
    eval_period=0,
    log_period=20,
    device="cpu",
    seed=1,
)
