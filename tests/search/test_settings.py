"""SearchSettings: the one place that reads a search's config."""
import ast
import dataclasses
import os
import pickle

import pytest

pytest.importorskip("detectron2")

from segloss_d2.search.runner import SearchRunner  # noqa: E402
from segloss_d2.search.settings import SearchSettings, settings_from_lazy  # noqa: E402

from ._tiny import REPO, settings_of, tiny_search_cfg  # noqa: E402

# The search's detectron2 adapters below the settings: they take SearchSettings, never a config.
_TAKE_SETTINGS = ("runner.py", "backends.py", "holdout.py", "trial.py")


def test_settings_are_frozen_and_hold_every_part():
    settings = settings_of(tiny_search_cfg("out"))
    assert settings.target == "mIoU+BF1" and settings.space.dim == 20
    assert (settings.iterations, settings.samples_per_iter, settings.seed) == (2, 3, 1)
    assert settings.controller.method == "ppo" and settings.controller.mu_is_sample_0
    assert settings.proxy.max_iter == 3 and settings.proxy.cfg.SOLVER.MAX_ITER == 3
    assert settings.proxy.cfg.MODEL.SEM_SEG_HEAD.LOSS_TYPE == "cross_entropy"
    assert settings.proxy.cfg.is_frozen()
    assert settings.data.train_dataset == "segloss_shapes_train"
    assert settings.data.reward_set == "hold-out of segloss_shapes_train"
    assert settings.backend.name == "local" and settings.backend.models_per_worker == 3
    assert settings.selection is None and settings.guard is None
    assert settings.output_dir == "out"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 2
    # Ray ships the settings to its workers
    assert pickle.loads(pickle.dumps(settings)).fingerprint == settings.fingerprint


def test_aliases_are_canonical_before_the_fingerprint():
    canonical = settings_of(tiny_search_cfg("a", ["SEARCH.TARGET_METRIC", "mIoU+BF1"]))
    alias = settings_of(tiny_search_cfg("a", ["SEARCH.TARGET_METRIC", "miou+bf1"]))
    assert alias.target == canonical.target == "mIoU+BF1"
    assert alias.fingerprint == canonical.fingerprint


def test_runner_takes_settings_not_a_config():
    with pytest.raises(TypeError, match="SearchSettings.from_config"):
        SearchRunner(tiny_search_cfg("out"))
    empty = settings_of(tiny_search_cfg("")).replace(output_dir="")
    with pytest.raises(ValueError, match="OUTPUT_DIR"):
        SearchRunner(empty)


def test_only_the_settings_read_the_search_keys():
    """No module below the settings reads ``<config>.SEARCH``: following the config from
    tools/search_net.py stops at SearchSettings.from_config."""
    root = os.path.join(REPO, "segloss_d2", "search")
    for name in _TAKE_SETTINGS:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        reads = [node.lineno for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and node.attr == "SEARCH"]
        assert not reads, f"segloss_d2/search/{name} reads .SEARCH at lines {reads}"
    with open(os.path.join(REPO, "tools", "search_net.py"), encoding="utf-8") as f:
        assert "SearchSettings.from_config(cfg)" in f.read()


def test_keys_only_check_skips_files():
    cfg = tiny_search_cfg("out", ["DATASETS.TRAIN", ("cityscapes_fine_sem_seg_train",),
                                  "MODEL.WEIGHTS", "/no/such/model.pth"])
    assert settings_of(cfg, check_files=False).data.train_dataset == \
        "cityscapes_fine_sem_seg_train"
    with pytest.raises(FileNotFoundError):
        settings_of(cfg)


def test_lazy_config_builds_the_same_settings():
    from omegaconf import OmegaConf

    cfg = tiny_search_cfg("out")
    lazy = OmegaConf.create({"search": OmegaConf.create(
        {k: v for k, v in _plain(cfg).items() if k != "VERSION"})})
    settings = settings_from_lazy(lazy)
    assert settings.fingerprint == settings_of(cfg).fingerprint
    with pytest.raises(ValueError, match="'search' node"):
        settings_from_lazy(OmegaConf.create({"model": {}}))


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, tuple):
        return [_plain(v) for v in node]
    return node


def test_from_config_refuses_a_bad_key_with_its_name():
    with pytest.raises(ValueError, match="SEARCH.CLIP_EPS must be a number > 0.0 and < 1.0, "
                                         "got 1.0"):
        SearchSettings.from_config(tiny_search_cfg("out", ["SEARCH.CLIP_EPS", 1.0]))
