"""Pretrained initial weights for the tiny models of the embedded data (the toy's "ImageNet").

The paper's proxy networks and final networks start from ImageNet-pretrained weights. On the
embedded ``segloss_shapes`` data the equivalent is a tiny model trained with cross-entropy on
``segloss_shapes_pretrain`` (other scenes of the same world, disjoint from the train, hold-out
and val images)::

    weights = pretrained_weights("configs/shapes/Base-Tiny-DeepLabV3Plus.yaml")
    cfg.MODEL.WEIGHTS = weights      # proxies and retrained models fine-tune from it

It matters for the search: proxies trained from scratch on a CPU budget are chaotic (the reward of
one loss changes with the proxy seed as much as between losses) and surrogate-trained ones often
collapse to predicting background; fine-tuned from these weights they are nearly deterministic
(docs/search_study.md measures both). The weights are trained once and cached under
:func:`~segloss_d2.data.shapes_cache_dir` by a key of the config file's contents, the schedule and
the seed.
"""
import hashlib
import logging
import os

import torch

__all__ = ["PRETRAIN_DATASET", "pretrained_weights"]

PRETRAIN_DATASET = "segloss_shapes_pretrain"
logger = logging.getLogger(__name__)


def _cache_key(config_file: str, iters: int, seed: int) -> str:
    from segloss_d2.data.shapes import GENERATOR_VERSION

    with open(config_file, "rb") as f:
        text = f.read()
    h = hashlib.sha256(text)
    h.update(f"|iters={iters}|seed={seed}|generator={GENERATOR_VERSION}".encode())
    return h.hexdigest()[:16]


def pretrained_weights(config_file: str, iters: int = 300, seed: int = 1,
                       cache_dir: str = "") -> str:
    """Path of the weights of ``config_file``'s model trained with cross-entropy on
    ``segloss_shapes_pretrain`` for ``iters`` iterations (trained and cached on first use).

    Args:
        config_file (str): a segloss_d2 config of a model on segloss_shapes (its SOLVER keys are
            the pretraining recipe; ``SOLVER.MAX_ITER``, ``SEED`` and the training dataset are
            replaced).
        iters (int): pretraining iterations, >= 1.
        seed (int): ``SEED`` of the pretraining, >= 0.
        cache_dir (str): default ``<shapes_cache_dir()>/pretrained``.

    Returns:
        str: a ``.pth`` file holding ``{"model": state_dict}``, for ``MODEL.WEIGHTS``.
    """
    from detectron2.utils.env import seed_all_rng

    from segloss_d2.data import shapes_cache_dir
    from segloss_d2.engine import SegLossTrainer, get_segloss_cfg

    for name, value, low in (("iters", iters, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"pretrained_weights: {name} must be an int >= {low}, got {value!r}")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"pretrained_weights: no config file {config_file!r}")
    cache_dir = cache_dir or os.path.join(shapes_cache_dir(), "pretrained")
    out = os.path.join(cache_dir, _cache_key(config_file, iters, seed))
    path = os.path.join(out, "model.pth")
    if os.path.isfile(path):
        return path
    cfg = get_segloss_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["DATASETS.TRAIN", (PRETRAIN_DATASET,), "DATASETS.TEST", (),
                         "SOLVER.MAX_ITER", iters, "SEED", seed, "OUTPUT_DIR", out,
                         "MODEL.WEIGHTS", "", "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy",
                         "SOLVER.CHECKPOINT_PERIOD", iters + 1, "TEST.EVAL_PERIOD", 0])
    cfg.freeze()
    logger.info("pretraining %s for %d iterations on %s -> %s", config_file, iters,
                PRETRAIN_DATASET, path)
    os.makedirs(out, exist_ok=True)
    seed_all_rng(seed)
    trainer = SegLossTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save({"model": trainer.model.state_dict(), "pretrained_on": PRETRAIN_DATASET,
                "iterations": iters}, tmp)
    os.replace(tmp, path)
    return path
