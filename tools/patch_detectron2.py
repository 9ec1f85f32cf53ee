#!/usr/bin/env python
"""Apply the smallest compatibility fixes to an unpacked detectron2 v0.6 source release.

The only detectron2 source release on PyPI (``pb1-detectron2==0.6``, upstream v0.6) ships without
``csrc/`` and predates Pillow 10 and numpy 1.24. This script, used by ``tools/install.sh``, edits an
unpacked copy in place so that it installs as a pure-Python package:

1. ``setup.py``: no C++ extension (``ext_modules=[]``); the ``black==21.4b2`` pin (the formatter of
   ``LazyConfig.to_py``) is unpinned because that release does not import with current ``click``.
2. ``Image.LINEAR`` (removed in Pillow 10) -> ``Image.BILINEAR`` (the same filter).
3. The numpy aliases removed in numpy 1.24 (``np.int``, ``np.float``, ``np.bool``, ``np.str``) ->
   the builtins they always were, in every module that uses them (SemSegEvaluator among them).
4. A ``detectron2/_C.py`` placeholder: importing it works (v0.6 imports ``detectron2._C`` at module
   level), its build-information functions (``get_compiler_version``, ``get_cuda_version``,
   ``has_cuda``, read by ``collect_env``) say that no ops were built, and any other attribute
   access raises a clear error naming the op that needs a source build.

Only the standard library is used. It prints one line per applied fix and is idempotent: a second
run on the same tree applies nothing.

Usage: python tools/patch_detectron2.py SOURCE_DIR
"""
import re
import sys
from pathlib import Path

NUMPY_ALIAS = re.compile(r"\bnp\.(int|float|bool|str)\b(?![\w.])")
PLACEHOLDER = '''"""Placeholder for detectron2's compiled ops (written by segloss_d2's installer).

This detectron2 was installed from a source release without C++/CUDA sources, so no op of
``detectron2._C`` exists. Semantic segmentation does not need them.
"""


class CompiledOpsMissingError(AttributeError):
    """Raised on any use of a compiled detectron2 op in a build without them."""


# Build information, read by detectron2.utils.collect_env (default_setup): no ops were built.
def get_compiler_version():
    return "none: detectron2 installed without compiled ops"


def get_cuda_version():
    return "none: detectron2 installed without compiled ops"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise CompiledOpsMissingError(
        f"detectron2 was installed without compiled ops; {name} needs a source build "
        "(pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git')"
    )
'''


def _sub_file(path: Path, pattern, repl, what: str, fixes: list) -> None:
    text = path.read_text()
    new, count = re.subn(pattern, repl, text)
    if count:
        path.write_text(new)
        fixes.append(f"{what} in {path.as_posix()} ({count}x)")


def patch(src: Path) -> list:
    """Patch the detectron2 source tree at ``src`` in place; return the applied fixes."""
    if not (src / "setup.py").is_file() or not (src / "detectron2" / "__init__.py").is_file():
        raise SystemExit(f"patch_detectron2: {src} is not a detectron2 source tree "
                         "(expected setup.py and detectron2/__init__.py)")
    fixes = []
    setup = src / "setup.py"
    _sub_file(setup, r"ext_modules=get_extensions\(\)", "ext_modules=[]",
              "no C++ extension", fixes)
    _sub_file(setup, r'"black==21\.4b2"', '"black"', "unpinned black==21.4b2", fixes)
    pkg = src / "detectron2"
    for py in sorted(pkg.rglob("*.py")) + sorted((src / "projects").rglob("*.py")):
        _sub_file(py, r"\bImage\.LINEAR\b", "Image.BILINEAR", "Image.LINEAR -> Image.BILINEAR",
                  fixes)
        _sub_file(py, NUMPY_ALIAS, r"\1", "removed numpy aliases np.int/float/bool/str", fixes)
    placeholder = pkg / "_C.py"
    if not placeholder.exists():
        placeholder.write_text(PLACEHOLDER)
        fixes.append(f"detectron2._C placeholder at {placeholder.as_posix()}")
    return fixes


def main(argv):
    if len(argv) != 2:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    src = Path(argv[1])
    fixes = patch(src)
    for fix in fixes:
        print(f"  fix: {fix}")
    if not fixes:
        print("  fix: none needed (tree already patched)")


if __name__ == "__main__":
    main(sys.argv)
