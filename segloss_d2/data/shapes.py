"""``segloss_shapes``: a small procedural semantic-segmentation dataset, generated on first use.

Core module (numpy + OpenCV only; no detectron2). Each scene is a textured, noisy background with
several occluding objects of six classes, among them thin structures, so that boundary metrics (BF1,
BIoU) and region metrics (mIoU) rank predictions differently, as they do on real data:

====  ==========  =====================================================================
 id   class       shape
====  ==========  =====================================================================
 0    background  gradient + low-frequency noise + faint distractor patches
 1    disc        filled ellipse, radially shaded
 2    box         filled rotated rectangle, hatched texture
 3    ring        elliptical annulus, 3-5 px wide
 4    wire        curved polyline, 1 or 3 px wide (thin, rare)
 5    blob        star-shaped polygon with wiggly contour, speckled texture
 6    stripes     3-5 px bars with gaps, clipped to a rotated region (many boundaries)
====  ==========  =====================================================================

Per-class colours overlap partially (instance colour = class mean + large jitter, per-image
colour cast, background colours drawn from the whole range), images are blurred and noisy, and about
half of the disc/box/blob contours carry a thin ``IGNORE_LABEL`` (255) band straddling the contour,
like the void borders of PASCAL VOC.

Typical use (what the detectron2 registration in ``segloss_d2/data/shapes_catalog.py`` builds on)::

    for name, (split, num_images, seed) in SPLITS.items():
        DatasetCatalog.register(name, lambda s=split, n=num_images, sd=seed:
                                generate_shapes_dataset(shapes_cache_dir(), s, n, seed=sd))
        MetadataCatalog.get(name).set(stuff_classes=list(SHAPES_CLASSES),
                                      stuff_colors=[list(c) for c in SHAPES_COLORS],
                                      ignore_label=IGNORE_LABEL, evaluator_type="sem_seg")
"""
import json
import os
import shutil
import uuid

import cv2
import numpy as np

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_COLORS",
    "THIN_CLASSES",
    "IGNORE_LABEL",
    "SPLITS",
    "VARIANT_SPLITS",
    "MIXES",
    "DEFAULT_IMAGE_SIZE",
    "GENERATOR_VERSION",
    "shapes_cache_dir",
    "render_shapes_scene",
    "generate_shapes_dataset",
]

SHAPES_CLASSES = ("background", "disc", "box", "ring", "wire", "blob", "stripes")
"""Class names; the index is the class id stored in the label PNGs."""

SHAPES_COLORS = (
    (0, 0, 0), (220, 60, 60), (60, 110, 220), (230, 200, 40),
    (250, 250, 250), (60, 190, 80), (180, 80, 200),
)
"""RGB visualization colour per class (not the colours the images are rendered with)."""

THIN_CLASSES = (3, 4, 6)
"""Class ids whose objects are at most a few pixels wide (ring, wire, stripes)."""

IGNORE_LABEL = 255
"""Label value of the void band around some object contours; excluded from every metric."""

DEFAULT_IMAGE_SIZE = (96, 128)
"""Default (height, width) of the generated images."""

SPLITS = {
    "segloss_shapes_train": ("train", 400, 0),
    "segloss_shapes_val": ("val", 100, 1),
    # Other scenes of the same world, the toy's "ImageNet": pretraining of the search proxies'
    # and the retrained models' initial weights (segloss_d2.pretrain), never evaluated on.
    "segloss_shapes_pretrain": ("pretrain", 400, 2),
}
"""Registered dataset name -> (split directory, number of images, seed)."""

MIXES = {
    # 3-6 area objects drawn uniformly among disc, box, ring, blob, stripes, and 0-3 wires.
    "default": {"objects": (3, 7), "class_p": None, "wires": (0, 4)},
    # More and thinner structures: rings and stripes dominate, more wires, fewer discs and boxes.
    "boundary": {"objects": (4, 10), "class_p": (0.10, 0.10, 0.30, 0.15, 0.35), "wires": (1, 6)},
}
"""Scene compositions (``mix`` of :func:`render_shapes_scene`): ``objects`` and ``wires`` are
[low, high) ranges of the number of area objects and wires, ``class_p`` the probabilities of
disc, box, ring, blob and stripes (None = uniform)."""

VARIANT_SPLITS = {
    # A second dataset no search has seen: twice the resolution, the "boundary" class mix.
    "segloss_shapes_hires_train": ("hires_train", 300, 3, (192, 256), "boundary"),
    "segloss_shapes_hires_val": ("hires_val", 100, 4, (192, 256), "boundary"),
}
"""Registered dataset name -> (split directory, number of images, seed, (height, width), mix)."""

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so that stale caches are regenerated."""

_DISC, _BOX, _RING, _WIRE, _BLOB, _STRIPES = range(1, 7)
_BANDED_CLASSES = (_DISC, _BOX, _BLOB)
_IGNORE_BAND_PROB = 0.5
# Mean RGB rendering colour per object class; instance colours add N(0, 40) per channel.
_CLASS_MEAN_RGB = {
    _DISC: (190, 80, 70), _BOX: (80, 110, 190), _RING: (200, 170, 70),
    _WIRE: (70, 60, 50), _BLOB: (100, 160, 90), _STRIPES: (160, 90, 160),
}
_MIN_SIDE = 32
_MIN_CONTRAST = 50.0


def shapes_cache_dir():
    """Default root directory of the generated dataset.

    Returns:
        str: ``$SEGLOSS_CACHE`` if set, else ``$DETECTRON2_DATASETS/segloss_shapes`` if set,
        else ``~/.cache/segloss_d2/segloss_shapes``.
    """
    if os.environ.get("SEGLOSS_CACHE"):
        return os.environ["SEGLOSS_CACHE"]
    if os.environ.get("DETECTRON2_DATASETS"):
        return os.path.join(os.environ["DETECTRON2_DATASETS"], "segloss_shapes")
    return os.path.join(os.path.expanduser("~"), ".cache", "segloss_d2", "segloss_shapes")


def _check_int(name, value, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_image_size(image_size):
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(f"image_size must be a (height, width) pair, got {image_size!r}")
    names = ("image_size height", "image_size width")
    return tuple(_check_int(name, v, _MIN_SIDE) for name, v in zip(names, image_size))


def _smooth_noise(rng, shape, cells):
    """Low-frequency noise in [-1, 1], float32 (H, W) = ``shape``, ``cells`` bumps per side."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(-1.0, 1.0)


def _background(rng, shape):
    """Background image, float32 (H, W, 3) in about [0, 255]."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None]
    base = rng.uniform(30, 225, size=3).astype(np.float32)
    slope = rng.uniform(-60, 60, size=3).astype(np.float32)
    image = base + slope * ramp + rng.uniform(10, 35) * _smooth_noise(rng, shape, 4)[..., None]
    for _ in range(rng.integers(0, 4)):  # faint distractor patches: image edges without boundaries
        patch = np.zeros(shape, np.uint8)
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, w // 3)), int(rng.integers(4, h // 3)))
        cv2.ellipse(patch, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        image += cv2.GaussianBlur(patch.astype(np.float32), (0, 0), 2.0)[..., None] * (
            rng.uniform(-40, 40, size=3).astype(np.float32))
    return image


def _object_mask(rng, cls, shape, scale):
    """Binary uint8 (H, W) mask of one object of class ``cls``; ``scale`` = min(H, W) / 96."""
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    angle = float(rng.uniform(0, 180))
    size = lambda lo, hi: int(round(rng.uniform(lo, hi) * scale))  # noqa: E731
    if cls == _DISC:
        cv2.ellipse(mask, center, (size(8, 26), size(8, 26)), angle, 0, 360, 1, -1)
    elif cls == _BOX:
        rect = (center, (size(12, 48), size(10, 36)), angle)
        cv2.fillPoly(mask, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 1)
    elif cls == _RING:
        thickness = int(rng.integers(2, 4))  # OpenCV: 2 -> 3 px, 3 -> 5 px
        cv2.ellipse(mask, center, (size(10, 28), size(10, 28)), angle, 0, 360, 1, thickness)
    elif cls == _WIRE:
        pts = rng.uniform(0, 1, size=(3, 2)) * (w, h)
        t = np.linspace(0, 1, 40)[:, None]
        curve = (1 - t) ** 2 * pts[0] + 2 * t * (1 - t) * pts[1] + t**2 * pts[2]
        thickness = int(rng.choice([1, 1, 2]))  # OpenCV: 1 -> 1 px, 2 -> 3 px
        cv2.polylines(mask, [np.round(curve).astype(np.int32)], False, 1, thickness)
    elif cls == _BLOB:
        theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        radius = rng.uniform(10, 26) * scale * np.ones_like(theta)
        for k in (2, 3, 5, 7):
            radius *= 1 + rng.uniform(0, 0.3 / np.sqrt(k)) * np.cos(k * theta + rng.uniform(0, 7))
        poly = np.stack([center[0] + radius * np.cos(theta), center[1] + radius * np.sin(theta)], 1)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    elif cls == _STRIPES:
        region = np.zeros(shape, np.uint8)
        cv2.ellipse(region, center, (size(14, 34), size(10, 26)), angle, 0, 360, 1, -1)
        yy, xx = np.mgrid[0:h, 0:w]
        phi = rng.uniform(0, np.pi)
        period = rng.uniform(6, 10) * scale
        u = (xx * np.cos(phi) + yy * np.sin(phi)) % period
        mask = (region.astype(bool) & (u < rng.uniform(3, 5) * scale)).astype(np.uint8)
    return mask


def _appearance(rng, cls, mask, cast, background_rgb):
    """Rendered colour of one object, float32 (H, W, 3); only pixels under ``mask`` are used.

    The base colour is kept at least ``_MIN_CONTRAST`` (RGB distance) from ``background_rgb``.
    """
    h, w = mask.shape
    color = (np.asarray(_CLASS_MEAN_RGB[cls], np.float32) + rng.normal(0, 40, 3)) * cast
    offset = color - background_rgb
    if np.linalg.norm(offset) < _MIN_CONTRAST:
        direction = offset if np.linalg.norm(offset) > 1e-3 else rng.normal(size=3)
        color = background_rgb + _MIN_CONTRAST * direction / np.linalg.norm(direction)
    image = np.broadcast_to(color, (h, w, 3)).astype(np.float32)
    if cls == _DISC:  # brighter towards the centre of mass
        ys, xs = np.nonzero(mask)
        yy, xx = np.mgrid[0:h, 0:w]
        dist = np.hypot(yy - ys.mean(), xx - xs.mean()) if len(ys) else np.zeros((h, w))
        image = image + (40 - 2.0 * dist)[..., None].clip(-30, 40).astype(np.float32)
    elif cls == _BOX:  # diagonal hatching
        yy, xx = np.mgrid[0:h, 0:w]
        image = image + (((xx + yy) % 4 < 2) * rng.uniform(15, 35))[..., None].astype(np.float32)
    elif cls == _BLOB:  # speckles
        image = image + rng.normal(0, 20, (h, w, 1)).astype(np.float32)
    return image


def _ignore_band(instances, k, width):
    """Bool (H, W): a ``width``-px band straddling the contour of visible instance ``k``."""
    visible = (instances == k).astype(np.uint8)
    outer, inner = width // 2, width - width // 2
    grown = cv2.dilate(visible, np.ones((2 * outer + 1,) * 2, np.uint8)) if outer else visible
    shrunk = cv2.erode(visible, np.ones((2 * inner + 1,) * 2, np.uint8), borderValue=1)
    return grown.astype(bool) & ~shrunk.astype(bool)


def _check_mix(mix):
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {sorted(MIXES)}, got {mix!r}")
    return mix


def render_shapes_scene(seed, index, image_size=DEFAULT_IMAGE_SIZE, ignore_width=2,
                        mix="default"):
    """Render scene ``index`` of the dataset with ``seed``, in memory.

    The scene depends only on ``(seed, index, image_size, ignore_width, mix)``, not on how many
    scenes a split has: it is drawn from ``np.random.default_rng([seed, index])``.

    Args:
        seed (int): >= 0.
        index (int): >= 0, position of the scene in its split.
        image_size (tuple[int, int]): (height, width), each >= 32.
        ignore_width (int): width in px of the void band on the contour of about half of the
            disc/box/blob objects; 0 disables the bands.
        mix (str): the scene composition, a key of :data:`MIXES`.

    Returns:
        image (np.ndarray): uint8 (H, W, 3), RGB.
        label (np.ndarray): uint8 (H, W), class ids in ``range(len(SHAPES_CLASSES))`` or
            ``IGNORE_LABEL``.
    """
    seed, index = _check_int("seed", seed, 0), _check_int("index", index, 0)
    shape = _check_image_size(image_size)
    ignore_width = _check_int("ignore_width", ignore_width, 0)
    composition = MIXES[_check_mix(mix)]
    rng = np.random.default_rng([seed, index])
    scale = min(shape) / 96.0
    cast = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    image = _background(rng, shape) * cast
    background_rgb = image.mean(axis=(0, 1))
    label = np.zeros(shape, np.uint8)
    instances = np.zeros(shape, np.int32)
    classes = list(rng.choice([_DISC, _BOX, _RING, _BLOB, _STRIPES],
                              size=rng.integers(*composition["objects"]),
                              p=composition["class_p"]))
    classes += [_WIRE] * int(rng.integers(*composition["wires"]))
    for k, cls in enumerate(rng.permutation(classes), start=1):  # painter's order: occlusions
        mask = _object_mask(rng, cls, shape, scale).astype(bool)
        image[mask] = _appearance(rng, cls, mask, cast, background_rgb)[mask]
        label[mask] = cls
        instances[mask] = k
        if ignore_width and cls in _BANDED_CLASSES and rng.uniform() < _IGNORE_BAND_PROB:
            instances[mask] = -k  # marks "banded"; resolved once all occluders are drawn
    for k in np.unique(instances[instances < 0]):
        band = _ignore_band(instances, k, ignore_width) & ~np.isin(label, THIN_CLASSES)
        label[band] = IGNORE_LABEL
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.0))
    image += rng.normal(0, rng.uniform(3, 12), image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def _manifest(split, num_images, image_size, seed, ignore_width, mix):
    manifest = {
        "generator": "segloss_shapes", "version": GENERATOR_VERSION, "split": split,
        "num_images": num_images, "image_size": list(image_size), "seed": seed,
        "ignore_width": ignore_width,
    }
    if mix != "default":  # the default's manifests stay what they were
        manifest["mix"] = mix
    return manifest


def _read_manifest(split_dir):
    try:
        with open(os.path.join(split_dir, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_complete(split_dir, manifest):
    return _read_manifest(split_dir) == manifest and all(
        os.path.isfile(p) for i in range(manifest["num_images"]) for p in _paths(split_dir, i))


def _paths(split_dir, index):
    name = f"{index:05d}.png"
    return os.path.join(split_dir, "images", name), os.path.join(split_dir, "labels", name)


def generate_shapes_dataset(root, split, num_images, image_size=DEFAULT_IMAGE_SIZE, seed=0,
                            ignore_width=2, mix="default"):
    """Generate (or reuse) one split of ``segloss_shapes`` and return its dataset dicts.

    Files: ``root/<split>/images/NNNNN.png`` (RGB uint8), ``root/<split>/labels/NNNNN.png`` (uint8
    single channel: class ids of ``SHAPES_CLASSES``, ``IGNORE_LABEL`` = void) and
    ``root/<split>/manifest.json`` (generator version and all arguments below).

    If the manifest matches the arguments and every file exists, nothing is written. Otherwise the
    split is rendered into a temporary sibling directory, the manifest is written last, and the
    directory is renamed into place, replacing any partial or stale ``root/<split>``; a concurrent
    generator that wins the rename race is accepted as is. About 2 ms per 96x128 image on one core.

    Args:
        root (str): dataset root, e.g. ``shapes_cache_dir()``; created if missing.
        split (str): split directory name, e.g. ``"train"``; a plain name, no path separators.
        num_images (int): >= 1.
        image_size (tuple[int, int]): (height, width), each >= 32.
        seed (int): >= 0; scene ``i`` is ``render_shapes_scene(seed, i, image_size, ignore_width)``.
        ignore_width (int): void band width in px (0 disables), see ``render_shapes_scene``.
        mix (str): scene composition, a key of :data:`MIXES`.

    Returns:
        list[dict]: one per image, detectron2 semantic-segmentation style: ``file_name``,
        ``sem_seg_file_name`` (absolute paths), ``height``, ``width`` (ints) and ``image_id``
        (str, ``"<split>_NNNNN"``).
    """
    if not isinstance(split, str) or not split or split != os.path.basename(split) or \
            split.startswith("."):
        raise ValueError(f"split must be a plain directory name such as 'train', got {split!r}")
    num_images = _check_int("num_images", num_images, 1)
    image_size = _check_image_size(image_size)
    seed = _check_int("seed", seed, 0)
    ignore_width = _check_int("ignore_width", ignore_width, 0)
    mix = _check_mix(mix)
    root = os.path.abspath(os.path.expanduser(root))
    split_dir = os.path.join(root, split)
    manifest = _manifest(split, num_images, image_size, seed, ignore_width, mix)
    if not _is_complete(split_dir, manifest):
        _generate_split(split_dir, manifest)
    height, width = image_size
    return [
        {"file_name": image_path, "sem_seg_file_name": label_path, "height": height,
         "width": width, "image_id": f"{split}_{i:05d}"}
        for i in range(num_images) for image_path, label_path in [_paths(split_dir, i)]
    ]


def _generate_split(split_dir, manifest):
    tmp_name = f".{manifest['split']}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    tmp_dir = os.path.join(os.path.dirname(split_dir), tmp_name)
    try:
        os.makedirs(os.path.join(tmp_dir, "images"))
        os.makedirs(os.path.join(tmp_dir, "labels"))
        for i in range(manifest["num_images"]):
            image, label = render_shapes_scene(
                manifest["seed"], i, manifest["image_size"], manifest["ignore_width"],
                manifest.get("mix", "default"))
            image_path, label_path = _paths(tmp_dir, i)
            if not (cv2.imwrite(image_path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                    and cv2.imwrite(label_path, label)):
                raise OSError(f"could not write {image_path} / {label_path}")
        with open(os.path.join(tmp_dir, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        if not _is_complete(split_dir, manifest):  # stale or partial: replace it
            if os.path.isdir(split_dir) and not os.path.islink(split_dir):
                shutil.rmtree(split_dir, ignore_errors=True)
            elif os.path.lexists(split_dir):
                os.remove(split_dir)
        try:
            os.rename(tmp_dir, split_dir)
        except OSError:
            if not _is_complete(split_dir, manifest):  # not a concurrent generator's result
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
