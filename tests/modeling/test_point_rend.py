"""PointRendSemSegLossHead: PointRend's semantic segmentation with a segloss coarse head trains with
every LOSS_TYPE on CPU and evaluates; the point head keeps cross-entropy."""
import copy
import math

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, DatasetMapper  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from segloss_d2 import SegLossEvaluator  # noqa: E402
from segloss_d2.config import LOSS_TYPES  # noqa: E402
from segloss_d2.engine import get_segloss_cfg  # noqa: E402
from segloss_d2.modeling import SemSegFPNSegLossHead  # noqa: E402
from segloss_d2.modeling.point_rend import (  # noqa: E402
    PointRendSemSegLossHead,
    add_pointrend_config,
)
from segloss_d2.surrogate.loss import SurrogateLoss  # noqa: E402

from .test_heads import SpyLoss  # noqa: E402

TINY = "configs/shapes/Base-Tiny-PointRend.yaml"


def pointrend_cfg(*opts):
    cfg = get_segloss_cfg()
    add_pointrend_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(list(opts))
    return cfg


def loss_opts(loss_type):
    opts = ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type]
    if loss_type == "searched":
        opts += ["MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", "voc_miou"]
    return opts


def _mapped(cfg, split, n):
    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(dict(d)) for d in DatasetCatalog.get(f"segloss_shapes_{split}")[:n]]


@pytest.fixture(scope="module")
def shapes_batch():
    return _mapped(pointrend_cfg(), "train", 4)


def _train(model, batch, iters):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(iters):
        losses = model(batch)
        assert set(losses) == {"loss_sem_seg", "loss_sem_seg_point"}
        assert all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_trains(shapes_batch, loss_type):
    torch.manual_seed(0)
    model = build_model(pointrend_cfg(*loss_opts(loss_type)))
    head = model.sem_seg_head
    assert isinstance(head, PointRendSemSegLossHead)
    assert isinstance(head.coarse_sem_seg_head, SemSegFPNSegLossHead)
    assert (type(head.loss_fn).__name__ == "SurrogateLoss") == (loss_type in ("naive", "searched"))
    history = _train(model, shapes_batch, 2)
    assert len(history) == 2


def test_searched_trains_and_evaluates(shapes_batch):
    torch.manual_seed(0)
    cfg = pointrend_cfg(*loss_opts("searched"))
    model = build_model(cfg)
    history = _train(model, shapes_batch, 10)
    coarse = [h["loss_sem_seg"] for h in history]
    assert sum(coarse[-3:]) / 3 < sum(coarse[:3]) / 3, coarse
    # the coarse loss is 1 - mIoU~ (in [0, 1]); the point loss stays a cross-entropy
    assert all(0.0 <= c <= 1.0 for c in coarse)

    model.eval()
    val = _mapped(cfg, "val", 4)
    evaluator = SegLossEvaluator("segloss_shapes_val", distributed=False, tolerance=2)
    evaluator.reset()
    with torch.no_grad():
        outputs = model(val)
    assert outputs[0]["sem_seg"].shape == (7, val[0]["height"], val[0]["width"])
    evaluator.process(val, outputs)
    res = evaluator.evaluate()["sem_seg"]
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1"):
        assert 0.0 <= res[key] <= 100.0 and not math.isnan(res[key]), (key, res[key])


def test_loss_fn_reaches_the_coarse_head(shapes_batch):
    """The search sets ``sem_seg_head.loss_fn`` per candidate: it must train the coarse head,
    while the point head keeps its cross-entropy."""
    model = build_model(pointrend_cfg(*loss_opts("naive")))
    head = model.sem_seg_head
    spy = SpyLoss()
    head.loss_fn = spy
    assert head.loss_fn is spy and head.coarse_sem_seg_head.loss_fn is spy
    assert "loss_fn" not in head._modules  # not a second, unused copy
    model.train()
    losses = model(shapes_batch[:2])
    h, w = shapes_batch[0]["sem_seg"].shape
    assert spy.calls == [((2, 7, h, w), (2, h, w))]
    assert losses["loss_sem_seg_point"].item() > 0.5  # CE of an untrained 7-class point head
    clone = copy.deepcopy(model)  # the search copies one template per candidate
    clone.sem_seg_head.loss_fn = SpyLoss()
    assert model.sem_seg_head.loss_fn is spy and clone.sem_seg_head.loss_fn is not spy
    explicit = PointRendSemSegLossHead(pointrend_cfg(), model.backbone.output_shape(),
                                       loss_fn=spy)
    assert explicit.loss_fn is spy


def test_a_stock_coarse_head_is_refused():
    cfg = pointrend_cfg("MODEL.POINT_HEAD.COARSE_SEM_SEG_HEAD_NAME", "SemSegFPNHead")
    with pytest.raises(ValueError, match="COARSE_SEM_SEG_HEAD_NAME 'SemSegFPNHead' trains with its "
                                         "own loss.*SemSegFPNSegLossHead"):
        build_model(cfg)


def test_stock_pointrend_head_with_a_segloss_coarse_head(shapes_batch):
    """Without PointRendSemSegLossHead: detectron2's PointRendSemSegHead over SemSegFPNSegLossHead
    already trains the coarse prediction with LOSS_TYPE (the search needs the segloss wrapper)."""
    model = build_model(pointrend_cfg(*loss_opts("searched"),
                                      "MODEL.SEM_SEG_HEAD.NAME", "PointRendSemSegHead"))
    assert type(model.sem_seg_head).__name__ == "PointRendSemSegHead"
    assert isinstance(model.sem_seg_head.coarse_sem_seg_head.loss_fn, SurrogateLoss)
    assert len(_train(model, shapes_batch[:2], 1)) == 1
