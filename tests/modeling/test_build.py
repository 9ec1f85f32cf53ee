"""build_sem_seg_loss / heads: every LOSS_TYPE builds and trains; bad configs fail at build."""
import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.modeling import build_model  # noqa: E402

from segloss_d2.engine import get_segloss_cfg  # noqa: E402
from segloss_d2.modeling import build_sem_seg_loss, build_surrogate_params  # noqa: E402
from segloss_d2.surrogate.loss import SurrogateLoss  # noqa: E402

TINY = "configs/shapes/Base-Tiny-DeepLabV3Plus.yaml"
LOSS_TYPES = ["cross_entropy", "hard_pixel_mining", "wce", "dice", "lovasz", "naive", "searched"]


def tiny_cfg(*opts):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(list(opts))
    return cfg


def test_add_segloss_config_keeps_deeplab_loss_default():
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config

    from segloss_d2.config import add_segloss_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_segloss_config(cfg)
    assert cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE == "hard_pixel_mining"
    cfg = add_segloss_config(get_cfg())
    assert cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE == "cross_entropy"
    add_deeplab_config(cfg)  # other order composes too
    assert cfg.MODEL.SEM_SEG_HEAD.SURROGATE.TOLERANCE == 5


def test_searched_presets_and_combinations():
    loss = build_sem_seg_loss(tiny_cfg("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
                                       "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", "voc_miou,voc_bf1",
                                       "MODEL.SEM_SEG_HEAD.SURROGATE.WEIGHTS", "[1.0, 0.5]"))
    assert isinstance(loss, SurrogateLoss)
    assert loss.metrics == ["mIoU", "BF1"]
    assert loss.weights == [1.0, 0.5]
    naive = build_sem_seg_loss(tiny_cfg("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "naive",
                                        "MODEL.SEM_SEG_HEAD.SURROGATE.METRICS", "['BIoU']"))
    assert naive.metrics == ["BIoU"]



def test_surrogate_stats_reaches_the_loss():
    assert tiny_cfg().MODEL.SEM_SEG_HEAD.SURROGATE.STATS == "local"
    for stats in ("local", "global", "image"):
        loss = build_sem_seg_loss(tiny_cfg("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "naive",
                                           "MODEL.SEM_SEG_HEAD.SURROGATE.STATS", stats))
        assert loss.stats == stats


def test_searched_params_of_a_constraint_ablation_combine_with_a_preset(tmp_path):
    """A params file with non-default curve constraints (4n-number curves) keeps them when
    combined with another file in SURROGATE.PARAMS."""
    from segloss_d2.surrogate.params import SurrogateParams, save_params, theta_dim

    gen = torch.Generator().manual_seed(0)
    free = SurrogateParams.from_theta(
        ["mACC"], [torch.rand(theta_dim("mACC", 2, "none"), generator=gen).tolist()],
        constraints="none")
    path = str(tmp_path / "free.json")
    save_params(free, path)
    for names, metrics, constraints in ((path, ["mACC"], ["none"]),
                                        (f"{path},voc_miou", ["mACC", "mIoU"], ["none", "all"])):
        cfg = tiny_cfg("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched",
                       "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", names)
        loss = build_sem_seg_loss(cfg)
        assert loss.metrics == metrics
        assert loss.control_points[0] == free.control_points[0]
        assert build_surrogate_params(cfg).constraints == constraints
        labels = torch.randint(0, 7, (2, 16, 16))
        assert torch.isfinite(loss(torch.randn(2, 7, 16, 16), labels))

@pytest.mark.parametrize(
    "opts, match",
    [
        (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "focal"], "LOSS_TYPE 'focal' is unknown"),
        (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched"], "needs MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS"),
        (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched", "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS",
          "voc_bf1", "MODEL.SEM_SEG_HEAD.SURROGATE.METRICS", "['mIoU']"], "holds parameters for"),
        (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched", "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS",
          "voc_miou", "MODEL.SEM_SEG_HEAD.SURROGATE.WEIGHTS", "[1.0, 2.0]"], "one weight per"),
        (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "searched", "MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS",
          "no_such_preset"], "no_such_preset"),
        (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "naive", "MODEL.SEM_SEG_HEAD.SURROGATE.STATS", "batch"],
         r"SURROGATE.STATS must be one of \['local', 'global', 'image'\], got 'batch'"),
    ],
)
def test_bad_config_fails_when_the_model_is_built(opts, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        build_model(tiny_cfg(*opts))


@pytest.fixture(scope="module")
def shapes_batch():
    from detectron2.data import DatasetCatalog, DatasetMapper

    cfg = tiny_cfg()
    dicts = DatasetCatalog.get("segloss_shapes_train")[:4]
    mapper = DatasetMapper(cfg, is_train=False)
    batch = []
    for d in dicts:
        batch.append(mapper(dict(d)))
    return batch


@pytest.mark.parametrize(
    "loss_type, head",
    [(t, "DeepLabV3PlusSegLossHead") for t in LOSS_TYPES]
    + [(t, "SemSegFPNSegLossHead") for t in ("cross_entropy", "searched")],
)
def test_every_loss_type_reduces_its_training_loss(shapes_batch, loss_type, head):
    opts = ["MODEL.SEM_SEG_HEAD.LOSS_TYPE", loss_type, "MODEL.SEM_SEG_HEAD.NAME", head]
    if loss_type == "searched":
        opts += ["MODEL.SEM_SEG_HEAD.SURROGATE.PARAMS", "voc_miou"]
    if head == "SemSegFPNSegLossHead":
        opts += ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
                 "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
                 "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.NORM", "GN"]
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = model(shapes_batch)["loss_sem_seg"]
        assert torch.isfinite(loss), loss_type
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, (loss_type, losses)
