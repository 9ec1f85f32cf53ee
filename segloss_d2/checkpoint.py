"""``MODEL.WEIGHTS`` checked before anything is trained or written.

detectron2 resolves ``MODEL.WEIGHTS`` (a local path, an ``http(s)://`` URL, ``detectron2://`` or
``catalog://``) only when the checkpointer loads it, deep inside training; offline, that is a
``URLError`` traceback after the output directory was set up (and, for a search, after its state
was written). :func:`check_model_weights` resolves it up front (downloading into detectron2's
cache if needed, as the checkpointer would) and raises :class:`WeightsUnavailableError` with one
paragraph naming the key, the URL and the ways out.
"""
import os

from detectron2.utils.file_io import PathManager

__all__ = ["WeightsUnavailableError", "check_model_weights", "check_weights_to_load",
           "weights_url"]


class WeightsUnavailableError(FileNotFoundError):
    """``MODEL.WEIGHTS`` cannot be read (no such file, or a download that failed)."""


def weights_url(weights: str) -> str:
    """The URL that ``weights`` is downloaded from, or ``""`` for a local path."""
    if weights.startswith("detectron2://"):
        return "https://dl.fbaipublicfiles.com/detectron2/" + weights[len("detectron2://"):]
    if weights.startswith("catalog://"):
        try:
            from detectron2.checkpoint.catalog import ModelCatalog

            return ModelCatalog.get(weights[len("catalog://"):])
        except Exception:  # unknown catalog name: the loader reports it too
            return ""
    if "://" in weights and not weights.startswith("file://"):
        return weights
    return ""


def check_model_weights(weights: str, key: str = "MODEL.WEIGHTS") -> str:
    """Make sure ``weights`` can be loaded; return its local path (``""`` when empty).

    Args:
        weights (str): the value of ``MODEL.WEIGHTS``; ``""`` means random initialization and
            is always fine.
        key (str): the config key named in the error.

    Raises:
        WeightsUnavailableError: the file does not exist, its download failed (e.g. offline), or
            it cannot be deserialized (a truncated or foreign file).
    """
    if not weights:
        return ""
    url = weights_url(weights)
    try:
        local = PathManager.get_local_path(weights)
        problem = "" if os.path.isfile(local) else "no such file"
    except Exception as e:  # URLError, HTTPError, OSError, ... from the download
        problem = f"{type(e).__name__}: {e}"
    if not problem:
        problem = _unreadable(local)
    if not problem:
        return local
    source = f" (from {url})" if url else ""
    fetch = (f"download it once where there is network (e.g. `wget {url}`) and pass the local "
             f"path, {key} /path/to/{os.path.basename(url)}" if url else
             f"pass the path of an existing checkpoint, {key} /path/to/model.pth")
    raise WeightsUnavailableError(
        f"{key} {weights!r}{source} cannot be read: {problem}. Stopped before training. "
        f"Ways out: {fetch}; or train from random initialization with {key} \"\"."
    )


def _unreadable(path: str) -> str:
    """Why detectron2's checkpointer could not deserialize ``path`` ("" if it can): a ``.pkl``
    is a pickle (detectron2 / Caffe2 model zoo format), anything else a ``torch.save`` file."""
    try:
        if path.endswith(".pkl"):
            import pickle

            with open(path, "rb") as f:
                pickle.load(f, encoding="latin1")
        else:
            import torch

            torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, not a checkpoint, ...
        return f"it is not a readable checkpoint ({type(e).__name__}: {e})"
    return ""


def check_weights_to_load(cfg, resume: bool = False) -> None:
    """Check what ``DetectionCheckpointer(...).resume_or_load(cfg.MODEL.WEIGHTS, resume)`` will
    load: nothing to check when resuming from a checkpoint in ``cfg.OUTPUT_DIR`` (its
    ``last_checkpoint`` exists), else ``MODEL.WEIGHTS`` (:func:`check_model_weights`)."""
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    check_model_weights(cfg.MODEL.WEIGHTS)
