"""A detectron2 LazyConfig (configs/lazy/) trains and evaluates with a searched surrogate."""
import json
import os

import pytest

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig, instantiate  # noqa: E402

from segloss_d2.surrogate import SurrogateLoss  # noqa: E402

from .._tools import load_tool  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "lazy", "tiny_deeplab_searched.py")



def test_the_loss_is_an_object_of_the_config_and_overridable():
    cfg = LazyConfig.load(CONFIG)
    head = instantiate(cfg.model.sem_seg_head)
    assert isinstance(head.loss_fn, SurrogateLoss) and head.loss_fn.metrics == ["mIoU"]
    cfg = LazyConfig.apply_overrides(
        cfg, ["model.sem_seg_head.loss_fn.params.name_or_path=voc_bf1"])
    assert instantiate(cfg.model.sem_seg_head).loss_fn.metrics == ["BF1"]


def test_lazy_config_trains_then_evaluates(tmp_path):
    tool = load_tool("lazy_train_net")
    out = str(tmp_path)
    args = tool.default_argument_parser().parse_args(
        ["--config-file", CONFIG, "train.max_iter=3", "train.log_period=1",
         f"train.output_dir={out}"])
    tool.main(args)
    weights = os.path.join(out, "model_final.pth")
    assert os.path.isfile(weights)
    with open(os.path.join(out, "metrics.json")) as f:
        losses = [json.loads(line)["total_loss"] for line in f if "total_loss" in line]
    assert losses and all(0 < v < 1 for v in losses)  # 1 - mIoU~, a surrogate, not CE
    args = tool.default_argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", f"train.init_checkpoint={weights}",
         f"train.output_dir={out}"])
    results = tool.main(args)
    assert set(results["sem_seg"]) >= {"mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1"}


def test_unreadable_init_checkpoint_is_one_error_line(tmp_path):
    tool = load_tool("lazy_train_net")
    args = tool.default_argument_parser().parse_args(
        ["--config-file", CONFIG, f"train.init_checkpoint={tmp_path / 'missing.pth'}",
         f"train.output_dir={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        tool.main(args)
    assert str(e.value).startswith("lazy_train_net.py: error: train.init_checkpoint")
