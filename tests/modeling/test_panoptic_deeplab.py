"""PanopticDeepLabSemSegLossHead: Panoptic-DeepLab trains with every LOSS_TYPE on CPU and evaluates;
what its per-pixel weights do for each loss (weighted_sem_seg_loss)."""
import math
import sys
import uuid

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.projects.deeplab.loss import DeepLabCE  # noqa: E402

from segloss_d2 import SegLossEvaluator  # noqa: E402
from segloss_d2.config import LOSS_TYPES  # noqa: E402
from segloss_d2.engine import get_segloss_cfg  # noqa: E402
from segloss_d2.losses import LOSSES  # noqa: E402
from segloss_d2.modeling import build_sem_seg_loss  # noqa: E402
from segloss_d2.modeling.panoptic_deeplab import (  # noqa: E402
    PanopticDeepLabSemSegLossHead,
    import_panoptic_deeplab,
    weighted_sem_seg_loss,
)
from segloss_d2.surrogate.loss import SurrogateLoss  # noqa: E402
from segloss_d2.surrogate.params import load_params  # noqa: E402

from .test_heads import SpyLoss  # noqa: E402

TINY = "configs/shapes/Base-Tiny-PanopticDeepLab.yaml"
pdl = import_panoptic_deeplab()
THINGS = range(1, 7)  # segloss_shapes: 0 background (stuff), 1-6 shapes (things)


@pytest.fixture(scope="module")
def meta_name():
    """Panoptic-DeepLab's inference reads thing ids and label_divisor from DATASETS.TRAIN[0]."""
    name = f"segloss_shapes_panoptic_{uuid.uuid4().hex}"
    MetadataCatalog.get(name).set(
        thing_dataset_id_to_contiguous_id={i: i for i in THINGS}, label_divisor=1000,
        stuff_classes=MetadataCatalog.get("segloss_shapes_train").stuff_classes)
    yield name
    MetadataCatalog.remove(name)


def panoptic_cfg(meta_name, *opts):
    cfg = get_segloss_cfg()
    pdl.add_panoptic_deeplab_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(["DATASETS.TRAIN", f"('{meta_name}',)", *opts])
    return cfg


def loss_opts(loss_type):
    opts = ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type]
    if loss_type == "searched":
        opts += ["MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", "voc_miou"]
    return opts


def with_panoptic_targets(cfg, inputs):
    """Panoptic-DeepLab's targets for segloss_shapes: each connected component of a shape class is
    a thing instance, the background one stuff segment, void stays void."""
    gen = pdl.target_generator.PanopticDeepLabTargetGenerator(
        ignore_label=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE, thing_ids=THINGS,
        sigma=cfg.INPUT.GAUSSIAN_SIGMA, ignore_stuff_in_offset=cfg.INPUT.IGNORE_STUFF_IN_OFFSET,
        small_instance_area=cfg.INPUT.SMALL_INSTANCE_AREA,
        small_instance_weight=cfg.INPUT.SMALL_INSTANCE_WEIGHT)
    out = []
    for x in inputs:
        sem = x["sem_seg"].numpy()
        pan = np.zeros(sem.shape, dtype=np.int64)
        segments = [{"id": 1, "category_id": 0, "iscrowd": 0}]
        pan[sem == 0] = 1
        for c in THINGS:
            n, comp = cv2.connectedComponents((sem == c).astype(np.uint8), connectivity=8)
            for k in range(1, n):
                pan[comp == k] = c * 1000 + k
                segments.append({"id": c * 1000 + k, "category_id": c, "iscrowd": 0})
        targets = gen(pan, segments)
        assert torch.equal(targets["sem_seg"], x["sem_seg"])
        out.append({**x, **{k: v for k, v in targets.items() if k != "center_points"}})
    return out


def _mapped(cfg, split, n):
    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(dict(d)) for d in DatasetCatalog.get(f"segloss_shapes_{split}")[:n]]


@pytest.fixture(scope="module")
def shapes_batch(meta_name):
    cfg = panoptic_cfg(meta_name)
    return with_panoptic_targets(cfg, _mapped(cfg, "train", 4))


def _train(model, batch, iters):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # the config's SOLVER
    history = []
    for _ in range(iters):
        losses = model(batch)
        assert {"loss_sem_seg", "loss_center", "loss_offset"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    return history


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_trains(meta_name, shapes_batch, loss_type):
    torch.manual_seed(0)
    model = build_model(panoptic_cfg(meta_name, *loss_opts(loss_type)))
    assert isinstance(model.sem_seg_head, PanopticDeepLabSemSegLossHead)
    assert isinstance(model.sem_seg_head.loss_fn, SurrogateLoss) == (
        loss_type in ("naive", "searched"))
    assert len(_train(model, shapes_batch, 2)) == 2


def test_searched_trains_and_evaluates(meta_name, shapes_batch):
    torch.manual_seed(0)
    cfg = panoptic_cfg(meta_name, *loss_opts("searched"))
    model = build_model(cfg)
    history = _train(model, shapes_batch, 10)
    sem = [h["loss_sem_seg"] for h in history]
    assert sum(sem[-3:]) / 3 < sum(sem[:3]) / 3, sem

    model.eval()
    val = _mapped(cfg, "val", 4)
    with torch.no_grad():
        outputs = model(val)
    assert outputs[0]["sem_seg"].shape == (7, val[0]["height"], val[0]["width"])
    assert "panoptic_seg" in outputs[0]
    evaluator = SegLossEvaluator("segloss_shapes_val", distributed=False, tolerance=2)
    evaluator.reset()
    evaluator.process(val, outputs)
    res = evaluator.evaluate()["sem_seg"]
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1"):
        assert 0.0 <= res[key] <= 100.0 and not math.isnan(res[key]), (key, res[key])


def test_small_instance_weights(meta_name):
    """Panoptic-DeepLab's default SMALL_INSTANCE_WEIGHT 3: hard_pixel_mining weights the pixels'
    CE as detectron2 does; a surrogate refuses with a message naming the key."""
    cfg = panoptic_cfg(meta_name, "INPUT.SMALL_INSTANCE_WEIGHT", "3")
    batch = with_panoptic_targets(cfg, _mapped(cfg, "train", 4))
    weights = torch.stack([x["sem_seg_weights"] for x in batch])
    assert set(weights.unique().tolist()) == {1.0, 3.0}  # the batch has small instances
    model = build_model(panoptic_cfg(meta_name, "INPUT.SMALL_INSTANCE_WEIGHT", "3",
                                     *loss_opts("hard_pixel_mining")))
    assert len(_train(model, batch, 1)) == 1
    model = build_model(panoptic_cfg(meta_name, "INPUT.SMALL_INSTANCE_WEIGHT", "3",
                                     *loss_opts("searched")))
    model.train()
    with pytest.raises(ValueError, match="weights from 1 to 3 cannot weight SurrogateLoss.*"
                                         "INPUT.SMALL_INSTANCE_WEIGHT 1"):
        model(batch)


def test_loss_fn_attribute_trains(meta_name, shapes_batch):
    """The search sets ``sem_seg_head.loss_fn`` per candidate; weights reach it as defined."""
    model = build_model(panoptic_cfg(meta_name))
    spy = SpyLoss()
    model.sem_seg_head.loss_fn = spy
    model.train()
    model(shapes_batch[:2])
    h, w = shapes_batch[0]["sem_seg"].shape
    assert spy.calls == [((2, 7, h, w), (2, h, w))]


def test_top_k_keys_must_agree(meta_name):
    cfg = panoptic_cfg(meta_name, *loss_opts("hard_pixel_mining"),
                       "MODEL.SEM_SEG_HEAD.LOSS_TOP_K", "0.3")
    with pytest.raises(ValueError, match="LOSS_TOP_K 0.3 .* HARD_PIXEL_TOP_K 0.2"):
        build_model(cfg)


def test_project_imports_with_or_without_panopticapi():
    """The project's __init__ imports panopticapi (for its dataset mapper only): without it the
    project still imports, the mapper's rgb2id names what is missing, no stand-in is left."""
    assert pdl.PanopticDeepLab is not None and pdl.add_panoptic_deeplab_config is not None
    try:
        import panopticapi  # noqa: F401
    except ModuleNotFoundError:
        assert "panopticapi" not in sys.modules and "panopticapi.utils" not in sys.modules
        with pytest.raises(ModuleNotFoundError, match="install panopticapi"):
            pdl.dataset_mapper.rgb2id(np.zeros((2, 2, 3), dtype=np.uint8))
    else:
        assert pdl.dataset_mapper.rgb2id(np.ones((1, 1, 3), dtype=np.uint8))[0, 0] == 65793


# ---- weighted_sem_seg_loss on random tensors ----

def _inputs(seed=0, n=2, c=5, h=12, w=16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[:, :2] = 255
    weights = torch.where(torch.rand(n, h, w, generator=g) < 0.3, 3.0, 1.0).double()
    weights[:, -2:] = 0.0  # padding
    return logits, labels, weights


@pytest.mark.parametrize("top_k", [0.2, 1.0])
def test_hard_pixel_mining_equals_deeplab_ce(top_k):
    logits, labels, weights = _inputs()
    ours = weighted_sem_seg_loss(LOSSES["hard_pixel_mining"](5, top_k_percent_pixels=top_k),
                                 logits, labels, weights, 255)
    theirs = DeepLabCE(ignore_label=255, top_k_percent_pixels=top_k)(logits, labels, weights)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)


def test_cross_entropy_weights_each_pixel():
    logits, labels, weights = _inputs()
    loss = LOSSES["cross_entropy"](5, loss_weight=2.0)
    valid = labels != 255
    pixel = torch.nn.functional.cross_entropy(logits, torch.where(valid, labels, 0),
                                              reduction="none")
    expected = 2.0 * (pixel * weights)[valid].sum() / valid.sum()
    got = weighted_sem_seg_loss(loss, logits, labels, weights, 255)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    ones = torch.ones_like(weights)
    assert weighted_sem_seg_loss(loss, logits, labels, ones, 255).item() == pytest.approx(
        loss(logits, labels).item(), rel=1e-12)
    assert weighted_sem_seg_loss(loss, logits, labels, None, 255) == loss(logits, labels)


@pytest.mark.parametrize("name", ["surrogate", "wce", "dice", "lovasz"])
def test_region_losses_ignore_zero_weights_and_refuse_several(name):
    logits, labels, weights = _inputs()
    if name == "surrogate":
        loss = SurrogateLoss(load_params("voc_miou"), 5)
    else:
        loss = LOSSES[name](5)
    binary = (weights > 0).double() * 2.5  # 0 and one common weight
    ignored = torch.where(weights > 0, labels, 255)
    assert weighted_sem_seg_loss(loss, logits, labels, binary, 255).item() == pytest.approx(
        loss(logits, ignored).item(), rel=1e-12)
    assert (binary == 0).any() and not torch.equal(ignored, labels)
    with pytest.raises(ValueError, match=f"weights from 1 to 3 cannot weight "
                                         f"{type(loss).__name__}"):
        weighted_sem_seg_loss(loss, logits, labels, weights, 255)
    # weights differing only on void pixels do not matter
    on_void = torch.where(labels == 255, weights, torch.ones_like(weights))
    on_void[labels == 255] = 7.0
    assert weighted_sem_seg_loss(loss, logits, labels, on_void, 255).item() == pytest.approx(
        loss(logits, labels).item(), rel=1e-12)


@pytest.mark.parametrize("bad, match", [
    (lambda w: w[:, :-1], "weights shape"),
    (lambda w: -w, "finite and >= 0"),
    (lambda w: w.long(), "floating point"),
])
def test_bad_weights_are_refused(bad, match):
    logits, labels, weights = _inputs()
    for loss in (LOSSES["cross_entropy"](5), SurrogateLoss(load_params("voc_miou"), 5)):
        with pytest.raises((ValueError, TypeError), match=match):
            weighted_sem_seg_loss(loss, logits, labels, bad(weights), 255)


def test_build_sem_seg_loss_is_what_the_head_uses(meta_name):
    cfg = panoptic_cfg(meta_name, *loss_opts("searched"))
    model = build_model(cfg)
    assert type(model.sem_seg_head.loss_fn) is type(build_sem_seg_loss(cfg))
