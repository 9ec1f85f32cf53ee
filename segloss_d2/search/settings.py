"""Every setting a search uses, read and validated once from a detectron2 config.

::

    settings = SearchSettings.from_config(cfg)   # ValueError naming the key; writes nothing
    SearchRunner(settings, resume=False).run()

:meth:`SearchSettings.from_config` is the only place that reads a search's config: the runner, the
backends (:class:`BackendSettings`), the controller (:class:`ControllerSettings`), the trials
(:class:`ProxySettings`, :class:`DataSettings`) and the result writer take the frozen settings or
the part they need. It checks every key the search uses (``SEARCH.*``, the head,
``SEARCH.TRAINER``, the surrogate options of the candidates' loss, ``MODEL.WEIGHTS``, the datasets)
before anything is written, and spells aliases canonically (``SEARCH.TARGET_METRIC miou`` is the
``mIoU`` search) before the fingerprint that a resume compares.

A LazyConfig project builds the same settings from its ``OmegaConf`` config by converting the
search part to a ``CfgNode`` first (:func:`settings_from_lazy`).
"""
import copy
import dataclasses
import importlib
import inspect
from numbers import Real
from typing import Any, Dict, Optional, Tuple

from detectron2.engine import DefaultTrainer
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..checkpoint import check_model_weights
from ..data import check_datasets
from ..modeling.heads import DeepLabV3PlusSegLossHead, LossFnHead, SemSegFPNSegLossHead
from .guard import RewardGuard
from .ppo import ADVANTAGES, CONTROLLERS
from .seeds import PROXY_SEED_MODES, selection_seeds
from .selection import Selection
from .space import SearchSpace

__all__ = [
    "BACKENDS",
    "BackendSettings",
    "ControllerSettings",
    "DataSettings",
    "ProxySettings",
    "SearchSettings",
    "check_amp_device",
    "search_trainer",
    "settings_from_lazy",
]

BACKENDS = ("local", "ray")
"""``SEARCH.BACKEND``."""

# Keys that do not change a search's results: how it is run and where it writes. Everything else
# (target, data, proxy model and schedule, controller, seed, DATALOADER.NUM_WORKERS, which changes
# the augmentation streams) is part of the fingerprint checked on resume.
_NOT_FINGERPRINTED = (
    ("OUTPUT_DIR",),
    ("SEARCH", "OUTPUT_DIR"),
    ("SEARCH", "BACKEND"),
    ("SEARCH", "MODELS_PER_WORKER"),
    ("SEARCH", "RAY"),
    ("MODEL", "DEVICE"),
)


@dataclasses.dataclass(frozen=True)
class ControllerSettings:
    """``SEARCH.METHOD`` and the PPO keys (docs/method.md §4.2, §4.6)."""

    method: str
    sigma: float
    sigma_end: float
    mu_lr: float
    ppo_steps: int
    clip_eps: float
    ratio: str
    baseline: str
    advantage: str
    mirrored: bool
    max_mu_step: float

    @property
    def mu_is_sample_0(self) -> bool:
        """PPO with the "mu" baseline trains μ itself as sample 0 of every iteration."""
        return self.method == "ppo" and self.baseline == "mu"


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """How a candidate's proxy trains (docs/method.md §4.4).

    Attributes:
        cfg (CfgNode): frozen detectron2 config of the proxies (MODEL, INPUT, SOLVER, DATALOADER,
            surrogate options) with ``SOLVER.MAX_ITER = SEARCH.PROXY.MAX_ITER`` and the plain
            cross-entropy head loss (each candidate gets its own ``loss_fn``).
        trainer (type): the ``DefaultTrainer`` subclass of ``SEARCH.TRAINER``.
        trainer_path (str): ``SEARCH.TRAINER`` as given (a dotted path).
        max_iter (int): ``SEARCH.PROXY.MAX_ITER``.
        halving (tuple of float): ``SEARCH.PROXY.HALVING``.
        seeds (str): ``SEARCH.PROXY.SEEDS``.
    """

    cfg: Any
    trainer: type
    trainer_path: str
    max_iter: int
    halving: Tuple[float, ...]
    seeds: str

    @property
    def halving_stops(self) -> Tuple[int, ...]:
        """The proxy iterations at which the worse half of a group stops."""
        return tuple(round(f * self.max_iter) for f in self.halving)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The search's data (docs/method.md §4.4): ``DATASETS.TRAIN[0]`` and the reward set, a
    ``holdout_size`` split of it drawn with the search seed, or ``holdout_dataset``."""

    train_dataset: str
    holdout_dataset: str
    holdout_size: int

    @property
    def reward_set(self) -> str:
        """The reward set's name in messages."""
        return self.holdout_dataset or f"hold-out of {self.train_dataset}"


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    """``SEARCH.BACKEND``, ``SEARCH.MODELS_PER_WORKER`` and ``SEARCH.RAY.*``."""

    name: str
    models_per_worker: int
    ray_address: str
    cpus_per_trial: float
    gpus_per_trial: float
    max_retries: int


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """A search, validated (see the module docstring). Build it with :meth:`from_config`.

    Attributes:
        space (SearchSpace): target metrics (canonical names), curve pieces, constraints.
        seed (int): ``SEARCH.SEED``: controller, hold-out split and proxy seed.
        iterations, samples_per_iter (int): ``SEARCH.ITERATIONS``, ``SEARCH.SAMPLES_PER_ITER``.
        controller (ControllerSettings), proxy (ProxySettings), data (DataSettings),
        backend (BackendSettings): the parts of the search.
        selection (Selection or None): ``SEARCH.SELECTION`` (None: ``TOP_K`` 0, the paper's
            answer).
        guard (RewardGuard or None): ``SEARCH.REWARD_GUARD`` with ``GUARD_PENALTY`` and, when
            > 0, ``GUARD_REFERENCE``.
        output_dir (str): ``SEARCH.OUTPUT_DIR``, or ``OUTPUT_DIR`` ("" = none: the trials can
            run, :class:`~segloss_d2.search.runner.SearchRunner` refuses it).
        device (str): ``MODEL.DEVICE``.
        weights (str): ``MODEL.WEIGHTS``, checked readable.
        fingerprint (dict): the config without the keys that do not change results, aliases
            canonical; what a resume compares.
    """

    space: SearchSpace
    seed: int
    iterations: int
    samples_per_iter: int
    controller: ControllerSettings
    proxy: ProxySettings
    data: DataSettings
    backend: BackendSettings
    selection: Optional[Selection]
    guard: Optional[RewardGuard]
    output_dir: str
    device: str
    weights: str
    fingerprint: Dict[str, Any] = dataclasses.field(repr=False, compare=False)

    @property
    def target(self) -> str:
        """The target metrics joined by '+', canonical (e.g. ``"mIoU+BF1"``)."""
        return self.space.target

    def replace(self, **changes) -> "SearchSettings":
        """A copy with some fields changed (e.g. ``output_dir``)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, cfg, check_files: bool = True) -> "SearchSettings":
        """Read and validate every key a search uses.

        Args:
            cfg (CfgNode): from ``get_segloss_cfg()`` with the search settings merged.
            check_files (bool): also check that the datasets are registered with their files
                present and that ``MODEL.WEIGHTS`` can be read (False: keys only).

        Raises:
            ValueError: naming the key, its value and what was expected (unregistered datasets,
                a hold-out not smaller than the dataset, a head without ``set_loss_fn``, a trainer
                that is not a ``DefaultTrainer``, a candidates' loss that cannot be built).
            FileNotFoundError: a dataset's files or ``MODEL.WEIGHTS`` cannot be read.
        """
        s = cfg.SEARCH
        space = SearchSpace.from_config(cfg)  # TARGET_METRIC, NUM_PIECES, CONSTRAINTS
        for key in ("SEARCH.ITERATIONS", "SEARCH.SAMPLES_PER_ITER", "SEARCH.PPO_STEPS",
                    "SEARCH.PROXY.MAX_ITER", "SEARCH.MODELS_PER_WORKER", "SOLVER.IMS_PER_BATCH",
                    "SEARCH.SELECTION.SEEDS"):
            _int_at_least(cfg, key, 1)
        for key in ("SEARCH.SEED", "SEARCH.RAY.MAX_RETRIES", "SEARCH.SELECTION.TOP_K"):
            _int_at_least(cfg, key, 0)
        controller = _controller_settings(cfg)
        if controller.mu_is_sample_0 and s.SAMPLES_PER_ITER < 2:
            raise ValueError("SEARCH.SAMPLES_PER_ITER must be >= 2 with SEARCH.BASELINE 'mu' "
                             "(sample 0 is the mean itself, the baseline)")
        if s.BACKEND not in BACKENDS:
            raise ValueError(f"SEARCH.BACKEND must be one of {BACKENDS}, got {s.BACKEND!r}")
        _number(cfg, "SEARCH.RAY.CPUS_PER_TRIAL", 0.0)
        _number(cfg, "SEARCH.RAY.GPUS_PER_TRIAL", 0.0, low_open=False)
        backend = BackendSettings(
            name=s.BACKEND, models_per_worker=int(s.MODELS_PER_WORKER),
            ray_address=str(s.RAY.ADDRESS), cpus_per_trial=float(s.RAY.CPUS_PER_TRIAL),
            gpus_per_trial=float(s.RAY.GPUS_PER_TRIAL), max_retries=int(s.RAY.MAX_RETRIES))
        _number(cfg, "SEARCH.GUARD_REFERENCE", 0.0, 1.0, low_open=False)
        _number(cfg, "SEARCH.GUARD_PENALTY", 0.0, low_open=False)
        guard = None
        if s.REWARD_GUARD:
            guard = RewardGuard.parse(s.REWARD_GUARD, penalty=float(s.GUARD_PENALTY),
                                      reference=float(s.GUARD_REFERENCE) or None)
        selection = None
        if s.SELECTION.TOP_K:
            selection = Selection(int(s.SELECTION.TOP_K),
                                  selection_seeds(s.SEED, int(s.SELECTION.SEEDS)))
        data = _data_settings(cfg, check_files)
        proxy = _proxy_settings(cfg, controller)
        _check_head_takes_loss_fn(cfg)
        _check_candidate_loss(proxy.cfg, space)
        weights = str(cfg.MODEL.WEIGHTS)
        if check_files:
            check_model_weights(weights)  # (downloads it once, as every trial loads it)
        output_dir = s.OUTPUT_DIR or cfg.OUTPUT_DIR
        return cls(space=space, seed=int(s.SEED), iterations=int(s.ITERATIONS),
                   samples_per_iter=int(s.SAMPLES_PER_ITER), controller=controller, proxy=proxy,
                   data=data, backend=backend, selection=selection, guard=guard,
                   output_dir=str(output_dir), device=str(cfg.MODEL.DEVICE), weights=weights,
                   fingerprint=_fingerprint(cfg, space))


def settings_from_lazy(lazy_cfg, check_files: bool = True) -> SearchSettings:
    """:meth:`SearchSettings.from_config` of a LazyConfig (``OmegaConf``) whose ``search`` node
    holds the yacs-style search config: the keys of ``get_segloss_cfg()`` (``MODEL``, ``SOLVER``,
    ``SEARCH``, ...) that the proxies' ``SEARCH.TRAINER`` builds from. Unknown keys are refused
    as in a yacs config."""
    from omegaconf import OmegaConf

    from ..engine import get_segloss_cfg

    node = lazy_cfg.get("search") if hasattr(lazy_cfg, "get") else None
    if node is None:
        raise ValueError("a LazyConfig search needs a 'search' node with the yacs-style keys of "
                         "get_segloss_cfg() (MODEL, DATASETS, SOLVER, SEARCH, ...)")
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    cfg = get_segloss_cfg()
    cfg.merge_from_other_cfg(type(cfg)(plain))
    cfg.freeze()
    return SearchSettings.from_config(cfg, check_files=check_files)


# ------------------------------------------------------------------------------------ helpers
def _value(cfg, key: str):
    value = cfg
    for part in key.split("."):
        value = value[part]
    return value


def _int_at_least(cfg, key: str, minimum: int) -> None:
    value = _value(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {value!r}")


def _number(cfg, key: str, low: float, high: float = float("inf"), low_open=True,
            high_open=False) -> None:
    value = _value(cfg, key)
    ok = isinstance(value, Real) and not isinstance(value, bool) and (
        value < high if high_open else value <= high) and (
        value > low if low_open else value >= low)
    if not ok:
        bound = (f"{'>' if low_open else '>='} {low}" + (
            f" and {'<' if high_open else '<='} {high}" if high < 1e300 else ""))
        raise ValueError(f"{key} must be a number {bound}, got {value!r}")


def _controller_settings(cfg) -> ControllerSettings:
    """``SEARCH.METHOD`` and the PPO keys, checked."""
    s = cfg.SEARCH
    if s.METHOD not in CONTROLLERS:
        raise ValueError(f"SEARCH.METHOD must be one of {sorted(CONTROLLERS)}, got {s.METHOD!r}")
    _number(cfg, "SEARCH.SIGMA", 0.0)
    _number(cfg, "SEARCH.MU_LR", 0.0)
    _number(cfg, "SEARCH.CLIP_EPS", 0.0, 1.0, high_open=True)
    _number(cfg, "SEARCH.SIGMA_END", 0.0, low_open=False)
    _number(cfg, "SEARCH.MAX_MU_STEP", 0.0, 1.0, low_open=False)
    if s.RATIO not in ("per_dim", "joint"):
        raise ValueError(f"SEARCH.RATIO must be 'per_dim' or 'joint', got {s.RATIO!r}")
    if s.BASELINE not in ("mu", "mean"):
        raise ValueError(f"SEARCH.BASELINE must be 'mu' or 'mean', got {s.BASELINE!r}")
    if s.ADVANTAGE not in ADVANTAGES:
        raise ValueError(f"SEARCH.ADVANTAGE must be one of {ADVANTAGES}, got {s.ADVANTAGE!r}")
    if not isinstance(s.MIRRORED, bool):
        raise ValueError(f"SEARCH.MIRRORED must be True or False, got {s.MIRRORED!r}")
    return ControllerSettings(
        method=s.METHOD, sigma=float(s.SIGMA), sigma_end=float(s.SIGMA_END), mu_lr=float(s.MU_LR),
        ppo_steps=int(s.PPO_STEPS), clip_eps=float(s.CLIP_EPS), ratio=s.RATIO,
        baseline=s.BASELINE, advantage=s.ADVANTAGE, mirrored=s.MIRRORED,
        max_mu_step=float(s.MAX_MU_STEP))


def _data_settings(cfg, check_files: bool) -> DataSettings:
    """``DATASETS.TRAIN[0]`` and the reward set, registered (and, with ``check_files``, with
    their files present)."""
    if len(cfg.DATASETS.TRAIN) == 0:
        raise ValueError("DATASETS.TRAIN is empty; the search needs a training dataset")
    h = cfg.SEARCH.HOLDOUT
    if not h.DATASET:
        _int_at_least(cfg, "SEARCH.HOLDOUT.SIZE", 1)
    data = DataSettings(train_dataset=str(cfg.DATASETS.TRAIN[0]),
                        holdout_dataset=str(h.DATASET), holdout_size=int(h.SIZE))
    if check_files:
        check_datasets([data.train_dataset], key="DATASETS.TRAIN[0]")
        if data.holdout_dataset:
            check_datasets([data.holdout_dataset], key="SEARCH.HOLDOUT.DATASET")
    return data


def _proxy_settings(cfg, controller: ControllerSettings) -> ProxySettings:
    """``SEARCH.PROXY.*``, ``SEARCH.TRAINER`` and ``SOLVER.AMP.ENABLED`` vs ``MODEL.DEVICE``."""
    p = cfg.SEARCH.PROXY
    if p.SEEDS not in PROXY_SEED_MODES:
        raise ValueError(f"SEARCH.PROXY.SEEDS must be one of {PROXY_SEED_MODES}, got {p.SEEDS!r}")
    halving = p.HALVING
    ok = isinstance(halving, (list, tuple)) and all(
        isinstance(f, Real) and not isinstance(f, bool) and 0 < f < 1 for f in halving) and all(
        a < b for a, b in zip(halving, halving[1:]))
    if not ok:
        raise ValueError(f"SEARCH.PROXY.HALVING must be a list of increasing fractions of "
                         f"SEARCH.PROXY.MAX_ITER in (0, 1) (e.g. [0.5]), or [] for off; got "
                         f"{halving!r}")
    if halving and controller.method == "ppo" and controller.advantage != "rank":
        raise ValueError(
            f"SEARCH.PROXY.HALVING {list(halving)} stops the worse half of the proxies early, and "
            "their rewards are not comparable with fully trained ones: the PPO update can only "
            f"rank them; set SEARCH.ADVANTAGE 'rank' (got {controller.advantage!r})")
    rungs = [round(f * p.MAX_ITER) for f in halving]
    if halving and (rungs[0] < 1 or len(set(rungs)) != len(rungs) or rungs[-1] >= p.MAX_ITER):
        raise ValueError(f"SEARCH.PROXY.HALVING {list(halving)} of SEARCH.PROXY.MAX_ITER "
                         f"{p.MAX_ITER} gives the stops {rungs}: they must be distinct "
                         "iterations in [1, MAX_ITER)")
    trainer = search_trainer(cfg.SEARCH.TRAINER)
    check_amp_device(cfg.SOLVER.AMP.ENABLED, str(cfg.MODEL.DEVICE))
    proxy = cfg.clone()
    proxy.defrost()
    proxy.SOLVER.MAX_ITER = int(p.MAX_ITER)
    proxy.MODEL.SEM_SEG_HEAD.LOSS_TYPE = "cross_entropy"
    proxy.freeze()
    return ProxySettings(cfg=proxy, trainer=trainer, trainer_path=str(cfg.SEARCH.TRAINER),
                         max_iter=int(p.MAX_ITER),
                         halving=tuple(float(f) for f in halving), seeds=p.SEEDS)


_TRAINER_EXAMPLE = "segloss_d2.engine.SegLossTrainer"


def _import_dotted(path: str):
    """The object at a dotted path ``package.module.Name`` (or ``module.Outer.Inner``): the
    longest importable module prefix, then attributes. ImportError/AttributeError if absent."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # only "this prefix is not a module" moves on; a module that fails inside is reported
            if e.name is not None and module_name.startswith(e.name):
                continue
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no importable module in {path!r}")


def search_trainer(path: str):
    """The ``DefaultTrainer`` subclass at ``path`` (the dotted path of ``SEARCH.TRAINER``).

    Raises:
        ValueError: naming the value, if it is not a dotted path, cannot be imported, or is not a
            subclass of detectron2's ``DefaultTrainer``.
    """
    expected = (f"the dotted path of a detectron2 DefaultTrainer subclass, e.g. "
                f"{_TRAINER_EXAMPLE!r}")
    if not isinstance(path, str) or "." not in path.strip(".") or any(
            not p.isidentifier() for p in path.split(".")):
        raise ValueError(f"SEARCH.TRAINER must be {expected}, got {path!r}")
    try:
        obj = _import_dotted(path)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"SEARCH.TRAINER {path!r} cannot be imported ({type(e).__name__}: {e}); expected "
            f"{expected}"
        ) from e
    if not (inspect.isclass(obj) and issubclass(obj, DefaultTrainer)):
        raise ValueError(
            f"SEARCH.TRAINER {path!r} is {obj!r}, not a subclass of "
            f"detectron2.engine.DefaultTrainer; expected {expected}"
        )
    return obj


def check_amp_device(amp: bool, device: str) -> None:
    """``SOLVER.AMP.ENABLED`` needs CUDA, like detectron2's ``AMPTrainer``; ValueError else."""
    if amp and not device.startswith("cuda"):
        raise ValueError(
            f"SOLVER.AMP.ENABLED is True but the proxies run on {device!r}: mixed precision "
            "training needs MODEL.DEVICE cuda (detectron2's AMPTrainer is CUDA-only; on CPU "
            "torch.autocast would train in bfloat16, a different recipe); set "
            "SOLVER.AMP.ENABLED False or MODEL.DEVICE cuda"
        )


def _check_head_takes_loss_fn(cfg) -> None:
    """Every candidate trains with its own loss (``sem_seg_head.set_loss_fn``): the head must be
    a :class:`~segloss_d2.modeling.heads.LossFnHead`."""
    name = cfg.MODEL.SEM_SEG_HEAD.NAME
    segloss_heads = [DeepLabV3PlusSegLossHead.__name__, SemSegFPNSegLossHead.__name__]
    try:
        head = SEM_SEG_HEADS_REGISTRY.get(name)
    except KeyError as e:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NAME {name!r} is not registered in SEM_SEG_HEADS_REGISTRY; "
            f"the search needs a head that trains with a loss_fn, e.g. {segloss_heads}"
        ) from e
    if not (isinstance(head, type) and issubclass(head, LossFnHead)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.NAME {name!r}: the search gives every candidate its own loss "
            f"(LossFnHead.set_loss_fn), but {getattr(head, '__module__', '?')}."
            f"{getattr(head, '__qualname__', head)} is not a segloss_d2.modeling.LossFnHead, so "
            f"every candidate would train with the head's own loss. Use one of segloss_d2's "
            f"heads {segloss_heads}, make one with segloss_d2.modeling.make_segloss_head({name!r}),"
            " or subclass LossFnHead in a head whose losses() use self.loss_fn"
        )


def _check_candidate_loss(proxy_cfg, space: SearchSpace) -> None:
    """Build the starting candidate's loss: the surrogate keys (``SURROGATE.STATS``, tolerance,
    ...) are checked as every trial will use them."""
    from ..modeling.build import build_surrogate_loss

    try:
        build_surrogate_loss(proxy_cfg, space.to_params(space.initial_mu()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"the candidates' loss cannot be built: {e}") from None


def _to_plain(node):
    if isinstance(node, dict):
        return {k: _to_plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_to_plain(v) for v in node]
    return node


def _fingerprint(cfg, space: SearchSpace) -> Dict[str, Any]:
    """The config as a JSON-able dict without the keys that do not change results, the target
    metric in its canonical spelling ("miou" and "mIoU" are one search)."""
    plain = copy.deepcopy(_to_plain(cfg))
    plain["SEARCH"]["TARGET_METRIC"] = space.target
    not_fingerprinted = _NOT_FINGERPRINTED
    if cfg.SEARCH.PROXY.HALVING:  # halving ranks the proxies of a group: K changes the results
        not_fingerprinted = [p for p in not_fingerprinted if p != ("SEARCH", "MODELS_PER_WORKER")]
    for path in not_fingerprinted:
        node = plain
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return plain
