"""The pre-flight dataset check (``segloss_d2/data/catalog.py``) and where it runs: the trainer,
``tools/train_net.py`` and the search; detectron2's own registrations stay untouched."""
import ast
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from segloss_d2.data import (  # noqa: E402
    SPLITS,
    UnregisteredDatasetError,
    check_config_datasets,
    check_datasets,
)
from segloss_d2.data.builtin import BUILTIN_DATASET_CHECKS  # noqa: E402
from segloss_d2.data.catalog import SeglossLoader  # noqa: E402
from segloss_d2.data.shapes import VARIANT_SPLITS  # noqa: E402
from segloss_d2.engine import SegLossTrainer, get_segloss_cfg  # noqa: E402

from .._tools import load_tool  # noqa: E402
from ..search._tiny import REPO, TINY_OPTS, TINY_SEARCH_CONFIG  # noqa: E402

CITYSCAPES_TRAIN = "cityscapes_fine_sem_seg_train"



@pytest.fixture
def no_cityscapes(tmp_path, monkeypatch):
    """A working directory where detectron2's Cityscapes builtin finds no files; its image
    directory of the train split (as the error must name it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DETECTRON2_DATASETS", "/env/datasets/root")
    image_dir = MetadataCatalog.get(CITYSCAPES_TRAIN).image_dir
    if os.path.exists(image_dir):  # registered under an absolute root that holds the data
        pytest.skip(f"Cityscapes is installed at {image_dir}; nothing is missing")
    return os.path.abspath(image_dir)


def _assert_clear(message, name, path):
    assert f"Dataset '{name}'" in message and path in message, message
    assert "DETECTRON2_DATASETS" in message and "/env/datasets/root" in message, message
    assert "leftImg8bit/<split>" in message, message  # the expected layout


# ------------------------------------------------------------------ no side effects at import


@pytest.mark.slow
def test_importing_segloss_leaves_detectron2_registrations_untouched():
    code = (
        "import detectron2.data\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "before = {n: DatasetCatalog[n] for n in DatasetCatalog.list()}\n"
        "meta = {n: MetadataCatalog.get(n).as_dict() for n in before}\n"
        "import segloss_d2.engine\n"
        "changed = sorted(n for n in before if DatasetCatalog[n] is not before[n])\n"
        "meta_changed = sorted(n for n in before if MetadataCatalog.get(n).as_dict() != meta[n])\n"
        "print('CHANGED', changed, meta_changed)\n"
        "print('ADDED', sorted(set(DatasetCatalog.list()) - set(before)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines()
             if line.startswith(("CHANGED", "ADDED"))}
    assert lines["CHANGED"] == "[] []", proc.stdout
    added = ast.literal_eval(lines["ADDED"])
    assert set(added) == {"voc_2012_sem_seg_train_aug", "voc_2012_sem_seg_val", *SPLITS,
                          *VARIANT_SPLITS}


def test_builtin_loaders_are_detectron2s_own():
    for name in BUILTIN_DATASET_CHECKS:
        loader = DatasetCatalog[name]
        assert not isinstance(loader, SeglossLoader) and not hasattr(loader, "__wrapped__")
        assert loader.__module__.startswith("detectron2.data.datasets"), (name, loader)


# ------------------------------------------------------------------ check_datasets


def test_unregistered_dataset_is_named_with_its_key():
    with pytest.raises(UnregisteredDatasetError) as info:
        check_datasets(["segloss_shapes_val", "nope_sem_seg"], key="DATASETS.TEST")
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    message = str(info.value)
    assert message.startswith("DATASETS.TEST 'nope_sem_seg' is not a registered dataset"), message
    assert "'segloss_shapes_val'" in message  # the registered datasets are listed


def test_shapes_preflight_touches_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLOSS_CACHE", str(tmp_path / "cache"))
    check_datasets(sorted(SPLITS))
    check_datasets("segloss_shapes_val")  # one name as a str
    assert not (tmp_path / "cache").exists()


def test_check_config_datasets_keys(no_cityscapes):
    cfg = get_segloss_cfg()
    cfg.merge_from_list(["DATASETS.TRAIN", ("segloss_shapes_train",),
                         "DATASETS.TEST", ("segloss_shapes_val", CITYSCAPES_TRAIN)])
    assert cfg.SEARCH.HOLDOUT.DATASET == ""  # unset: skipped
    check_config_datasets(cfg, keys=("DATASETS.TRAIN", "SEARCH.HOLDOUT.DATASET", "NO.SUCH_KEY"))
    with pytest.raises(FileNotFoundError) as info:
        check_config_datasets(cfg)
    _assert_clear(str(info.value), CITYSCAPES_TRAIN, no_cityscapes)
    cfg.merge_from_list(["DATASETS.TEST", (), "SEARCH.HOLDOUT.DATASET", "no_such_val"])
    with pytest.raises(UnregisteredDatasetError, match="SEARCH.HOLDOUT.DATASET 'no_such_val'"):
        check_config_datasets(cfg)


# ------------------------------------------------------------------ where the pre-flight runs


def test_trainer_loaders_run_the_preflight(no_cityscapes):
    cfg = get_segloss_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "shapes", "tiny_deeplab_ce.yaml"))
    cfg.merge_from_list(["DATASETS.TRAIN", (CITYSCAPES_TRAIN,), "MODEL.DEVICE", "cpu"])
    with pytest.raises(FileNotFoundError) as info:
        SegLossTrainer.build_train_loader(cfg)
    _assert_clear(str(info.value), CITYSCAPES_TRAIN, no_cityscapes)
    with pytest.raises(FileNotFoundError) as info:
        SegLossTrainer.build_test_loader(cfg, CITYSCAPES_TRAIN)
    _assert_clear(str(info.value), CITYSCAPES_TRAIN, no_cityscapes)


@pytest.mark.parametrize("eval_only", [False, True])
def test_train_net_missing_cityscapes_is_one_clear_error_before_training(
        no_cityscapes, tmp_path, monkeypatch, eval_only):
    tool = load_tool("train_net")

    class NotBuilt:  # the check must stop main before any model or trainer is built
        def __init__(self, *args, **kwargs):
            raise AssertionError("the trainer was built")

        build_model = test = __init__

    monkeypatch.setattr(tool, "SegLossTrainer", NotBuilt)
    key = "DATASETS.TEST" if eval_only else "DATASETS.TRAIN"
    args = tool.default_argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, "configs", "shapes", "tiny_deeplab_ce.yaml")]
        + (["--eval-only"] if eval_only else [])
        + ["MODEL.DEVICE", "cpu", key, f"('{CITYSCAPES_TRAIN}',)", "OUTPUT_DIR",
           str(tmp_path / "out")])
    with pytest.raises(SystemExit) as e:
        tool.main(args)
    message = str(e.value)
    assert message.startswith(f"train_net.py: error: Dataset '{CITYSCAPES_TRAIN}': "), message
    assert "\n" not in message
    _assert_clear(message, CITYSCAPES_TRAIN, no_cityscapes)
    assert not os.path.exists(tmp_path / "out" / "model_final.pth")


def test_train_net_eval_only_does_not_need_the_training_data(tmp_path, monkeypatch):
    tool = load_tool("train_net")
    checked = []
    monkeypatch.setattr(tool, "check_config_datasets", lambda cfg, keys: checked.append(keys))
    monkeypatch.setattr(tool, "SegLossTrainer", type("T", (), {
        "build_model": staticmethod(lambda cfg: __import__("torch").nn.Linear(1, 1)),
        "test": staticmethod(lambda cfg, model: {})}))
    monkeypatch.setattr(tool, "DetectionCheckpointer", lambda *a, **k: type(
        "C", (), {"resume_or_load": lambda self, *a, **k: None})())
    args = tool.default_argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, "configs", "shapes", "tiny_deeplab_ce.yaml"),
         "--eval-only", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")])
    assert tool.main(args) == {}
    assert checked == [("DATASETS.TEST",)]


def test_search_refuses_missing_cityscapes_before_writing(no_cityscapes, tmp_path):
    tool = load_tool("search_net")
    out = tmp_path / "search"
    argv = ["--config-file", TINY_SEARCH_CONFIG] + [str(v) for v in TINY_OPTS + [
        "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{CITYSCAPES_TRAIN}',)",
        "OUTPUT_DIR", str(out)]]
    with pytest.raises(SystemExit) as e:
        tool.main(tool.argument_parser().parse_args(argv))
    message = str(e.value)
    assert message.startswith(f"search_net.py: error: Dataset '{CITYSCAPES_TRAIN}': "), message
    _assert_clear(message, CITYSCAPES_TRAIN, no_cityscapes)
    assert not out.exists() or os.listdir(out) == []
