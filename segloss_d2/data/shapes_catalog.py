"""detectron2 registration of the ``segloss_shapes`` datasets (the generator is ``shapes.py``).

``segloss_shapes_{train,val,...}`` (:data:`~segloss_d2.data.shapes.SPLITS`) are generated on first
``DatasetCatalog.get(name)`` under ``shapes_cache_dir()``; registering touches no file, and the
pre-flight has nothing to check (the loader creates what is missing).
"""
from .catalog import SeglossLoader, register_loader
from .shapes import (
    DEFAULT_IMAGE_SIZE,
    IGNORE_LABEL,
    SHAPES_CLASSES,
    SHAPES_COLORS,
    generate_shapes_dataset,
    shapes_cache_dir,
)

__all__ = ["register_shapes"]


class _ShapesLoader(SeglossLoader):
    """DatasetCatalog entry of a ``segloss_shapes`` split; root None = ``shapes_cache_dir()``."""

    def __init__(self, split, num_images, seed, root, image_size, mix):
        self.args = (split, num_images, seed, root, tuple(image_size), mix)

    def __call__(self):
        split, num_images, seed, root, image_size, mix = self.args
        return generate_shapes_dataset(root if root is not None else shapes_cache_dir(), split,
                                       num_images, image_size=image_size, seed=seed, mix=mix)


def register_shapes(name, split, num_images, seed, root=None, image_size=DEFAULT_IMAGE_SIZE,
                    mix="default"):
    """Register a ``segloss_shapes`` split, generated on first ``DatasetCatalog.get(name)``.

    Args:
        name (str): dataset name.
        split, num_images, seed, image_size, mix: see ``generate_shapes_dataset``. Two datasets
            with the same root and split but other sizes, seeds or mixes would regenerate each
            other's files.
        root (str or None): dataset root; None = ``shapes_cache_dir()`` evaluated at load time.

    Idempotent like :func:`~segloss_d2.data.voc.register_voc_sem_seg`. Metadata:
    ``stuff_classes``/``stuff_colors`` from ``shapes.py``, ``ignore_label`` 255, ``evaluator_type``
    "sem_seg".
    """
    loader = _ShapesLoader(split, num_images, seed, root, image_size, mix)
    register_loader(
        name, loader, lambda f: isinstance(f, _ShapesLoader) and f.args == loader.args,
        stuff_classes=list(SHAPES_CLASSES),
        stuff_colors=[list(c) for c in SHAPES_COLORS],
        ignore_label=IGNORE_LABEL,
        evaluator_type="sem_seg",
    )
