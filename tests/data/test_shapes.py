import json
import os

import cv2
import numpy as np
import pytest

from segloss_d2.data.shapes import (
    DEFAULT_IMAGE_SIZE,
    IGNORE_LABEL,
    SHAPES_CLASSES,
    SHAPES_COLORS,
    SPLITS,
    THIN_CLASSES,
    generate_shapes_dataset,
    render_shapes_scene,
    shapes_cache_dir,
)

WIRE = SHAPES_CLASSES.index("wire")


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _all_files(root):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


@pytest.fixture(scope="module")
def scenes():
    return [render_shapes_scene(0, i) for i in range(80)]


def test_constants_consistent():
    assert len(SHAPES_COLORS) == len(SHAPES_CLASSES)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in SHAPES_COLORS)
    assert SHAPES_CLASSES[0] == "background" and IGNORE_LABEL >= len(SHAPES_CLASSES)
    assert set(THIN_CLASSES) < set(range(1, len(SHAPES_CLASSES)))
    assert set(SPLITS) == {"segloss_shapes_train", "segloss_shapes_val", "segloss_shapes_pretrain"}
    seeds = [seed for _, _, seed in SPLITS.values()]
    assert len(set(seeds)) == len(seeds), "train and val must not be the same scenes"


def test_scene_dtypes_and_label_values(scenes):
    allowed = set(range(len(SHAPES_CLASSES))) | {IGNORE_LABEL}
    for image, label in scenes[:20]:
        assert image.shape == (*DEFAULT_IMAGE_SIZE, 3) and image.dtype == np.uint8
        assert label.shape == DEFAULT_IMAGE_SIZE and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) <= allowed


def test_scene_deterministic_per_seed_and_index():
    image, label = render_shapes_scene(3, 7)
    again_image, again_label = render_shapes_scene(3, 7)
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)
    for other in (render_shapes_scene(4, 7), render_shapes_scene(3, 8)):
        assert not np.array_equal(label, other[1])
        assert not np.array_equal(image, other[0])


def test_class_imbalance_and_thin_structures(scenes):
    labels = np.stack([label for _, label in scenes])
    counts = np.bincount(labels.ravel(), minlength=256)
    valid = counts[: len(SHAPES_CLASSES)].sum()
    frac = counts[: len(SHAPES_CLASSES)] / valid
    assert (counts[: len(SHAPES_CLASSES)] > 0).all(), f"a class never appears: {counts[:7]}"
    assert frac[0] > 0.6, f"background should dominate, got {frac[0]:.3f}"
    assert 0 < frac[WIRE] < 0.03 and frac[WIRE] == frac.min(), f"wire should be rarest: {frac}"
    assert 0 < counts[IGNORE_LABEL] < 0.1 * labels.size
    # Thin: most wire pixels are on the wire's boundary (have a non-wire 8-neighbour).
    wire = (labels == WIRE).astype(np.uint8)
    interior = np.stack([cv2.erode(w, np.ones((3, 3), np.uint8), borderValue=1) for w in wire])
    assert (wire & ~interior.astype(bool)).sum() > 0.6 * wire.sum()
    # Many boundaries: several classes per image, on average.
    per_image = [(np.bincount(label.ravel(), minlength=256)[1:7] > 0).sum() for label in labels]
    assert np.mean(per_image) >= 3


def test_not_colour_thresholdable(scenes):
    """A nearest-class-mean colour classifier must be poor (colour distributions overlap)."""
    pixels = np.concatenate([image.reshape(-1, 3) for image, _ in scenes]).astype(np.float32)
    labels = np.concatenate([label.ravel() for _, label in scenes])
    valid = labels != IGNORE_LABEL
    pixels, labels = pixels[valid], labels[valid]
    fit = np.arange(len(labels)) < len(labels) // 2
    means = np.stack([pixels[fit & (labels == c)].mean(0) for c in range(len(SHAPES_CLASSES))])
    pred = ((pixels[~fit, None] - means[None]) ** 2).sum(-1).argmin(1)
    gt = labels[~fit]
    ious = [((pred == c) & (gt == c)).sum() / ((pred == c) | (gt == c)).sum()
            for c in range(len(SHAPES_CLASSES))]
    assert np.mean(ious) < 0.4, f"colour alone gives mIoU {np.mean(ious):.3f}"


def test_ignore_width_zero_disables_void():
    labels = [render_shapes_scene(0, i, ignore_width=0)[1] for i in range(20)]
    assert not any((label == IGNORE_LABEL).any() for label in labels)
    banded = [render_shapes_scene(0, i, ignore_width=2)[1] for i in range(20)]
    assert any((label == IGNORE_LABEL).any() for label in banded)


def test_generate_files_and_dicts(tmp_path):
    dicts = generate_shapes_dataset(tmp_path, "val", 4, image_size=(48, 64), seed=5)
    assert [d["image_id"] for d in dicts] == [f"val_{i:05d}" for i in range(4)]
    for i, d in enumerate(dicts):
        assert set(d) == {"file_name", "sem_seg_file_name", "height", "width", "image_id"}
        assert (d["height"], d["width"]) == (48, 64)
        assert d["file_name"] == str(tmp_path / "val" / "images" / f"{i:05d}.png")
        image = cv2.cvtColor(cv2.imread(d["file_name"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        label = cv2.imread(d["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
        expected_image, expected_label = render_shapes_scene(5, i, (48, 64))
        assert np.array_equal(image, expected_image) and np.array_equal(label, expected_label)
    manifest = json.loads((tmp_path / "val" / "manifest.json").read_text())
    assert (manifest["seed"], manifest["num_images"], manifest["image_size"]) == (5, 4, [48, 64])
    assert sorted(os.listdir(tmp_path)) == ["val"], "temporary directories must be cleaned up"


def test_generation_is_deterministic_and_count_independent(tmp_path):
    a = generate_shapes_dataset(tmp_path / "a", "train", 3, seed=11)
    b = generate_shapes_dataset(tmp_path / "b", "train", 5, seed=11)
    c = generate_shapes_dataset(tmp_path / "c", "train", 3, seed=12)
    for da, db, dc in zip(a, b, c):
        for key in ("file_name", "sem_seg_file_name"):
            assert _read_bytes(da[key]) == _read_bytes(db[key])
            assert _read_bytes(da[key]) != _read_bytes(dc[key])


def test_second_call_writes_nothing(tmp_path):
    first = generate_shapes_dataset(tmp_path, "train", 3, seed=0)
    stamps = {p: os.stat(p).st_mtime_ns for p in _all_files(tmp_path)}
    second = generate_shapes_dataset(str(tmp_path), "train", 3, seed=0)
    assert second == first
    assert {p: os.stat(p).st_mtime_ns for p in _all_files(tmp_path)} == stamps


@pytest.mark.parametrize("damage", ["missing_label", "corrupt_manifest", "no_manifest", "file"])
def test_partial_or_corrupt_split_is_regenerated(tmp_path, damage):
    dicts = generate_shapes_dataset(tmp_path, "train", 3, seed=0)
    reference = [_read_bytes(d["sem_seg_file_name"]) for d in dicts]
    split_dir = tmp_path / "train"
    if damage == "missing_label":
        os.remove(dicts[1]["sem_seg_file_name"])
    elif damage == "corrupt_manifest":
        (split_dir / "manifest.json").write_text("{not json")
    elif damage == "no_manifest":
        os.remove(split_dir / "manifest.json")
        (split_dir / "images" / "00000.png").write_bytes(b"truncated")
    else:
        for path in _all_files(split_dir):
            os.remove(path)
        for sub in ("images", "labels", ""):
            os.rmdir(split_dir / sub)
        split_dir.write_text("not a directory")
    again = generate_shapes_dataset(tmp_path, "train", 3, seed=0)
    assert [_read_bytes(d["sem_seg_file_name"]) for d in again] == reference
    assert _read_bytes(again[0]["file_name"]) != b"truncated"
    assert json.loads((split_dir / "manifest.json").read_text())["num_images"] == 3


def test_changed_parameters_replace_the_split(tmp_path):
    generate_shapes_dataset(tmp_path, "train", 5, seed=0)
    dicts = generate_shapes_dataset(tmp_path, "train", 2, seed=1, image_size=(40, 40))
    assert sorted(os.listdir(tmp_path / "train" / "labels")) == ["00000.png", "00001.png"]
    label = cv2.imread(dicts[0]["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label, render_shapes_scene(1, 0, (40, 40))[1])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"split": "../x"}, ValueError),
        ({"split": ""}, ValueError),
        ({"num_images": 0}, ValueError),
        ({"num_images": 2.0}, TypeError),
        ({"seed": -1}, ValueError),
        ({"image_size": (16, 64)}, ValueError),
        ({"image_size": 64}, ValueError),
        ({"ignore_width": True}, TypeError),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error):
    args = {"split": "train", "num_images": 1, **kwargs}
    with pytest.raises(error, match=next(iter(kwargs))):
        generate_shapes_dataset(tmp_path, **args)
    assert not os.listdir(tmp_path)


def test_shapes_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGLOSS_CACHE", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert shapes_cache_dir() == str(tmp_path / ".cache" / "segloss_d2" / "segloss_shapes")
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert shapes_cache_dir() == os.path.join("/data/d2", "segloss_shapes")
    monkeypatch.setenv("SEGLOSS_CACHE", "/cache/shapes")
    assert shapes_cache_dir() == "/cache/shapes"


# ------------------------------------------------------------------ the second dataset: other mix


def test_boundary_mix_has_other_class_frequencies_and_is_deterministic():
    from segloss_d2.data.shapes import MIXES, VARIANT_SPLITS

    assert set(MIXES) >= {"default", "boundary"}
    split, n, seed, size, mix = VARIANT_SPLITS["segloss_shapes_hires_train"]
    assert size == (192, 256) and mix == "boundary"
    default = np.zeros(len(SHAPES_CLASSES))
    shifted = np.zeros(len(SHAPES_CLASSES))
    for i in range(30):
        default += np.bincount(render_shapes_scene(seed, i, size)[1].ravel(),
                               minlength=256)[:len(SHAPES_CLASSES)]
        shifted += np.bincount(render_shapes_scene(seed, i, size, mix=mix)[1].ravel(),
                               minlength=256)[:len(SHAPES_CLASSES)]
    default, shifted = default / default.sum(), shifted / shifted.sum()
    thin = list(THIN_CLASSES)
    assert shifted[thin].sum() > 1.5 * default[thin].sum()  # more thin structures
    a, b = (render_shapes_scene(seed, 4, size, mix=mix) for _ in range(2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="mix must be one of"):
        render_shapes_scene(seed, 0, size, mix="sparse")


def test_mix_is_part_of_the_manifest_but_the_default_manifest_is_unchanged(tmp_path):
    generate_shapes_dataset(str(tmp_path), "d", 2, image_size=(32, 40), seed=1)
    with open(tmp_path / "d" / "manifest.json") as f:
        assert "mix" not in json.load(f)
    dicts = generate_shapes_dataset(str(tmp_path), "d", 2, image_size=(32, 40), seed=1,
                                    mix="boundary")  # regenerated: other scenes
    with open(tmp_path / "d" / "manifest.json") as f:
        assert json.load(f)["mix"] == "boundary"
    label = cv2.imread(dicts[0]["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label, render_shapes_scene(1, 0, (32, 40), mix="boundary")[1])
