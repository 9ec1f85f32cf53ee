"""The search's inner loop: train proxy detectron2 models with candidate losses, score them.

A candidate is a flat vector ``theta`` of search variables in [0, 1] (the curves of every target
metric, concatenated in the order of ``SEARCH.TARGET_METRIC``). :func:`train_candidates` trains K
candidates side by side in one process::

    settings = SearchSettings.from_config(cfg)                          # settings.py
    train_dicts, reward_dicts = search_datasets(settings)               # holdout.py
    results = train_candidates(settings, thetas, train_dicts, reward_dicts)   # thetas: (K, D)
    results[k]["reward"], results[k]["metrics"], results[k]["status"]

The K models start from the same initial weights (built once from ``SEARCH.SEED``), see the same
mini-batches in the same order (one data pipeline) and each has its own optimizer, LR schedule and
RNG stream (seeded alike), so a candidate's result does not depend on K or on its neighbours:
reward differences come from the loss only.

Model, optimizer, LR schedule and training loader come from the ``build_model``,
``build_optimizer``, ``build_lr_scheduler`` and ``build_train_loader`` classmethods of the
detectron2 ``DefaultTrainer`` subclass named by ``SEARCH.TRAINER``, so a
project's own Trainer drives the search unchanged: ``build_model`` once per group (the template the
K candidates copy), ``build_optimizer`` and ``build_lr_scheduler`` once per candidate,
``build_train_loader`` once per group (its batches feed all K models). The trainer sees the frozen
proxy config (:attr:`ProxySettings.cfg <segloss_d2.search.settings.ProxySettings>`) whose
``DATASETS.TRAIN`` is a temporarily registered dataset of the proxies' training images and whose
``SEED`` is the trial seed. ``SOLVER.AMP.ENABLED`` trains
under ``torch.autocast`` (float16) with a ``GradScaler`` per candidate, as detectron2's
``AMPTrainer`` does, and like it needs CUDA; ``SOLVER.CLIP_GRADIENTS`` acts through the optimizer
(detectron2's ``build_optimizer`` wraps it with ``maybe_add_gradient_clipping``).
"""
import contextlib
import copy
import itertools
import logging
import math
import os
import random
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from ..data.mapper import SemSegDatasetMapper
from ..evaluation.evaluator import build_seg_metrics, load_sem_seg_gt
from ..metric_names import METRICS
from ..modeling.build import build_surrogate_loss
from ..modeling.heads import LossFnHead
from .settings import check_amp_device

__all__ = ["train_candidates", "train_reference"]

logger = logging.getLogger(__name__)

def _trial_cfg(proxy_cfg, seed: int, train_dataset: str):
    """The proxy config of one trial group: ``SEED`` (detectron2's training sampler seeds the
    data order with it) and ``DATASETS.TRAIN = (train_dataset,)`` (the registered proxy training
    images the trainer's ``build_train_loader`` loads); frozen."""
    cfg = proxy_cfg.clone()
    cfg.defrost()
    cfg.SEED = int(seed)
    cfg.DATASETS.TRAIN = (train_dataset,)
    cfg.freeze()
    return cfg


_PROXY_DATASETS = itertools.count()


@contextlib.contextmanager
def _proxy_train_dataset(source: str, dicts: Sequence[Dict]):
    """Register ``dicts`` as a dataset (with the metadata of ``source``, so a mapper that reads
    ``MetadataCatalog.get(cfg.DATASETS.TRAIN[0])`` finds it); yields its name, removes it after."""
    name = f"{source}__search_proxy_train_{os.getpid()}_{next(_PROXY_DATASETS)}"
    DatasetCatalog.register(name, lambda: list(dicts))
    try:
        metadata = MetadataCatalog.get(source).as_dict() if source in MetadataCatalog else {}
        metadata.pop("name", None)
        MetadataCatalog.get(name).set(**metadata)
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@contextlib.contextmanager
def _shared_random_seed(seed: int):
    """Samplers built inside draw ``seed`` as their "shared random seed".

    detectron2 main builds the default ``TrainingSampler`` with ``seed=cfg.SEED``; v0.6 builds it
    without a seed, so it draws one from ``comm.shared_random_seed()``. Returning the trial seed
    there gives both versions the same, seeded data order."""
    original = comm.shared_random_seed
    comm.shared_random_seed = lambda: int(seed)
    try:
        yield
    finally:
        comm.shared_random_seed = original


@contextlib.contextmanager
def _quiet(logger_name: str):
    """``DefaultTrainer.build_model`` logs the whole model at INFO: once per group is noise."""
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def _grad_scaler():
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()  # torch < 2.3


class _DivergenceGuard(torch.nn.Module):
    """Wraps a candidate's loss: non-finite logits (diverged weights) raise FloatingPointError,
    like detectron2's trainer does for a non-finite loss, instead of the loss's input error."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, logits, labels):
        if not bool(torch.isfinite(logits.detach()).all()):
            raise FloatingPointError("the proxy model's logits became non-finite")
        return self.loss(logits, labels)


def _seeded_cuda_rng_state(device: torch.device, seed: int) -> torch.Tensor:
    """The RNG state ``device`` (e.g. cuda:1) has after ``manual_seed(seed)``; the global RNG
    states are left as they were. ``torch.cuda.manual_seed`` seeds the *current* device, so the
    seeding and the state read both happen with ``device`` made current."""
    with torch.random.fork_rng(devices=[device]), torch.cuda.device(device):
        torch.cuda.manual_seed(seed)
        return torch.cuda.get_rng_state(device)


class _Candidate:
    """One proxy model with its optimizer, LR schedule and private RNG stream."""

    def __init__(self, cfg, space, trainer, template, theta, seed):
        """``cfg``: the trial's proxy config; ``space``: the search space of ``theta``;
        ``theta`` None: the template head's own loss (the cross-entropy reference)."""
        self.params = None if theta is None else space.to_params(theta)
        self.model = copy.deepcopy(template)
        if self.params is not None:
            self.model.sem_seg_head.set_loss_fn(
                _DivergenceGuard(build_surrogate_loss(cfg, self.params)))
        self.model.train()
        self.optimizer = trainer.build_optimizer(cfg, self.model)
        self.scheduler = trainer.build_lr_scheduler(cfg, self.optimizer)
        # SOLVER.AMP.ENABLED: detectron2's AMPTrainer step (float16 autocast, one GradScaler)
        self.scaler = _grad_scaler() if cfg.SOLVER.AMP.ENABLED else None
        self.device = next(self.model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        self.cpu_rng = gen.get_state()
        self.cuda_rng = None
        if self.device.type == "cuda":
            self.cuda_rng = _seeded_cuda_rng_state(self.device, seed)
        self.status, self.error, self.last_loss = "ok", None, float("nan")
        self.scored_at, self.metrics = None, None  # set by stop()

    def step(self, batch, iteration: int) -> None:
        """One SGD step on ``batch`` with this candidate's RNG; a non-finite loss -> diverged."""
        cuda = [self.device] if self.cuda_rng is not None else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self.cpu_rng)
            if cuda:
                torch.cuda.set_rng_state(self.cuda_rng, self.device)
            try:
                amp = self.scaler is not None
                with torch.autocast("cuda") if amp else contextlib.nullcontext():
                    loss_dict = self.model(batch)
                    losses = sum(loss_dict.values())
                if not torch.isfinite(losses).all():
                    raise FloatingPointError(
                        f"loss became non-finite at iteration {iteration}: "
                        f"{ {k: float(v.detach()) for k, v in loss_dict.items()} }"
                    )
                self.optimizer.zero_grad()
                if amp:
                    self.scaler.scale(losses).backward()
                    self.scaler.step(self.optimizer)  # unscales first: clipping sees true grads
                    self.scaler.update()
                else:
                    losses.backward()
                    self.optimizer.step()
                self.scheduler.step()
                self.last_loss = float(losses.detach())
            except FloatingPointError as e:
                self.diverge(str(e))
            finally:
                self.cpu_rng = torch.get_rng_state()
                if cuda:
                    self.cuda_rng = torch.cuda.get_rng_state(self.device)

    def diverge(self, message: str) -> None:
        self.status, self.error = "diverged", message
        self.model = self.optimizer = self.scheduler = self.scaler = None  # free memory early

    def stop(self, iteration: int, metrics: Optional[Dict[str, float]]) -> None:
        """Training ends here: record the score (None if diverged) and free the model."""
        self.scored_at, self.metrics = iteration, metrics
        self.model = self.optimizer = self.scheduler = self.scaler = None

    def check_finite_weights(self) -> None:
        if self.model is not None and not all(
            torch.isfinite(v).all()
            for v in self.model.state_dict().values() if v.is_floating_point()
        ):
            self.diverge("non-finite weights or statistics after training")


def _reward_batches(cfg, reward_dicts, batch_size, reward_set="the reward set"):
    """Yield (inputs, gts) of the reward set: test-mapped images and full-resolution GT maps,
    read like the evaluator reads them (:func:`~segloss_d2.evaluation.evaluator.load_sem_seg_gt`:
    palette indices of a "P" PNG are the class ids)."""
    mapper = SemSegDatasetMapper(cfg, is_train=False, dataset_names=(reward_set,))
    for start in range(0, len(reward_dicts), batch_size):
        chunk = reward_dicts[start:start + batch_size]
        inputs = [mapper(copy.deepcopy(d)) for d in chunk]
        gts = [load_sem_seg_gt(d["sem_seg_file_name"]) for d in chunk]
        yield inputs, gts


@torch.no_grad()
def _evaluate(cfg, candidates, reward_dicts, reward_set) -> List[Optional[Dict[str, float]]]:
    """SegMetrics summaries of every live candidate on the reward set (None for diverged ones)."""
    live = [c for c in candidates if c.model is not None]
    meters = {}
    for c in live:
        c.model.eval()
        meters[id(c)] = build_seg_metrics(cfg, metrics=METRICS)  # the six, not BoundaryIoU
    for inputs, gts in _reward_batches(cfg, reward_dicts, max(1, cfg.SOLVER.IMS_PER_BATCH),
                                       reward_set):
        for c in live:
            outputs = c.model(inputs)
            for out, gt in zip(outputs, gts):
                meters[id(c)].update(out["sem_seg"].argmax(dim=0).to("cpu"), gt)
    results = []
    for c in candidates:
        if c.model is None:
            results.append(None)
        else:
            results.append({k: v for k, v in meters[id(c)].compute().items() if "-" not in k})
    return results


def _build_template(proxy, cfg, seed):
    """The initial proxy model: ``proxy.trainer.build_model(cfg)`` seeded with ``seed``, then
    ``MODEL.WEIGHTS`` (as ``DefaultTrainer.resume_or_load`` loads them)."""
    trainer = proxy.trainer
    seed_all_rng(seed)
    with _quiet("detectron2.engine.defaults"):
        template = trainer.build_model(cfg)
    head = getattr(template, "sem_seg_head", None)
    if not isinstance(head, LossFnHead):
        raise ValueError(
            f"SEARCH.TRAINER {proxy.trainer_path!r}: build_model returned a "
            f"{type(template).__name__} whose sem_seg_head ({type(head).__name__}) is not a "
            "segloss_d2.modeling.LossFnHead; the search gives every candidate its own loss "
            "through sem_seg_head.set_loss_fn"
        )
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(template).load(cfg.MODEL.WEIGHTS)
    return template


@contextlib.contextmanager
def _global_rng_kept():
    """Restore the global RNGs (Python, numpy, torch CPU) on exit: the training loader draws its
    augmentations from them, and scoring the reward set mid-training must not shift that stream
    (detectron2's test-time ``ResizeShortestEdge`` draws from numpy even with one size)."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def _halve(cfg, space, candidates, iteration, reward_dicts, reward_set) -> None:
    """Successive halving at ``iteration``: score the candidates still training, keep the better
    half (at least one; ties: the earlier candidate), stop the others with their score."""
    live = [c for c in candidates if c.scored_at is None]
    with _global_rng_kept():
        metrics = _evaluate(cfg, live, reward_dicts, reward_set)
    rewards = [space.reward(m) if m is not None else -math.inf for m in metrics]
    rewards = [r if math.isfinite(r) else -math.inf for r in rewards]
    order = sorted(range(len(live)), key=lambda j: (-rewards[j], j))
    for j in order[max(1, len(live) // 2):]:
        live[j].stop(iteration, metrics[j])
    for j in order[:max(1, len(live) // 2)]:
        if live[j].model is not None:
            live[j].model.train()


def train_candidates(
    settings,
    thetas,
    train_dicts: Sequence[Dict],
    reward_dicts: Sequence[Dict],
    seed: Optional[int] = None,
    halving: bool = True,
) -> List[Dict]:
    """Train one proxy per candidate side by side on the same batches, then score them.

    With ``SEARCH.PROXY.HALVING`` (and ``halving``), the group is scored at each of
    ``settings.proxy.halving_stops`` and its worse half stops there (successive halving); a
    survivor's batches, and so its result, are the same as without halving.

    Args:
        settings (SearchSettings): the search (:mod:`~segloss_d2.search.settings`); proxies
            train with ``settings.proxy`` (its config and trainer, see the module docstring) and
            are scored with ``settings.space``.
        thetas (Tensor or array): ``(K, D)`` candidates, values in [0, 1]; D is
            ``settings.space.dim``.
        train_dicts (list of dict): proxy training images (detectron2 dataset dicts with
            ``sem_seg_file_name``).
        reward_dicts (list of dict): the reward set.
        seed (int or None): seed of the initial weights, the data order and the augmentations
            (every candidate gets the same); None = ``settings.seed``.
        halving (bool): apply ``SEARCH.PROXY.HALVING`` (False: every proxy trains fully, as the
            re-evaluations of the selection stage do).

    Returns:
        list of K dicts: ``reward`` (float in [0, 1]; 0.0 for a diverged candidate), ``status``
        ("ok" or "diverged"), ``metrics`` (SegMetrics summary in percent, empty if diverged),
        ``control_points`` (per metric, per curve), ``train_loss`` (last loss), ``error``
        (None or why it diverged), ``seconds`` (wall time of the group / K), ``group_size`` K,
        ``proxy_iters`` (the training iteration at which the candidate was scored: the last one,
        or the halving stop where it was dropped).
    """
    thetas = torch.as_tensor(thetas, dtype=torch.float32)
    if thetas.dim() != 2 or thetas.shape[0] < 1:
        raise ValueError(f"thetas must be a (K, D) tensor with K >= 1, got shape {thetas.shape}")
    return _train_group(settings, list(thetas), train_dicts, reward_dicts, seed, halving)


def train_reference(settings, train_dicts: Sequence[Dict], reward_dicts: Sequence[Dict],
                    seed: Optional[int] = None) -> Dict:
    """The search's proxy trained with cross-entropy (the proxy head's own loss) instead of a
    candidate's surrogate, on the same data, seed and schedule: the reference of a guarded reward
    (docs/method.md §4.7). Returns one result like :func:`train_candidates`' (``reward`` is the
    target metric's; ``control_points`` None)."""
    return _train_group(settings, [None], train_dicts, reward_dicts, seed, halving=False)[0]


def _train_group(settings, thetas, train_dicts, reward_dicts, seed, halving) -> List[Dict]:
    """:func:`train_candidates` on a list of thetas, where None is a cross-entropy proxy."""
    start = time.perf_counter()
    seed = int(settings.seed if seed is None else seed)
    space, proxy, trainer = settings.space, settings.proxy, settings.proxy.trainer
    reward_set = settings.data.reward_set
    with _proxy_train_dataset(settings.data.train_dataset, train_dicts) as train_name:
        cfg = _trial_cfg(proxy.cfg, seed, train_name)
        template = _build_template(proxy, cfg, seed)
        check_amp_device(cfg.SOLVER.AMP.ENABLED, str(next(template.parameters()).device))
        candidates = [_Candidate(cfg, space, trainer, template, theta, seed)
                      for theta in thetas]
        del template

        seed_all_rng(seed)
        with _shared_random_seed(seed):
            loader = trainer.build_train_loader(cfg)  # one data pipeline for the K candidates
        stops = proxy.halving_stops if halving else ()
        with EventStorage(0):
            for iteration, batch in zip(range(cfg.SOLVER.MAX_ITER), loader):
                live = [c for c in candidates if c.model is not None and c.scored_at is None]
                if not live:
                    break
                for c in live:
                    c.step(batch, iteration)
                if iteration + 1 in stops:
                    for c in candidates:
                        c.check_finite_weights()
                    _halve(cfg, space, candidates, iteration + 1, reward_dicts, reward_set)
        del loader
    final = [c for c in candidates if c.scored_at is None]
    for c in final:
        c.check_finite_weights()
    for c, m in zip(final, _evaluate(cfg, final, reward_dicts, reward_set)):
        c.stop(cfg.SOLVER.MAX_ITER, m)

    seconds = (time.perf_counter() - start) / len(candidates)
    results = []
    for c in candidates:
        m = c.metrics
        reward = 0.0
        if m is not None:
            reward = space.reward(m)
            if not math.isfinite(reward):
                c.status, c.error, reward = "diverged", f"undefined reward metric: {m}", 0.0
        if c.status != "ok":
            logger.warning("candidate diverged: %s", c.error)
        results.append({
            "reward": reward,
            "status": c.status,
            "metrics": m or {},
            "control_points": None if c.params is None else c.params.control_points,
            "train_loss": c.last_loss if math.isfinite(c.last_loss) else None,
            "error": c.error,
            "seconds": seconds,
            "group_size": len(candidates),
            "proxy_iters": c.scored_at,
        })
    return results
