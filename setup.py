#!/usr/bin/env python
"""segloss_d2: Auto Seg-Loss (ICLR 2021) metric surrogates, evaluators and search for detectron2.

torch, torchvision and detectron2 are prerequisites, not install_requires: like detectron2 itself,
they must match the user's CUDA and are installed first (``make install`` / tools/install.sh does
all three). Install with ``pip install --no-build-isolation -e .`` so that this check sees them.
"""
import os

from setuptools import find_packages, setup

try:
    import torch
except ImportError as e:  # pragma: no cover - install-time guard
    raise SystemExit(
        "segloss_d2 needs PyTorch installed first (then detectron2): see README 'Set-up', or run "
        "'make install'. Use 'pip install --no-build-isolation' so the build sees your torch."
    ) from e

torch_ver = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
if torch_ver < (1, 13):  # torch.load(weights_only=), torch.special.log_ndtr, torch.aminmax
    raise SystemExit(f"segloss_d2 needs torch >= 1.13, found {torch.__version__}")

from torch.utils.cpp_extension import BuildExtension, CppExtension  # noqa: E402

# segloss_d2._C: fused CPU kernels of the surrogates (the pure-torch path serves other devices and
# is the fallback when the extension is missing). SEGLOSS_NO_EXT=1 skips building it.
ext_modules = []
if os.environ.get("SEGLOSS_NO_EXT", "0") != "1":
    ext_modules.append(CppExtension(
        "segloss_d2._C",
        # one extension, one file per op family (shared code: segloss_d2/csrc/surrogate.h)
        ["segloss_d2/csrc/ops.cpp", "segloss_d2/csrc/region_cpu.cpp",
         "segloss_d2/csrc/boundary_cpu.cpp"],
        depends=["segloss_d2/csrc/surrogate.h"],
        # -fno-math-errno lets sqrt vectorize; no -ffast-math: results keep IEEE semantics.
        # -fopenmp: at::parallel_for is OpenMP in torch's CPU builds (torch ships the runtime).
        extra_compile_args=["-O3", "-fno-math-errno", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    ))


def get_version():
    """``__version__`` of segloss_d2/__init__.py, read without importing the package."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "segloss_d2", "__init__.py")
    with open(path) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError(f"no __version__ in {path}")


setup(
    name="segloss_d2",
    version=get_version(),
    description="Auto Seg-Loss metric surrogates, evaluators and search as a detectron2 plugin",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "tools", "projects",
                                    "experiments", "experiments.*")),
    package_data={"segloss_d2.surrogate": ["presets/*.json"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension},
    # What the library imports (torch, torchvision and detectron2 are prerequisites, see above).
    install_requires=[
        "numpy",
        # OpenCV (cv2) is needed but, as in detectron2, not listed: users bring their own build
        # (opencv-python, a CUDA build, conda's); tools/install.sh adds opencv-python-headless
        # only when no cv2 imports.
        "matplotlib",
        "Pillow",
        "tabulate",
        "tensorboard",  # torch.utils.tensorboard, the search's scalars
    ],
    extras_require={
        "dev": ["pytest>=7", "ruff", "scipy"],  # scipy: reference values in tests
        "ray": ["ray>=2.9"],
    },
)
