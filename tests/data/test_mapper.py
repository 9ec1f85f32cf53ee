"""SemSegDatasetMapper: detectron2's mapping, plus named errors for bad files and label values."""
import pickle
import re

import pytest

pytest.importorskip("detectron2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetMapper  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from PIL import Image  # noqa: E402

from segloss_d2.data import CorruptFileError, SemSegDatasetMapper  # noqa: E402
from segloss_d2.engine import get_segloss_cfg  # noqa: E402

DATASET = "my_dataset_train"


def _files(tmp_path, shape=(24, 32), labels=None):
    rng = np.random.default_rng(0)
    image = tmp_path / "img.jpg"
    label = tmp_path / "lab.png"
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(image, quality=95)
    if labels is None:
        labels = rng.integers(0, 5, shape).astype(np.uint8)
        labels[0] = 255
    Image.fromarray(labels).save(label)
    return {"file_name": str(image), "sem_seg_file_name": str(label), "height": shape[0],
            "width": shape[1]}


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _mapper(**kwargs):
    args = dict(is_train=True, augmentations=[T.RandomFlip()], image_format="RGB", num_classes=5,
                ignore_label=255, dataset_names=[DATASET])
    args.update(kwargs)
    return SemSegDatasetMapper(**args)


def test_maps_like_detectron2(tmp_path):
    record = _files(tmp_path)
    for is_train in (True, False):
        ours = _mapper(is_train=is_train, augmentations=[])(dict(record))
        theirs = DatasetMapper(is_train=is_train, augmentations=[], image_format="RGB")(
            dict(record))
        assert ours.keys() == theirs.keys()
        assert torch.equal(ours["image"], theirs["image"])
        assert torch.equal(ours["sem_seg"], theirs["sem_seg"])


@pytest.mark.parametrize("which, kind", [("file_name", "image"), ("sem_seg_file_name", "label")])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.8])
def test_truncated_file_is_named(tmp_path, which, kind, keep):
    record = _files(tmp_path)
    _truncate(record[which], keep)
    with pytest.raises(OSError) as plain:  # what detectron2's mapper says: no file, no dataset
        DatasetMapper(is_train=True, augmentations=[], image_format="RGB")(dict(record))
    assert record[which] not in str(plain.value)
    with pytest.raises(CorruptFileError) as info:
        _mapper()(dict(record))
    message = str(info.value)
    assert f"Dataset '{DATASET}': cannot read {kind} file '{record[which]}'" in message
    assert "truncated" in message
    assert isinstance(info.value, OSError) and isinstance(info.value.__cause__, OSError)
    assert (info.value.dataset, info.value.path, info.value.kind) == (DATASET, record[which], kind)
    # it crosses process boundaries (data loader workers) intact
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == message


def test_missing_file_is_named(tmp_path):
    record = _files(tmp_path)
    (tmp_path / "lab.png").unlink()
    with pytest.raises(CorruptFileError, match=r"cannot read label file .*lab\.png.*missing"):
        _mapper(dataset_names=["a", "b"])(dict(record))
    with pytest.raises(CorruptFileError, match=re.escape("Dataset 'one of ['a', 'b']'")):
        _mapper(dataset_names=["a", "b"])(dict(record))


def test_other_errors_pass_through_unchanged(tmp_path):
    record = _files(tmp_path)
    record["height"] = 99  # detectron2's size check, not a file problem
    with pytest.raises(Exception) as theirs:
        DatasetMapper(is_train=True, augmentations=[], image_format="RGB")(dict(record))
    with pytest.raises(type(theirs.value)) as ours:
        _mapper()(dict(record))
    assert str(ours.value) == str(theirs.value)


def test_label_values_out_of_range_are_named(tmp_path):
    labels = np.zeros((24, 32), np.uint8)
    labels[3, 4], labels[5, 6:8], labels[0] = 7, 9, 255
    record = _files(tmp_path, labels=labels)
    pattern = (rf"Dataset '{DATASET}': label file '{re.escape(record['sem_seg_file_name'])}' "
               r"holds values \[7, 9\] \(3 pixels, .*outside \[0, 5\) that are not the ignore "
               r"value 255")
    with pytest.raises(ValueError, match=pattern):
        _mapper()(dict(record))
    _mapper(num_classes=10)(dict(record))  # in range for 10 classes
    _mapper(num_classes=None)(dict(record))  # no check asked
    with pytest.raises(ValueError, match="values \\[255\\]"):
        _mapper(num_classes=10, ignore_label=254)(dict(record))
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        _mapper(num_classes=0)


def test_from_config(tmp_path):
    cfg = get_segloss_cfg()
    cfg.merge_from_file("configs/shapes/Base-Tiny-DeepLabV3Plus.yaml")
    mapper = SemSegDatasetMapper(cfg, is_train=True, augmentations=[])
    assert mapper.num_classes == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert mapper.ignore_label == cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    assert mapper.dataset_names == tuple(cfg.DATASETS.TRAIN)
    assert list(mapper.augmentations.augs) == []  # the argument next to cfg wins
    test = SemSegDatasetMapper(cfg, is_train=False)
    assert test.dataset_names == tuple(cfg.DATASETS.TEST) and not test.is_train
    assert test.num_classes is None  # test-time labels are not the model's input: not checked


def test_error_keeps_type_and_names_the_file_through_loader_workers(tmp_path):
    from detectron2.data import build_detection_test_loader

    record = _files(tmp_path)
    _truncate(record["file_name"])
    loader = build_detection_test_loader(dataset=[record], mapper=_mapper(is_train=False),
                                         num_workers=1)
    with pytest.raises(CorruptFileError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "DataLoader worker" in message  # re-raised in this process, from the worker's
    assert f"Dataset '{DATASET}': cannot read image file '{record['file_name']}'" in message
