"""make_segloss_head: the segloss variant of any registered semantic head; the search's head check
accepts every segloss head, and setting ``sem_seg_head.loss_fn`` (what the search does) reaches the
loss that trains."""
import pytest
import torch
from torch import nn

pytest.importorskip("detectron2")

from detectron2.modeling import (  # noqa: E402
    SEM_SEG_HEADS_REGISTRY,
    build_backbone,
    build_model,
)
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead  # noqa: E402
from detectron2.projects.deeplab import DeepLabV3Head, DeepLabV3PlusHead  # noqa: E402

from segloss_d2.engine import get_segloss_cfg  # noqa: E402
from segloss_d2.modeling import (  # noqa: E402
    DeepLabV3PlusSegLossHead,
    SemSegFPNSegLossHead,
    make_segloss_head,
)
from segloss_d2.search.settings import _check_head_takes_loss_fn  # noqa: E402
from segloss_d2.surrogate.loss import SurrogateLoss  # noqa: E402

TINY = "configs/shapes/Base-Tiny-DeepLabV3Plus.yaml"
SEARCHED = ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
            "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", "voc_miou"]


def tiny_cfg(*opts):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(list(opts))
    return cfg


class SpyLoss(nn.Module):
    """Records its calls and returns a loss with gradient."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, logits, labels):
        self.calls.append((tuple(logits.shape), tuple(labels.shape)))
        return logits.float().logsumexp(1).mean() * 0.0 + logits.float().mean()


def _batch(n=2, h=64, w=96, classes=7):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g).float(),
             "sem_seg": torch.randint(0, classes, (h, w), generator=g), "height": h, "width": w}
            for _ in range(n)]


def test_existing_heads_are_made_by_the_helper():
    assert make_segloss_head(SemSegFPNHead) is SemSegFPNSegLossHead
    assert make_segloss_head("DeepLabV3PlusHead") is DeepLabV3PlusSegLossHead
    assert issubclass(DeepLabV3PlusSegLossHead, DeepLabV3PlusHead)
    assert SEM_SEG_HEADS_REGISTRY.get("SemSegFPNSegLossHead") is SemSegFPNSegLossHead


@pytest.mark.parametrize("head", ["DeepLabV3PlusSegLossHead", "SemSegFPNSegLossHead"])
def test_checkpoints_match_the_stock_head(head):
    """Only losses() differs: the segloss model's state_dict matches the stock head's."""
    fpn = ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
           "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
           "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.NORM", "GN"]
    opts = fpn if head == "SemSegFPNSegLossHead" else []
    ours = build_model(tiny_cfg(*opts, *SEARCHED, "MODEL.SEM_SEG_HEAD.NAME", head))
    stock = build_model(tiny_cfg(*opts, "MODEL.SEM_SEG_HEAD.NAME", head.replace("SegLoss", "")))
    assert type(ours.sem_seg_head).__name__ == head
    assert isinstance(ours.sem_seg_head.loss_fn, SurrogateLoss)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in stock.state_dict().items()}


def test_any_registered_head_deeplabv3():
    """detectron2's DeepLabV3Head (plain ``Head(cfg, input_shape)``, no @configurable) made into a
    segloss head by name: any LOSS_TYPE, the config untouched, the search accepts it."""
    cls = make_segloss_head("DeepLabV3Head")
    assert cls.__name__ == "DeepLabV3SegLossHead" and issubclass(cls, DeepLabV3Head)
    assert make_segloss_head("DeepLabV3Head") is cls  # idempotent
    cfg = tiny_cfg(*SEARCHED, "MODEL.SEM_SEG_HEAD.NAME", "DeepLabV3SegLossHead",
                   "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res5']")
    _check_head_takes_loss_fn(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE == "searched"  # the parent saw cross_entropy only
    assert isinstance(model.sem_seg_head.loss_fn, SurrogateLoss)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batch = _batch()
    losses = []
    for _ in range(6):
        loss = model(batch)["loss_sem_seg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    spy = SpyLoss()
    model.sem_seg_head.loss_fn = spy  # what the search does per candidate
    model(batch)["loss_sem_seg"].backward()
    assert spy.calls == [((2, 7, 64, 96), (2, 64, 96))]  # label resolution
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 32, "width": 48}])
    assert out[0]["sem_seg"].shape == (7, 32, 48)


def test_plain_head_with_explicit_loss_fn():
    cls = make_segloss_head("DeepLabV3Head")
    cfg = tiny_cfg("MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res5']")
    spy = SpyLoss()
    head = cls(cfg, build_backbone(cfg).output_shape(), loss_fn=spy)
    assert head.loss_fn is spy


def test_configurable_head_takes_explicit_arguments():
    """A @configurable segloss head also builds from explicit arguments, loss_fn among them."""
    spy = SpyLoss()
    cfg = tiny_cfg("MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
                   "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
                   "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.NORM", "GN")
    shapes = build_backbone(cfg).output_shape()
    head = SemSegFPNSegLossHead(shapes, loss_fn=spy, num_classes=7, conv_dims=32,
                                common_stride=4, norm="GN")
    assert head.loss_fn is spy
    feats = {k: torch.randn(1, v.channels, 64 // v.stride, 64 // v.stride) for k, v in
             shapes.items()}
    head.train()
    _, losses = head(feats, torch.randint(0, 7, (1, 64, 64)))
    assert set(losses) == {"loss_sem_seg"} and spy.calls == [((1, 7, 64, 64), (1, 64, 64))]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="'NoSuchHead' is not registered"):
        make_segloss_head("NoSuchHead")
    with pytest.raises(ValueError, match="nn.Module class with losses"):
        make_segloss_head(int)
    with pytest.raises(ValueError, match="'SemSegFPNSegLossHead' is already registered"):
        make_segloss_head(DeepLabV3PlusHead, name="SemSegFPNSegLossHead")


@pytest.mark.parametrize("name, accepted", [
    ("DeepLabV3PlusSegLossHead", True), ("SemSegFPNSegLossHead", True),
    ("PanopticDeepLabSemSegLossHead", True), ("PointRendSemSegLossHead", True),
    ("DeepLabV3PlusHead", False), ("PanopticDeepLabSemSegHead", False),
    ("PointRendSemSegHead", False),
])
def test_the_search_accepts_segloss_heads_only(name, accepted):
    cfg = tiny_cfg("MODEL.SEM_SEG_HEAD.NAME", name)
    if accepted:
        _check_head_takes_loss_fn(cfg)
    else:
        with pytest.raises(ValueError, match="is not a segloss_d2.modeling.LossFnHead"):
            _check_head_takes_loss_fn(cfg)


def test_every_segloss_head_declares_the_loss_fn_contract():
    from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

    from segloss_d2.modeling import LossFnHead

    for name in ("DeepLabV3PlusSegLossHead", "SemSegFPNSegLossHead",
                 "PanopticDeepLabSemSegLossHead", "PointRendSemSegLossHead"):
        assert issubclass(SEM_SEG_HEADS_REGISTRY.get(name), LossFnHead), name
    for name in ("DeepLabV3PlusHead", "SemSegFPNHead"):
        assert not issubclass(SEM_SEG_HEADS_REGISTRY.get(name), LossFnHead), name


def test_set_loss_fn_replaces_the_loss_and_checks_its_type():
    from torch import nn

    from segloss_d2.modeling import LossFnHead

    head = LossFnHead()
    loss = nn.Identity()
    head.set_loss_fn(loss)
    assert head.loss_fn is loss
    with pytest.raises(TypeError, match="loss_fn must be an nn.Module, got function"):
        head.set_loss_fn(lambda logits, labels: 0)
