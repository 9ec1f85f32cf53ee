"""Every shipped config loads and builds its loss; VOC models evaluate on VOC-sized images."""
import glob
import os

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.modeling import build_model  # noqa: E402

from segloss_d2.engine import get_segloss_cfg  # noqa: E402
from segloss_d2.modeling import build_sem_seg_loss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"),
                                                recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def load(path, *opts):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_builds_its_loss(path):
    cfg = load(path)
    loss = build_sem_seg_loss(cfg)
    assert loss.num_classes == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES


NARROW = [  # the real architecture of a config, CPU-cheap widths, no pretrained weights
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 50,
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.RESNETS.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", 16,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", [8],
]


@pytest.mark.parametrize("path", ["configs/voc/deeplabv3plus_R101_ce.yaml", "configs/voc_bf1.yaml"])
def test_voc_models_evaluate_any_image_size(path):
    """Regression: with cropping on, detectron2's ASPP pools with a crop-sized kernel and rejects
    test images whose features are not multiples of it (a 375x500 VOC image)."""
    model = build_model(load(path, *NARROW)).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 375, 500) * 255, "height": 375, "width": 500}])
    assert out[0]["sem_seg"].shape == (21, 375, 500)
