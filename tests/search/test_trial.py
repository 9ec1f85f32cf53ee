"""The search's inner loop: candidate -> params, hold-out split, K proxies side by side, the
proxies built by a detectron2 Trainer (SEARCH.TRAINER)."""
import itertools

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    DatasetMapper,
    build_detection_train_loader,
)
from detectron2.data import transforms as T  # noqa: E402

from segloss_d2.engine import SegLossTrainer  # noqa: E402
from segloss_d2.search import settings as search_settings  # noqa: E402
from segloss_d2.search import trial  # noqa: E402
from segloss_d2.search.holdout import search_datasets, split_holdout  # noqa: E402
from segloss_d2.search.settings import search_trainer  # noqa: E402
from segloss_d2.search.space import SearchSpace  # noqa: E402
from segloss_d2.search.trial import train_candidates  # noqa: E402
from segloss_d2.surrogate.params import identity_params  # noqa: E402

from ._tiny import settings_of, strip_timing, tiny_search_cfg  # noqa: E402


def test_search_space_of_the_config_is_the_identity_curves():
    space = SearchSpace.from_config(tiny_search_cfg())
    assert space.dim == 12 + 8  # mIoU: 2 curves x 6, BF1: 4 curves x 2 (1 piece)
    params = space.to_params(space.initial_mu())
    ident = identity_params(["mIoU", "BF1"])
    assert params.metrics == ["mIoU", "BF1"] and params.num_pieces == [2, 1]
    for got, want in zip(params.control_points, ident.control_points):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-6)
    space = SearchSpace.from_config(tiny_search_cfg(opts=["SEARCH.NUM_PIECES", 3]))
    assert space.dim == 2 * 10 + 4 * 10 and len(space.initial_mu()) == 60


@pytest.mark.parametrize("constraints, bf1, miou", [("all", 8, 12), ("no_monotonic", 8, 12),
                                                    ("no_truth_table", 16, 16), ("none", 16, 16)])
def test_search_space_of_the_config_under_constraints(constraints, bf1, miou):
    from segloss_d2.surrogate.autograd import bezier_curve

    cfg = tiny_search_cfg(opts=["SEARCH.CONSTRAINTS", constraints])
    space = SearchSpace.from_config(cfg)
    assert space.dim == miou + bf1
    mu = space.initial_mu()
    assert len(mu) == miou + bf1 and all(0 < v < 1 for v in mu)  # the controller's open interval
    params = space.to_params(mu)
    assert params.constraints == [constraints] * 2
    assert [len(c) for c in params.thetas[0]] == [miou // 2] * 2
    assert [len(c) for c in params.thetas[1]] == [bf1 // 4] * 4
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    for curves in params.control_points:  # mu starts at the identity curves
        for cp in curves:
            assert (bezier_curve(x, cp) - x).abs().max() < 1e-3
    for metric, expected in (("BF1", bf1), ("mIoU", miou), ("mACC", miou // 2)):
        cfg.SEARCH.TARGET_METRIC = metric
        space = SearchSpace.from_config(cfg)
        assert space.dim == len(space.initial_mu()) == expected
    with pytest.raises(ValueError, match=f"needs {expected}"):
        space.to_params([0.5] * (expected + 1))


def test_bad_search_constraints():
    cfg = tiny_search_cfg(opts=["SEARCH.CONSTRAINTS", "monotone"])
    with pytest.raises(ValueError, match="SEARCH.CONSTRAINTS: .*got 'monotone'"):
        SearchSpace.from_config(cfg)


def test_to_params_splits_by_metric_in_order():
    space = SearchSpace.from_config(tiny_search_cfg())
    theta = torch.linspace(0.05, 0.95, 20)
    params = space.to_params(theta, reward=0.5, provenance={"seed": 1})
    assert [len(c) for c in params.thetas[0]] == [6, 6]
    assert [len(c) for c in params.thetas[1]] == [2, 2, 2, 2]
    assert params.thetas[0][0][0] == pytest.approx(0.05)
    assert params.thetas[1][3][1] == pytest.approx(0.95)
    assert params.reward == 0.5 and params.provenance == {"seed": 1}
    with pytest.raises(ValueError, match="needs 20"):
        space.to_params(theta[:-1])


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
        search_datasets(settings_of(cfg))
    cfg = tiny_search_cfg(opts=["SEARCH.HOLDOUT.SIZE", 100000])
    with pytest.raises(ValueError, match="HOLDOUT.SIZE"):
        search_datasets(settings_of(cfg))
    cfg = tiny_search_cfg(opts=["SEARCH.HOLDOUT.DATASET", "segloss_shapes_val"])
    train, reward = search_datasets(settings_of(cfg))
    assert len(train) == 400 and len(reward) == 100


@pytest.fixture(scope="module")
def data():
    return search_datasets(settings_of(tiny_search_cfg()))


def _thetas(cfg, n):
    g = torch.Generator().manual_seed(7)
    mu = torch.tensor(SearchSpace.from_config(cfg).initial_mu())
    rows = [mu] + [(mu + 0.2 * torch.randn(mu.shape, generator=g)).clamp(0, 1)
                   for _ in range(n - 1)]
    return torch.stack(rows)


@pytest.mark.slow
def test_k_models_side_by_side_equal_one_at_a_time(data):
    cfg = tiny_search_cfg()
    thetas = _thetas(cfg, 3)
    together = train_candidates(settings_of(cfg), thetas, *data)
    alone = [train_candidates(settings_of(cfg), thetas[i:i + 1], *data)[0] for i in range(3)]
    assert [strip_timing(r) for r in together] == [strip_timing(r) for r in alone]
    assert all(r["status"] == "ok" and 0 <= r["reward"] <= 1 for r in together)
    assert together[0]["group_size"] == 3 and alone[0]["group_size"] == 1
    # the candidates really differ (the comparison above could not pass by accident)
    assert len({r["train_loss"] for r in together}) == 3
    assert set(together[0]["metrics"]) == {"mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1"}


def test_diverging_candidate_gets_reward_0_and_leaves_the_others_alone(data, monkeypatch):
    cfg = tiny_search_cfg()
    thetas = _thetas(cfg, 3)
    reference = train_candidates(settings_of(cfg), thetas[[0, 2]], *data)
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
    results = train_candidates(settings_of(cfg), thetas, *data)
    assert results[1]["status"] == "diverged" and results[1]["reward"] == 0.0
    assert "non-finite" in results[1]["error"] and results[1]["metrics"] == {}
    assert [strip_timing(r) for r in (results[0], results[2])] == \
        [strip_timing(r) for r in reference]


def test_exploding_lr_diverges_everything(data):
    cfg = tiny_search_cfg(opts=["SOLVER.BASE_LR", 1e12])
    results = train_candidates(settings_of(cfg), _thetas(cfg, 2), *data)
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
        train_candidates(settings_of(tiny_search_cfg()), torch.zeros(20), *data)


# --- SEARCH.TRAINER: the proxies come from a detectron2 Trainer's build_* classmethods ----------

def _trainer_path(name):
    return f"{__name__}.{name}"


class ProjectTrainer(SegLossTrainer):
    """A project's own Trainer: its own mapper (resize only: no crop, no flip), every build_*
    call and every mapped image recorded."""

    calls = []

    @classmethod
    def build_model(cls, cfg):
        cls.calls.append("build_model")
        return super().build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        cls.calls.append("build_optimizer")
        return super().build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        cls.calls.append("build_lr_scheduler")
        return super().build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        cls.calls.append(("build_train_loader", tuple(cfg.DATASETS.TRAIN), cfg.SEED,
                          len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0]))))
        resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                      cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        mapper = DatasetMapper(cfg, is_train=True, augmentations=[resize])

        def counting_mapper(d):
            cls.calls.append("map")
            return mapper(d)

        return build_detection_train_loader(cfg, mapper=counting_mapper)


class BatchSpyTrainer(SegLossTrainer):
    """SegLossTrainer's loader unchanged, the file names of every batch recorded."""

    batches = []

    @classmethod
    def build_train_loader(cls, cfg):
        loader = super().build_train_loader(cfg)

        def spy():
            for batch in loader:
                cls.batches.append([d["file_name"] for d in batch])
                yield batch

        return spy()


class NotATrainer:
    pass


@pytest.fixture(scope="module")
def reference(data):
    """Three candidates trained by the default trainer."""
    cfg = tiny_search_cfg()
    return [strip_timing(r) for r in train_candidates(settings_of(cfg), _thetas(cfg, 3), *data)]


def test_project_trainer_builds_the_proxies(data, reference):
    cfg = tiny_search_cfg(opts=["SEARCH.TRAINER", _trainer_path("ProjectTrainer"),
                                "SEARCH.SEED", 4])
    trainer = search_trainer(cfg.SEARCH.TRAINER)  # the class object the search imports
    trainer.calls.clear()
    results = train_candidates(settings_of(cfg), _thetas(cfg, 3), *data, seed=1)
    assert all(r["status"] == "ok" for r in results)
    calls = [c for c in trainer.calls if c != "map"]
    # one model (the template the candidates copy), an optimizer and a schedule per candidate,
    # one loader for the group, on the proxies' training images, seeded with the trial seed
    (loader_call,) = [c for c in calls if c[0] == "build_train_loader"]
    assert calls.count("build_model") == 1
    assert calls.count("build_optimizer") == calls.count("build_lr_scheduler") == 3
    assert loader_call[2] == 1 and loader_call[3] == len(data[0])
    assert "__search_proxy_train" in loader_call[1][0]
    assert loader_call[1][0] not in DatasetCatalog.list()  # removed after the group
    # the project's mapper fed all three models: MAX_ITER batches of IMS_PER_BATCH images, once
    assert trainer.calls.count("map") == cfg.SEARCH.PROXY.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH
    # ... and its augmentations (no crop, no flip) changed what the proxies learned
    assert [r["train_loss"] for r in results] != [r["train_loss"] for r in reference]


def test_default_trainer_data_order_is_the_trial_seed(data, reference):
    """The default loader samples with TrainingSampler(seed=trial seed), on detectron2 v0.6 (which
    would draw a random seed) as on main (which passes cfg.SEED), and a subclass that wraps
    SegLossTrainer's loader trains exactly like SegLossTrainer."""
    from detectron2.data.samplers import TrainingSampler

    cfg = tiny_search_cfg(opts=["SEARCH.TRAINER", _trainer_path("BatchSpyTrainer")])
    trainer = search_trainer(cfg.SEARCH.TRAINER)
    trainer.batches.clear()
    results = train_candidates(settings_of(cfg), _thetas(cfg, 3), *data)
    assert [strip_timing(r) for r in results] == reference
    n, batch = len(data[0]), cfg.SOLVER.IMS_PER_BATCH
    order = list(itertools.islice(iter(TrainingSampler(n, seed=cfg.SEARCH.SEED)), 3 * batch))
    expected = [[data[0][i]["file_name"] for i in order[k * batch:(k + 1) * batch]]
                for k in range(3)]
    assert trainer.batches == expected
    other = list(itertools.islice(iter(TrainingSampler(n, seed=cfg.SEARCH.SEED + 1)), batch))
    assert order[:batch] != other  # the comparison above can fail


@pytest.mark.parametrize("value, message", [
    ("", "must be the dotted path"),
    ("SegLossTrainer", "must be the dotted path"),
    ("segloss_d2.engine.", "must be the dotted path"),
    (3, "must be the dotted path"),
    ("segloss_d2.engine.NoSuchTrainer", "cannot be imported.*NoSuchTrainer"),
    ("no_such_package.Trainer", "cannot be imported.*no_such_package"),
    ("segloss_d2.engine.build_sem_seg_train_aug", "not a subclass of .*DefaultTrainer"),
    ("detectron2.engine.SimpleTrainer", "not a subclass of .*DefaultTrainer"),
    (f"{__name__}.NotATrainer", "not a subclass of .*DefaultTrainer"),
])
def test_bad_search_trainer_is_refused(value, message):
    cfg = tiny_search_cfg()
    cfg.SEARCH.TRAINER = value
    with pytest.raises(ValueError, match=f"SEARCH.TRAINER .*{message}") as e:
        settings_of(cfg)
    assert repr(value) in str(e.value)  # the error names the bad value


def test_search_trainer_resolves_default_and_nested_paths():
    from segloss_d2.engine import SegLossTrainer as Default

    assert search_trainer(tiny_search_cfg().SEARCH.TRAINER) is Default
    cfg = tiny_search_cfg(opts=["SEARCH.TRAINER", f"{__name__}._Holder.Inner"])
    assert settings_of(cfg).proxy.trainer.__qualname__ == "_Holder.Inner"


class _Holder:
    class Inner(SegLossTrainer):
        pass


@pytest.mark.slow
def test_project_trainer_runs_a_whole_search(tmp_path):
    from segloss_d2.search.runner import SearchRunner

    cfg = tiny_search_cfg(str(tmp_path), opts=["SEARCH.TRAINER", _trainer_path("ProjectTrainer")])
    settings = settings_of(cfg)
    trainer = settings.proxy.trainer
    trainer.calls.clear()
    result = SearchRunner(settings, log=lambda s: None).run()
    assert result.best_trial is not None and result.best_trial["status"] == "ok"
    # 2 iterations x 3 candidates, K = 3: one loader (one data pipeline) per group
    assert sum(1 for c in trainer.calls if c[0] == "build_train_loader") == 2
    # one per candidate, and one proxy built by the pre-flight check before any state is written
    assert trainer.calls.count("build_optimizer") == 6 + 1


def test_gradient_clipping_is_honoured(data):
    """SOLVER.CLIP_GRADIENTS acts (through the trainer's build_optimizer): a tight clip changes
    the result, a clip far above every gradient does not."""
    def run(*opts):
        cfg = tiny_search_cfg(opts=list(opts))
        return [strip_timing(r) for r in train_candidates(settings_of(cfg), _thetas(cfg, 1),
                                                          *data)]

    plain = run()
    clip = ["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"]
    assert run(*clip, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1e9) == plain
    assert run(*clip, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1e-3) != plain


def test_amp_needs_cuda():
    cfg = tiny_search_cfg(opts=["SOLVER.AMP.ENABLED", True])
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED .* on 'cpu'.*MODEL.DEVICE cuda"):
        settings_of(cfg)


def test_amp_step_goes_through_a_grad_scaler(data, reference, monkeypatch):
    """Without a GPU: with SOLVER.AMP.ENABLED every step is AMPTrainer's (autocast, scaled
    backward, scaler.step, scaler.update), one scaler per candidate. An identity scaler and a
    disabled autocast must then train exactly like fp32."""
    scalers = []

    class IdentityScaler:
        def __init__(self):
            self.log = []
            scalers.append(self)

        def scale(self, loss):
            self.log.append("scale")
            return loss

        def step(self, optimizer):
            self.log.append("step")
            optimizer.step()

        def update(self):
            self.log.append("update")

    autocasts = []

    class FakeAutocast:
        def __init__(self, device_type, *args, **kwargs):
            autocasts.append(device_type)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(trial, "_grad_scaler", IdentityScaler)
    monkeypatch.setattr(trial, "check_amp_device", lambda amp, device: None)
    monkeypatch.setattr(search_settings, "check_amp_device", lambda amp, device: None)
    monkeypatch.setattr(trial.torch, "autocast", FakeAutocast)
    cfg = tiny_search_cfg(opts=["SOLVER.AMP.ENABLED", True])
    results = train_candidates(settings_of(cfg), _thetas(cfg, 3), *data)
    assert [strip_timing(r) for r in results] == reference
    steps = cfg.SEARCH.PROXY.MAX_ITER
    assert len(scalers) == 3
    assert all(s.log == ["scale", "step", "update"] * steps for s in scalers)
    assert autocasts.count("cuda") == 3 * steps  # (the loss may open its own, e.g. to disable)


# --- common random numbers and successive halving ---------------------------------------------

def _record_batches(monkeypatch):
    """Patch _Candidate.step to record, per candidate, a digest of the weights it starts from and
    of every batch it trains on (images after augmentation, labels)."""
    seen = []
    step = trial._Candidate.step

    def digest(tensors):
        return hash(tuple(float(t.double().sum()) + 1e-3 * float((t.double() ** 2).sum())
                          for t in tensors))

    def recording_step(self, batch, iteration):
        if not hasattr(self, "stream"):
            self.stream = [digest(list(self.model.state_dict().values()))]
            seen.append(self.stream)
        log = self.stream
        log.append(digest([d["image"] for d in batch] + [d["sem_seg"] for d in batch]))
        return step(self, batch, iteration)

    monkeypatch.setattr(trial._Candidate, "step", recording_step)
    return seen


def test_common_random_numbers_are_complete(data, monkeypatch):
    """Every candidate of a trial seed starts from the same weights and trains on the same
    augmented batches in the same order, whatever its group; another seed changes the batches."""
    cfg = tiny_search_cfg()
    thetas = _thetas(cfg, 3)
    seen = _record_batches(monkeypatch)
    train_candidates(settings_of(cfg), thetas, *data, seed=5)
    train_candidates(settings_of(cfg), thetas[2:], *data, seed=5)
    streams = list(seen)
    assert len(streams) == 4 and all(len(s) == 1 + cfg.SEARCH.PROXY.MAX_ITER for s in streams)
    assert all(s == streams[0] for s in streams)
    seen.clear()
    train_candidates(settings_of(cfg), thetas[:1], *data, seed=6)
    (other,) = seen
    assert other[0] != streams[0][0]  # no MODEL.WEIGHTS here: the seed draws the initial weights
    assert other[1:] != streams[0][1:]  # and the data order / augmentations


@pytest.mark.slow
def test_successive_halving_stops_the_worse_half_and_keeps_the_survivors_results(data):
    base = tiny_search_cfg(opts=["SEARCH.PROXY.MAX_ITER", 4])
    halving = tiny_search_cfg(opts=["SEARCH.PROXY.MAX_ITER", 4, "SEARCH.PROXY.HALVING", [0.5],
                                    "SEARCH.ADVANTAGE", "rank"])
    thetas = _thetas(base, 4)
    full = [strip_timing(r) for r in train_candidates(settings_of(base), thetas, *data)]
    halved = [strip_timing(r) for r in train_candidates(settings_of(halving), thetas, *data)]
    assert [r["proxy_iters"] for r in full] == [4] * 4
    survivors = [i for i, r in enumerate(halved) if r["proxy_iters"] == 4]
    stopped = [i for i, r in enumerate(halved) if r["proxy_iters"] == 2]
    assert len(survivors) == 2 and len(stopped) == 2
    for i in survivors:  # a survivor's batches and result are those of the run without halving
        assert halved[i] == full[i]
    for i in stopped:
        assert halved[i]["status"] == "ok" and halved[i]["metrics"]
    # halving=False (the selection stage) trains every proxy fully
    assert [strip_timing(r) for r in train_candidates(settings_of(halving), thetas, *data,
                                                      halving=False)] == full
