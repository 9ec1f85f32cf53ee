import pytest

pytest.importorskip("detectron2")

import json  # noqa: E402
import os  # noqa: E402
import uuid  # noqa: E402

import numpy as np  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import load_sem_seg  # noqa: E402
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from PIL import Image  # noqa: E402

from segloss_d2.data import (  # noqa: E402
    IGNORE_LABEL,
    SHAPES_CLASSES,
    SHAPES_COLORS,
    SPLITS,
    check_datasets,
    register_all_segloss_datasets,
    register_dataset_check,
    register_shapes,
    register_voc_sem_seg,
)
from segloss_d2.data.builtin import guard_builtin_dataset  # noqa: E402
from segloss_d2.data.voc import VOC_CLASSES, VOC_SPLITS, voc_palette  # noqa: E402

VOC_VAL_IDS = ["2007_000032", "2007_000039"]
VOC_TRAIN_IDS = ["2007_000121", "2007_000123"]
SBD_ONLY_IDS = ["2008_000002"]  # in train_aug.txt, labelled only in SegmentationClassAug
CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"]}


# ------------------------------------------------------------------ helpers / fixture trees


@pytest.fixture
def names():
    """Unique dataset names; whatever a test registers under them is removed afterwards."""
    created = []

    def make(prefix):
        created.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        return created[-1]

    yield make
    for name in created:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def _mapped_labels(dataset_dict):
    """sem_seg as detectron2's own test-time mapper produces it (reads labels with "L")."""
    mapper = DatasetMapper(is_train=False, augmentations=[], image_format="RGB")
    return mapper(dict(dataset_dict))["sem_seg"].numpy()


def _random_labels(rng, shape, num_classes):
    labels = rng.integers(0, num_classes, size=shape).astype(np.uint8)
    labels[0, :] = IGNORE_LABEL  # void, as on VOC object borders
    labels[1, :3] = [1, 15, num_classes - 1]  # luminance of these palette colours != their id
    return labels


def _write_rgb(path, rng, shape):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)).save(path)


def _write_palette_png(path, labels):
    image = Image.fromarray(labels, mode="P")
    image.putpalette([v for rgb in voc_palette() for v in rgb])
    image.save(path)


@pytest.fixture
def voc_tree(tmp_path):
    """Real VOC layout: ``<root>/VOCdevkit/VOC2012`` with palette SegmentationClass PNGs and
    single-channel SegmentationClassAug PNGs (as the common SBD release ships them)."""
    rng = np.random.default_rng(0)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ["JPEGImages", "SegmentationClass", "SegmentationClassAug",
                "ImageSets/Segmentation"]:
        (voc / sub).mkdir(parents=True)
    labels = {}
    for k, image_id in enumerate(VOC_VAL_IDS + VOC_TRAIN_IDS + SBD_ONLY_IDS):
        shape = (20 + 2 * k, 28 - k)  # VOC images differ in size
        _write_rgb(str(voc / "JPEGImages" / f"{image_id}.jpg"), rng, shape)
        labels[image_id] = _random_labels(rng, shape, len(VOC_CLASSES))
        if image_id not in SBD_ONLY_IDS:
            _write_palette_png(str(voc / "SegmentationClass" / f"{image_id}.png"), labels[image_id])
        if image_id not in VOC_VAL_IDS:
            Image.fromarray(labels[image_id]).save(voc / "SegmentationClassAug" / f"{image_id}.png")
    lists = {"val": VOC_VAL_IDS, "train": VOC_TRAIN_IDS, "train_aug": VOC_TRAIN_IDS + SBD_ONLY_IDS}
    for split, ids in lists.items():
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return tmp_path, labels


@pytest.fixture
def cityscapes_tree(tmp_path):
    """Real Cityscapes layout, with labelTrainIds as createTrainIdLabelImgs writes them."""
    rng = np.random.default_rng(1)
    root = tmp_path / "cityscapes"
    labels = {}
    for split, cities in CITIES.items():
        for city in cities:
            stem = f"{city}_000000_000019"
            _write_rgb(str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"),
                       rng, (16, 32))
            gt = root / "gtFine" / split / city
            gt.mkdir(parents=True)
            train_ids = _random_labels(rng, (16, 32), 19)
            Image.fromarray(train_ids).save(gt / f"{stem}_gtFine_labelTrainIds.png")
            Image.fromarray(train_ids + 7).save(gt / f"{stem}_gtFine_labelIds.png")
            instance_ids = np.zeros((16, 32), np.uint8)
            Image.fromarray(instance_ids).save(gt / f"{stem}_gtFine_instanceIds.png")
            (gt / f"{stem}_gtFine_polygons.json").write_text(
                json.dumps({"imgHeight": 16, "imgWidth": 32, "objects": []}))
            labels[stem] = train_ids
    return root, labels


def _register_cityscapes_like_builtin(name, root, split):
    """What detectron2's builtin registration does for ``cityscapes_fine_sem_seg_<split>``,
    under a test root and name; metadata copied from the builtin."""
    image_dir, gt_dir = str(root / "leftImg8bit" / split), str(root / "gtFine" / split)
    DatasetCatalog.register(name, lambda: load_cityscapes_semantic(image_dir, gt_dir))
    builtin = MetadataCatalog.get(f"cityscapes_fine_sem_seg_{split}").as_dict()
    builtin.update(image_dir=image_dir, gt_dir=gt_dir)
    builtin.pop("name")
    MetadataCatalog.get(name).set(**builtin)


def _assert_clear_error(excinfo, name, path):
    message = str(excinfo.value)
    assert name in message and os.path.abspath(str(path)) in message, message
    assert "DETECTRON2_DATASETS" in message and "/env/datasets/root" in message, message


# ------------------------------------------------------------------ PASCAL VOC


def test_voc_palette_colors():
    palette = voc_palette()
    assert len(palette) == 256 and len(set(palette)) == 256
    assert palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    assert palette[15] == (192, 128, 128)  # person
    assert palette[20] == (0, 64, 128)  # tvmonitor
    assert palette[255] == (224, 224, 192)  # void
    assert voc_palette(21) == palette[:21]
    with pytest.raises(ValueError, match="num_colors"):
        voc_palette(257)


def test_voc_val_palette_labels_give_class_ids_through_dataset_mapper(voc_tree, names):
    root, labels = voc_tree
    name = names("test_voc_val")
    register_voc_sem_seg(name, str(root), "val")
    dicts = DatasetCatalog.get(name)
    voc = root / "VOCdevkit" / "VOC2012"
    assert [d["image_id"] for d in dicts] == VOC_VAL_IDS
    for d, image_id in zip(dicts, VOC_VAL_IDS):
        assert d["file_name"] == str(voc / "JPEGImages" / f"{image_id}.jpg")
        assert d["sem_seg_file_name"] == str(voc / "SegmentationClassRaw" / f"{image_id}.png")
        original = str(voc / "SegmentationClass" / f"{image_id}.png")
        assert Image.open(original).mode == "P"
        # The bug being handled: reading the palette PNG as "L" gives luminance, not ids.
        assert not np.array_equal(read_image(original, "L")[..., 0], labels[image_id])
        assert np.array_equal(_mapped_labels(d), labels[image_id])


def test_voc_train_aug_uses_index_pngs_in_place(voc_tree, names):
    root, labels = voc_tree
    name = names("test_voc_train_aug")
    register_voc_sem_seg(name, str(root), "train_aug")
    dicts = DatasetCatalog.get(name)
    aug = root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    assert [d["image_id"] for d in dicts] == VOC_TRAIN_IDS + SBD_ONLY_IDS
    for d in dicts:
        assert d["sem_seg_file_name"] == str(aug / f"{d['image_id']}.png")
        assert np.array_equal(_mapped_labels(d), labels[d["image_id"]])
    assert not (root / "VOCdevkit" / "VOC2012" / "SegmentationClassAugRaw").exists()


def test_voc_metadata(voc_tree, names):
    root, _ = voc_tree
    name = names("test_voc_meta")
    register_voc_sem_seg(name, str(root), "val")
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == list(VOC_CLASSES) and len(meta.stuff_classes) == 21
    assert meta.stuff_classes[:2] == ["background", "aeroplane"]
    assert meta.stuff_colors == [list(c) for c in voc_palette()[:21]]
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert meta.image_root == os.path.join(str(root), "VOCdevkit", "VOC2012", "JPEGImages")


def test_voc_conversion_is_done_once_and_refreshed_when_labels_change(voc_tree, names):
    root, labels = voc_tree
    name = names("test_voc_once")
    register_voc_sem_seg(name, str(root), "val")
    first = DatasetCatalog.get(name)
    stamps = [os.stat(d["sem_seg_file_name"]).st_mtime_ns for d in first]
    assert DatasetCatalog.get(name) == first
    assert [os.stat(d["sem_seg_file_name"]).st_mtime_ns for d in first] == stamps

    source = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_VAL_IDS[0]}.png"
    changed = np.where(labels[VOC_VAL_IDS[0]] == 255, 255, 3).astype(np.uint8)
    _write_palette_png(str(source), changed)
    later = os.stat(first[0]["sem_seg_file_name"]).st_mtime + 10
    os.utime(source, (later, later))
    again = DatasetCatalog.get(name)
    assert np.array_equal(_mapped_labels(again[0]), changed)
    assert os.stat(again[1]["sem_seg_file_name"]).st_mtime_ns == stamps[1]


def test_voc_conversion_falls_back_to_user_cache(voc_tree, names, tmp_path, monkeypatch):
    root, labels = voc_tree
    blocked = root / "VOCdevkit" / "VOC2012" / "SegmentationClassRaw"
    blocked.write_text("not a directory")  # blocks the next-to-data cache, even for root
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    name = names("test_voc_fallback")
    register_voc_sem_seg(name, str(root), "val")
    dicts = DatasetCatalog.get(name)
    cache = str(tmp_path / "home" / ".cache" / "segloss_d2" / "voc_labels")
    for d in dicts:
        assert d["sem_seg_file_name"].startswith(cache + os.sep)
        assert np.array_equal(_mapped_labels(d), labels[d["image_id"]])


@pytest.mark.parametrize("missing", [
    "VOCdevkit/VOC2012",
    "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt",
    "VOCdevkit/VOC2012/JPEGImages",
    "VOCdevkit/VOC2012/SegmentationClass",
    f"VOCdevkit/VOC2012/SegmentationClass/{VOC_VAL_IDS[1]}.png",
    f"VOCdevkit/VOC2012/JPEGImages/{VOC_VAL_IDS[0]}.jpg",
])
@pytest.mark.parametrize("trigger", ["preflight", "loader"])
def test_voc_missing_files_raise_clear_error(voc_tree, names, monkeypatch, missing, trigger):
    import shutil

    root, _ = voc_tree
    path = root / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    monkeypatch.setenv("DETECTRON2_DATASETS", "/env/datasets/root")
    name = names("test_voc_missing")
    register_voc_sem_seg(name, str(root), "val")  # registering never touches the files
    with pytest.raises(FileNotFoundError) as excinfo:
        check_datasets([name]) if trigger == "preflight" else DatasetCatalog.get(name)
    _assert_clear_error(excinfo, name, path)
    assert "VOCdevkit/VOC2012" in str(excinfo.value)  # the layout hint
    assert not (root / "VOCdevkit" / "VOC2012" / "SegmentationClassRaw").exists()


def test_voc_preflight_passes_without_converting(voc_tree, names):
    root, _ = voc_tree
    name = names("test_voc_preflight")
    register_voc_sem_seg(name, str(root), "val")
    check_datasets([name, name])
    assert not (root / "VOCdevkit" / "VOC2012" / "SegmentationClassRaw").exists()


def test_register_voc_idempotent_and_rejects_foreign_names(voc_tree, names):
    root, _ = voc_tree
    name = names("test_voc_idem")
    register_voc_sem_seg(name, str(root), "val")
    loader = DatasetCatalog[name]
    register_voc_sem_seg(name, str(root), "val")
    assert DatasetCatalog[name] is loader
    register_voc_sem_seg(name, str(root), "train")  # our own entry: replaced, metadata too
    assert [d["image_id"] for d in DatasetCatalog.get(name)] == VOC_TRAIN_IDS
    foreign = names("test_foreign")
    DatasetCatalog.register(foreign, lambda: [])
    with pytest.raises(ValueError, match="already registered"):
        register_voc_sem_seg(foreign, str(root), "val")
    with pytest.raises(ValueError, match="split"):
        register_voc_sem_seg(names("test_voc_bad"), str(root), "test")


def test_voc_root_with_tilde(voc_tree, names, monkeypatch):
    root, _ = voc_tree
    monkeypatch.setenv("HOME", str(root))
    name = names("test_voc_home")
    register_voc_sem_seg(name, "~", "val")
    assert MetadataCatalog.get(name).image_root.startswith(str(root) + os.sep)
    assert [d["image_id"] for d in DatasetCatalog.get(name)] == VOC_VAL_IDS


def test_register_all_under_another_root(voc_tree, tmp_path):
    root, labels = voc_tree
    val_name = "voc_2012_sem_seg_val"
    image_root = MetadataCatalog.get(val_name).image_root
    import_root = os.path.dirname(os.path.dirname(os.path.dirname(image_root)))
    before = {name: DatasetCatalog[name] for name in DatasetCatalog.list()}
    try:
        register_all_segloss_datasets(str(tmp_path / "nowhere"))  # cheap: no file access
        assert not (tmp_path / "nowhere").exists()
        with pytest.raises(FileNotFoundError, match="nowhere"):
            DatasetCatalog.get(val_name)
        register_all_segloss_datasets(str(root))
        register_all_segloss_datasets(str(root))
        assert set(DatasetCatalog.list()) == set(before)
        changed = {n for n in before if DatasetCatalog[n] is not before[n]}
        assert changed == set(VOC_SPLITS), "only the VOC entries follow the root"
        dicts = DatasetCatalog.get(val_name)
        assert [d["image_id"] for d in dicts] == VOC_VAL_IDS
        assert np.array_equal(_mapped_labels(dicts[1]), labels[VOC_VAL_IDS[1]])
        assert MetadataCatalog.get(val_name).image_root.startswith(str(root))
        train_aug = DatasetCatalog.get("voc_2012_sem_seg_train_aug")
        assert [d["image_id"] for d in train_aug] == VOC_TRAIN_IDS + SBD_ONLY_IDS
    finally:
        register_all_segloss_datasets(import_root)
    assert MetadataCatalog.get(val_name).image_root == image_root


# ------------------------------------------------------------------ Cityscapes / ADE20K builtins


def test_cityscapes_fixture_passes_the_preflight_and_loads_through_builtin_loader(
        cityscapes_tree, names):
    root, labels = cityscapes_tree
    name = names("test_cityscapes_train")
    _register_cityscapes_like_builtin(name, root, "train")
    loader = DatasetCatalog[name]
    register_dataset_check(name, "cityscapes_sem_seg")
    register_dataset_check(name, "cityscapes_sem_seg")  # idempotent
    check_datasets([name])
    assert DatasetCatalog[name] is loader  # the check is no wrapper
    dicts = sorted(DatasetCatalog.get(name), key=lambda d: d["file_name"])
    assert len(dicts) == 2
    for d, city in zip(dicts, CITIES["train"]):
        stem = f"{city}_000000_000019"
        assert d["file_name"] == str(root / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png")
        assert d["sem_seg_file_name"].endswith(f"{city}/{stem}_gtFine_labelTrainIds.png")
        assert (d["height"], d["width"]) == (16, 32)
        assert np.array_equal(_mapped_labels(d), labels[stem])
    meta = MetadataCatalog.get(name)
    assert len(meta.stuff_classes) == 19 and meta.ignore_label == 255


@pytest.mark.parametrize("missing,hint", [
    ("leftImg8bit/val", "leftImg8bit/<split>"),
    ("gtFine/val", "gtFine/<split>"),
    ("gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png",
     "createTrainIdLabelImgs"),
])
def test_cityscapes_missing_files_raise_clear_error(cityscapes_tree, names, monkeypatch, missing,
                                                    hint):
    import shutil

    root, _ = cityscapes_tree
    path = root / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    monkeypatch.setenv("DETECTRON2_DATASETS", "/env/datasets/root")
    name = names("test_cityscapes_val")
    _register_cityscapes_like_builtin(name, root, "val")
    register_dataset_check(name, "cityscapes_sem_seg")
    with pytest.raises(FileNotFoundError) as excinfo:
        check_datasets([name])
    _assert_clear_error(excinfo, name, path)
    assert hint in str(excinfo.value)


def test_ade20k_fixture_and_missing_annotations(tmp_path, names, monkeypatch):
    rng = np.random.default_rng(2)
    root = tmp_path / "ADEChallengeData2016"
    image_dir = root / "images" / "validation"
    gt_dir = root / "annotations_detectron2" / "validation"
    gt_dir.mkdir(parents=True)
    _write_rgb(str(image_dir / "ADE_val_00000001.jpg"), rng, (12, 18))
    labels = _random_labels(rng, (12, 18), 150)
    Image.fromarray(labels).save(gt_dir / "ADE_val_00000001.png")
    name = names("test_ade20k_val")
    DatasetCatalog.register(name, lambda: load_sem_seg(str(gt_dir), str(image_dir), "png", "jpg"))
    MetadataCatalog.get(name).set(image_root=str(image_dir), sem_seg_root=str(gt_dir),
                                  evaluator_type="sem_seg", ignore_label=255)
    register_dataset_check(name, "ade20k_sem_seg")
    check_datasets([name])
    (d,) = DatasetCatalog.get(name)
    assert d["file_name"] == str(image_dir / "ADE_val_00000001.jpg")
    assert np.array_equal(_mapped_labels(d), labels)

    (gt_dir / "ADE_val_00000001.png").unlink()  # empty annotation directory
    monkeypatch.setenv("DETECTRON2_DATASETS", "/env/datasets/root")
    with pytest.raises(FileNotFoundError) as excinfo:
        check_datasets([name])
    _assert_clear_error(excinfo, name, gt_dir)
    assert "prepare_ade20k_sem_seg.py" in str(excinfo.value)


def test_builtins_keep_their_metadata_and_check_their_registered_paths(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/env/datasets/root")
    for name, key in [("cityscapes_fine_sem_seg_val", "image_dir"),
                      ("ade20k_sem_seg_val", "image_root")]:
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type in ("cityscapes_sem_seg", "sem_seg") and meta.ignore_label == 255
        path = meta.get(key)
        if os.path.isdir(path):
            continue  # a real dataset lives there; nothing to check without loading it
        with pytest.raises(FileNotFoundError) as excinfo:
            check_datasets([name])
        _assert_clear_error(excinfo, name, path)


def test_guard_builtin_dataset_arguments(cityscapes_tree, names):
    with pytest.raises(ValueError, match="kind"):
        guard_builtin_dataset("cityscapes_fine_sem_seg_val", "cityscapes")
    with pytest.raises(ValueError, match="kind"):
        register_dataset_check("cityscapes_fine_sem_seg_val", "cityscapes")
    assert guard_builtin_dataset("no_such_dataset_" + uuid.uuid4().hex, "ade20k_sem_seg") is False
    # the former name now only registers the pre-flight check; the loader stays as registered
    root, _ = cityscapes_tree
    name = names("test_cityscapes_guard")
    _register_cityscapes_like_builtin(name, root, "val")
    loader = DatasetCatalog[name]
    city = root / "leftImg8bit" / "val" / "frankfurt"
    (city / "frankfurt_000000_000019_leftImg8bit.png").unlink()
    assert guard_builtin_dataset(name, "cityscapes_sem_seg") is True
    assert DatasetCatalog[name] is loader
    with pytest.raises(FileNotFoundError, match="leftImg8bit.png"):
        check_datasets([name])


# ------------------------------------------------------------------ segloss_shapes


def test_shapes_builtin_val_generated_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGLOSS_CACHE", str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()
    dicts = DatasetCatalog.get("segloss_shapes_val")
    split, num_images, _ = SPLITS["segloss_shapes_val"]
    assert len(dicts) == num_images
    assert all(d["sem_seg_file_name"].startswith(str(tmp_path / "cache" / split)) for d in dicts)
    sem_seg = _mapped_labels(dicts[0])
    assert sem_seg.shape == (dicts[0]["height"], dicts[0]["width"])
    assert set(np.unique(sem_seg)) <= set(range(len(SHAPES_CLASSES))) | {IGNORE_LABEL}
    assert len(np.unique(sem_seg)) >= 3
    assert not (tmp_path / "cache" / SPLITS["segloss_shapes_train"][0]).exists()


@pytest.mark.slow
def test_hires_variant_is_registered_and_generated_on_first_use(tmp_path, monkeypatch):
    from segloss_d2.data.shapes import VARIANT_SPLITS

    monkeypatch.setenv("SEGLOSS_CACHE", str(tmp_path / "cache"))
    split, num_images, _, (height, width), _ = VARIANT_SPLITS["segloss_shapes_hires_val"]
    assert not (tmp_path / "cache").exists()
    dicts = DatasetCatalog.get("segloss_shapes_hires_val")
    assert len(dicts) == num_images and (dicts[0]["height"], dicts[0]["width"]) == (height, width)
    assert all(d["sem_seg_file_name"].startswith(str(tmp_path / "cache" / split)) for d in dicts)
    assert _mapped_labels(dicts[0]).shape == (height, width)
    assert MetadataCatalog.get("segloss_shapes_hires_train").stuff_classes == list(SHAPES_CLASSES)
    assert sorted(os.listdir(tmp_path / "cache")) == [split]  # only what was asked for


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_shapes_metadata(name):
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == list(SHAPES_CLASSES)
    assert meta.stuff_colors == [list(c) for c in SHAPES_COLORS]
    assert meta.ignore_label == IGNORE_LABEL and meta.evaluator_type == "sem_seg"


def test_register_shapes_under_a_root(tmp_path, names):
    name = names("test_shapes")
    register_shapes(name, "tiny", 3, seed=5, root=str(tmp_path), image_size=(32, 40))
    loader = DatasetCatalog[name]
    register_shapes(name, "tiny", 3, seed=5, root=str(tmp_path), image_size=(32, 40))
    assert DatasetCatalog[name] is loader
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == ["tiny_00000", "tiny_00001", "tiny_00002"]
    assert all((d["height"], d["width"]) == (32, 40) for d in dicts)
    assert _mapped_labels(dicts[2]).shape == (32, 40)
    assert MetadataCatalog.get(name).stuff_classes == list(SHAPES_CLASSES)


@pytest.mark.parametrize("position", [0, 1])  # the first label (mode probe) or a later one
def test_voc_truncated_palette_label_is_named(voc_tree, names, position):
    from segloss_d2.data import CorruptFileError

    root, _ = voc_tree
    path = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_VAL_IDS[position]}.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    name = names("test_voc_truncated")
    register_voc_sem_seg(name, str(root), "val")
    with pytest.raises(CorruptFileError) as info:
        DatasetCatalog.get(name)
    message = str(info.value)
    assert f"Dataset '{name}': cannot read label file '{path}'" in message, message
    assert "truncated" in message and isinstance(info.value.__cause__, OSError)
    # the conversion resumes once the file is restored
    _write_palette_png(str(path), _random_labels(np.random.default_rng(5), (12, 9),
                                                 len(VOC_CLASSES)))
    assert len(DatasetCatalog.get(name)) == len(VOC_VAL_IDS)
