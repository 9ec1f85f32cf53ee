"""Pretrained initial weights of the tiny models (segloss_d2.pretrain)."""
import os

import pytest
import torch

pytest.importorskip("detectron2")

from experiments.pretrain import PRETRAIN_DATASET, pretrained_weights  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "shapes", "Base-Tiny-DeepLabV3Plus.yaml")


def test_trained_once_cached_and_loadable(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from segloss_d2.engine import get_segloss_cfg

    path = pretrained_weights(CONFIG, iters=2, seed=1, cache_dir=str(tmp_path))
    assert os.path.isfile(path) and path.startswith(str(tmp_path))
    mtime = os.path.getmtime(path)
    assert pretrained_weights(CONFIG, iters=2, seed=1, cache_dir=str(tmp_path)) == path
    assert os.path.getmtime(path) == mtime  # reused, not retrained
    other = pretrained_weights(CONFIG, iters=3, seed=1, cache_dir=str(tmp_path))
    assert other != path  # another schedule is another cache entry

    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["pretrained_on"] == PRETRAIN_DATASET and saved["iterations"] == 2
    cfg = get_segloss_cfg()
    cfg.merge_from_file(CONFIG)
    model = build_model(cfg)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    DetectionCheckpointer(model).load(path)
    loaded = model.state_dict()
    assert set(saved["model"]) == set(loaded)  # every parameter and buffer, head included
    for k, v in saved["model"].items():
        torch.testing.assert_close(loaded[k], v)
    assert any(not torch.equal(fresh[k], loaded[k]) for k in fresh)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="iters must be an int >= 1, got 0"):
        pretrained_weights(CONFIG, iters=0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        pretrained_weights(CONFIG, seed=-1, cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config file"):
        pretrained_weights(str(tmp_path / "missing.yaml"), cache_dir=str(tmp_path))
