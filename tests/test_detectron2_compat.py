"""The installed detectron2 (v0.6 from the installer, or upstream main) runs what segloss_d2 uses.

Public APIs only: imports, a SemanticSegmentor with DeepLabV3PlusHead and with SemSegFPNHead on
CPU, one training step and one inference each, and the compiled-ops placeholder's error.
"""
import importlib

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.projects.deeplab import add_deeplab_config  # noqa: E402


@pytest.mark.parametrize(
    "module",
    ["detectron2.config", "detectron2.data", "detectron2.modeling", "detectron2.engine",
     "detectron2.evaluation", "detectron2.projects.deeplab", "detectron2.data.transforms",
     "detectron2.projects.point_rend"],
)
def test_imports(module):
    importlib.import_module(module)


def _narrow_resnet(cfg):
    # A full-depth but very narrow ResNet-50: real detectron2 code paths, CPU-cheap.
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PIXEL_MEAN = [128.0, 128.0, 128.0]
    cfg.MODEL.PIXEL_STD = [64.0, 64.0, 64.0]


def _deeplab_cfg():
    cfg = get_cfg()
    add_deeplab_config(cfg)
    _narrow_resnet(cfg)
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_deeplab_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res5"]
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    cfg.MODEL.SEM_SEG_HEAD.NAME = "DeepLabV3PlusHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_FEATURES = ["res2"]
    cfg.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS = [8]
    cfg.MODEL.SEM_SEG_HEAD.ASPP_CHANNELS = 16
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "cross_entropy"
    return cfg


def _fpn_cfg():
    cfg = get_cfg()
    _narrow_resnet(cfg)
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32  # GroupNorm(32, C) needs C % 32 == 0
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    return cfg


def _batch(n=2, size=64, num_classes=5):
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randint(0, 256, (3, size, size), generator=g).float(),
            "sem_seg": torch.randint(0, num_classes, (size, size), generator=g),
            "height": size,
            "width": size,
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    "make_cfg", [_deeplab_cfg, _fpn_cfg], ids=["DeepLabV3PlusHead", "SemSegFPNHead"]
)
def test_semantic_segmentor_train_step_and_inference(make_cfg):
    cfg = make_cfg()
    model = build_model(cfg)
    assert next(model.parameters()).device.type == "cpu"
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    losses = model(_batch())
    assert set(losses) == {"loss_sem_seg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model([{"image": b["image"], "height": 48, "width": 40} for b in _batch()])
    assert len(out) == 2 and out[0]["sem_seg"].shape == (5, 48, 40)


def test_compiled_ops_placeholder_or_real_ops():
    """v0.6 from PyPI: a placeholder whose every op names the need for a source build.
    A source build (upstream main): the real extension module."""
    from detectron2 import _C

    if getattr(_C, "__file__", "").endswith(".py"):
        msg = "installed without compiled ops; nms_rotated needs a source build"
        with pytest.raises(AttributeError, match=msg):
            _C.nms_rotated()
        assert not hasattr(_C, "deform_conv_forward")
        assert not _C.has_cuda() and "without compiled ops" in _C.get_compiler_version()
    else:
        assert callable(_C.get_compiler_version)
