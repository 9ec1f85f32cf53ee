"""The search's inner loop: candidate -> params, hold-out split, K proxies side by side."""
import math

import pytest
import torch

pytest.importorskip("detectron2")

from segloss_d2.search import trial  # noqa: E402
from segloss_d2.search.holdout import search_datasets, split_holdout  # noqa: E402
from segloss_d2.search.trial import (  # noqa: E402
    initial_mu,
    parse_target_metrics,
    reward_from_metrics,
    search_dim,
    theta_to_params,
    train_candidates,
)
from segloss_d2.surrogate.params import identity_params  # noqa: E402

from ._tiny import strip_timing, tiny_search_cfg  # noqa: E402


def test_parse_target_metrics():
    assert parse_target_metrics("BF1") == ["BF1"]
    assert parse_target_metrics("mIoU + BF1") == ["mIoU", "BF1"]
    for bad in ("miou", "mIoU+mIoU", "mIoU+", "IoU"):
        with pytest.raises(ValueError, match="SEARCH.TARGET_METRIC"):
            parse_target_metrics(bad)


def test_search_dim_and_initial_mu_are_the_identity_curves():
    cfg = tiny_search_cfg()
    assert search_dim(cfg) == 12 + 8  # mIoU: 2 curves x 6, BF1: 4 curves x 2 (1 piece)
    params = theta_to_params(cfg, initial_mu(cfg))
    ident = identity_params(["mIoU", "BF1"])
    assert params.metrics == ["mIoU", "BF1"] and params.num_pieces == [2, 1]
    for got, want in zip(params.control_points, ident.control_points):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-6)
    cfg.SEARCH.NUM_PIECES = 3
    assert search_dim(cfg) == 2 * 10 + 4 * 10
    assert len(initial_mu(cfg)) == 60


@pytest.mark.parametrize("constraints, bf1, miou", [("all", 8, 12), ("no_monotonic", 8, 12),
                                                    ("no_truth_table", 16, 16), ("none", 16, 16)])
def test_search_dim_and_initial_mu_under_constraints(constraints, bf1, miou):
    from segloss_d2.surrogate.bezier import bezier_curve

    cfg = tiny_search_cfg(opts=["SEARCH.CONSTRAINTS", constraints])
    assert search_dim(cfg) == miou + bf1
    mu = initial_mu(cfg)
    assert len(mu) == miou + bf1 and all(0 < v < 1 for v in mu)  # the controller's open interval
    params = theta_to_params(cfg, mu)
    assert params.constraints == [constraints] * 2
    assert [len(c) for c in params.thetas[0]] == [miou // 2] * 2
    assert [len(c) for c in params.thetas[1]] == [bf1 // 4] * 4
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    for curves in params.control_points:  # mu starts at the identity curves
        for cp in curves:
            assert (bezier_curve(x, cp) - x).abs().max() < 1e-3
    for metric, expected in (("BF1", bf1), ("mIoU", miou), ("mAcc", miou // 2)):
        cfg.SEARCH.TARGET_METRIC = metric
        assert search_dim(cfg) == len(initial_mu(cfg)) == expected
    with pytest.raises(ValueError, match=f"needs {expected}"):
        theta_to_params(cfg, [0.5] * (expected + 1))


def test_bad_search_constraints():
    cfg = tiny_search_cfg(opts=["SEARCH.CONSTRAINTS", "monotone"])
    for fn in (search_dim, initial_mu):
        with pytest.raises(ValueError, match="SEARCH.CONSTRAINTS: .*got 'monotone'"):
            fn(cfg)

def test_theta_to_params_splits_by_metric_in_order():
    cfg = tiny_search_cfg()
    theta = torch.linspace(0.05, 0.95, 20)
    params = theta_to_params(cfg, theta, reward=0.5, provenance={"seed": 1})
    assert [len(c) for c in params.thetas[0]] == [6, 6]
    assert [len(c) for c in params.thetas[1]] == [2, 2, 2, 2]
    assert params.thetas[0][0][0] == pytest.approx(0.05)
    assert params.thetas[1][3][1] == pytest.approx(0.95)
    assert params.reward == 0.5 and params.provenance == {"seed": 1}
    with pytest.raises(ValueError, match="needs 20"):
        theta_to_params(cfg, theta[:-1])


def test_reward_from_metrics_maps_names_and_averages():
    metrics = {"mIoU": 60.0, "fwIoU": 70.0, "mACC": 80.0, "pACC": 90.0, "BIoU": 40.0, "BF1": 20.0}
    assert reward_from_metrics(metrics, ["BF1"]) == pytest.approx(0.2)
    assert reward_from_metrics(metrics, ["mIoU", "BF1"]) == pytest.approx(0.4)
    assert reward_from_metrics(metrics, ["FWIoU"]) == pytest.approx(0.7)
    assert reward_from_metrics(metrics, ["mAcc", "gAcc"]) == pytest.approx(0.85)
    assert math.isnan(reward_from_metrics({**metrics, "BF1": float("nan")}, ["BF1"]))


def test_split_holdout_is_seeded_disjoint_and_validated():
    dicts = [{"image_id": i} for i in range(50)]
    train, held = split_holdout(dicts, 10, seed=3)
    assert len(train) == 40 and len(held) == 10
    assert {d["image_id"] for d in train} | {d["image_id"] for d in held} == set(range(50))
    assert split_holdout(dicts, 10, seed=3) == (train, held)
    assert split_holdout(dicts, 10, seed=4)[1] != held
    for size in (0, 50, 51, 2.0):
        with pytest.raises(ValueError, match="HOLDOUT.SIZE"):
            split_holdout(dicts, size, seed=0)


def test_search_datasets_errors():
    cfg = tiny_search_cfg(opts=["DATASETS.TRAIN", ("no_such_dataset",)])
    with pytest.raises(ValueError, match="no_such_dataset.*not a registered"):
        search_datasets(cfg)
    cfg = tiny_search_cfg(opts=["SEARCH.HOLDOUT.SIZE", 100000])
    with pytest.raises(ValueError, match="HOLDOUT.SIZE"):
        search_datasets(cfg)
    cfg = tiny_search_cfg(opts=["SEARCH.HOLDOUT.DATASET", "segloss_shapes_val"])
    train, reward = search_datasets(cfg)
    assert len(train) == 400 and len(reward) == 100


@pytest.fixture(scope="module")
def data():
    return search_datasets(tiny_search_cfg())


def _thetas(cfg, n):
    g = torch.Generator().manual_seed(7)
    mu = torch.tensor(initial_mu(cfg))
    rows = [mu] + [(mu + 0.2 * torch.randn(mu.shape, generator=g)).clamp(0, 1)
                   for _ in range(n - 1)]
    return torch.stack(rows)


def test_k_models_side_by_side_equal_one_at_a_time(data):
    cfg = tiny_search_cfg()
    thetas = _thetas(cfg, 3)
    together = train_candidates(cfg, thetas, *data)
    alone = [train_candidates(cfg, thetas[i:i + 1], *data)[0] for i in range(3)]
    assert [strip_timing(r) for r in together] == [strip_timing(r) for r in alone]
    assert all(r["status"] == "ok" and 0 <= r["reward"] <= 1 for r in together)
    assert together[0]["group_size"] == 3 and alone[0]["group_size"] == 1
    # the candidates really differ (the comparison above could not pass by accident)
    assert len({r["train_loss"] for r in together}) == 3
    assert set(together[0]["metrics"]) == {"mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1"}


def test_diverging_candidate_gets_reward_0_and_leaves_the_others_alone(data, monkeypatch):
    cfg = tiny_search_cfg()
    thetas = _thetas(cfg, 3)
    reference = train_candidates(cfg, thetas[[0, 2]], *data)
    real_loss = trial.build_surrogate_loss
    bad_theta = float(thetas[1, 0])

    class NaNLoss(torch.nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.loss = loss

        def forward(self, logits, labels):
            return self.loss(logits, labels) * float("nan")

    def nan_for_candidate_1(cfg, params):
        loss = real_loss(cfg, params)
        return NaNLoss(loss) if params.thetas[0][0][0] == pytest.approx(bad_theta) else loss

    monkeypatch.setattr(trial, "build_surrogate_loss", nan_for_candidate_1)
    results = train_candidates(cfg, thetas, *data)
    assert results[1]["status"] == "diverged" and results[1]["reward"] == 0.0
    assert "non-finite" in results[1]["error"] and results[1]["metrics"] == {}
    assert [strip_timing(r) for r in (results[0], results[2])] == \
        [strip_timing(r) for r in reference]


def test_exploding_lr_diverges_everything(data):
    cfg = tiny_search_cfg(opts=["SOLVER.BASE_LR", 1e12])
    results = train_candidates(cfg, _thetas(cfg, 2), *data)
    assert [r["status"] for r in results] == ["diverged", "diverged"]
    assert [r["reward"] for r in results] == [0.0, 0.0]


def test_cuda_rng_is_seeded_on_the_candidates_device(monkeypatch):
    """Without a GPU: fake per-device CUDA generators; cuda:1 must be seeded while cuda:0 is the
    current device, and the fork must cover cuda:1 (whose state the seeding changes)."""
    import contextlib

    current, seeds, forked = [0], {}, []

    @contextlib.contextmanager
    def device(d):
        previous, current[0] = current[0], torch.device(d).index
        try:
            yield
        finally:
            current[0] = previous

    @contextlib.contextmanager
    def fork_rng(devices):
        forked.append(list(devices))
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: seeds.__setitem__(current[0], s))
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda d="cuda": torch.tensor([seeds.get(torch.device(d).index, -1)]))
    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    state = trial._seeded_cuda_rng_state(torch.device("cuda:1"), 1234)
    assert state.tolist() == [1234] and seeds == {1: 1234}
    assert current == [0] and forked == [[torch.device("cuda:1")]]


def test_reward_set_reads_class_ids_like_the_evaluator(tmp_path):
    """A palette GT PNG: the reward set must see its indices (the class ids), not its luminance."""
    import numpy as np
    from PIL import Image

    ids = np.zeros((32, 32), dtype=np.uint8)
    ids[4:20, 6:28], ids[22:, :10], ids[0, :] = 1, 3, 255
    gt_path = str(tmp_path / "gt.png")
    gt_image = Image.fromarray(ids, mode="P")
    gt_image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [224, 224, 192] * 252)
    gt_image.save(gt_path)
    assert not np.array_equal(np.array(Image.open(gt_path).convert("L")), ids)
    image_path = str(tmp_path / "image.png")
    Image.fromarray(np.full((32, 32, 3), 100, dtype=np.uint8)).save(image_path)
    record = {"file_name": image_path, "sem_seg_file_name": gt_path, "height": 32, "width": 32}

    (inputs, gts), = trial._reward_batches(tiny_search_cfg(), [record], 1)
    assert len(inputs) == 1 and gts[0].tolist() == ids.tolist()


def test_bad_thetas_shape(data):
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        train_candidates(tiny_search_cfg(), torch.zeros(20), *data)
