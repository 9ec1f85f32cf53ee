#!/usr/bin/env bash
# Idempotent set-up of segloss_d2 into the project virtualenv .venv (see README "Set-up").
#
#   1. .venv with a working torch + torchvision (kept if present, else torch==2.14.1 torchvision==0.29.1);
#   2. an importable detectron2 (kept if present; else upstream from GitHub at the pinned commit
#      D2_COMMIT; else the PyPI source release pb1-detectron2==0.6 with the fixes of
#      tools/patch_detectron2.py);
#   3. OpenCV: kept if `import cv2` works (the user's own build, e.g. opencv-python), else the
#      opencv-python-headless wheel (detectron2 leaves OpenCV out of its requirements likewise);
#   4. segloss_d2 itself, editable, with the dev extra (plus the ray extra when SEGLOSS_EXTRAS=dev,ray),
#      which compiles its C++ CPU kernels (segloss_d2._C; needs g++, see README).
#
# A second run checks imports only and downloads nothing. Any failing step stops with a message.
# Environment: PYTHON (interpreter for a new venv, default python3), VENV (default .venv),
# SEGLOSS_EXTRAS (default "dev"), TORCH_SPEC (default "torch==2.14.1 torchvision==0.29.1"),
# SEGLOSS_NO_EXT=1 (skip compiling segloss_d2._C; also chosen when no C++ compiler is found),
# D2_COMMIT (the upstream detectron2 commit built from GitHub; default: the one tested last).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
EXTRAS=${SEGLOSS_EXTRAS:-dev}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
# Upstream detectron2 main as of 2026-06-06, the commit segloss_d2's tests were last run against.
D2_COMMIT=${D2_COMMIT:-02b5c4e295e990042a714712c21dc79b731e8833}
D2_UPSTREAM="git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT"
D2_SDIST="pb1-detectron2==0.6"
CACHE="$ROOT/.cache/install"
STAMP="$VENV/.segloss_d2-installed"

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
# pip, minus the noise of this machine's file:// index warnings; returns pip's exit status.
pip_() { local rc; "$PY" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location"; rc=${PIPESTATUS[0]}; return "$rc"; }
pipi() { pip_ install "$@"; }

# segloss_d2._C needs a C++ compiler; without one, install without it (and say so)
if [ "${SEGLOSS_NO_EXT:-0}" != "1" ] && ! command -v "${CXX:-c++}" >/dev/null; then
  say "WARNING: no C++ compiler (${CXX:-c++}): installing without segloss_d2._C, so the surrogates"
  say "         run the pure-torch path on CPU (about 2x slower). Debian: apt-get install g++"
  export SEGLOSS_NO_EXT=1
fi

# 1. virtualenv -------------------------------------------------------------------------------
if [ ! -x "$PY" ]; then
  command -v "${PYTHON:-python3}" >/dev/null || die "no ${PYTHON:-python3} on PATH (need Python >= 3.9)"
  "${PYTHON:-python3}" -c 'import sys; assert sys.version_info >= (3, 9)' \
    || die "$(${PYTHON:-python3} --version 2>&1) is too old: segloss_d2 needs Python >= 3.9"
  say "creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV" || die "python -m venv failed (Debian: apt-get install python3-venv)"
fi

# What already imports, probed in one interpreter (importing torch takes seconds): one line each,
# "torch <versions>", "detectron2 <version> <dir>", "segloss_d2 <version>", or "<name> -" if broken.
probe() {
  "$PY" - 2>/dev/null <<'PYEOF' || true
import os, warnings
warnings.simplefilter("ignore")
try:
    import torch, torchvision
    print("torch", torch.__version__, "/ torchvision", torchvision.__version__)
except Exception:
    print("torch -")
    raise SystemExit
try:
    import detectron2, detectron2.engine, detectron2.projects.deeplab
    print("detectron2", detectron2.__version__, "from", os.path.dirname(detectron2.__file__))
except Exception:
    print("detectron2 -")
try:
    import segloss_d2
    if os.environ.get("SEGLOSS_NO_EXT") != "1":
        import segloss_d2._C  # the compiled CPU kernels, built against this torch
    print("segloss_d2", segloss_d2.__version__)
except Exception:
    print("segloss_d2 -")
PYEOF
}
state=$(probe)
have() { printf '%s\n' "$state" | grep "^$1 " | grep -qv "^$1 -"; }
info() { printf '%s\n' "$state" | grep "^$1 " | cut -d' ' -f2-; }

# 2. torch + torchvision ----------------------------------------------------------------------
if have torch; then
  say "torch: keeping $(info torch)"
else
  say "torch: installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pipi $TORCH_SPEC || die "pip install $TORCH_SPEC failed"
  "$PY" -c "import torch, torchvision" || die "torch/torchvision installed but do not import together"
  state=$(probe)
fi

# 3. detectron2 -------------------------------------------------------------------------------
d2_ok() { "$PY" -c "import detectron2.engine, detectron2.projects.deeplab" >/dev/null 2>&1; }
if have detectron2; then
  say "detectron2: keeping $(info detectron2)"
else
  pipi wheel setuptools || die "could not install wheel/setuptools (needed for --no-build-isolation builds)"
  if timeout 20 git ls-remote https://github.com/facebookresearch/detectron2.git HEAD >/dev/null 2>&1; then
    say "detectron2: installing upstream commit ${D2_COMMIT:0:12} from GitHub (compiles its C++ ops; minutes)"
    pipi --no-build-isolation "$D2_UPSTREAM" || die "building upstream detectron2 failed (see above)"
    say "detectron2: installed upstream $("$PY" -c 'import detectron2; print(detectron2.__version__)') (commit ${D2_COMMIT:0:12}) from GitHub; no fixes applied"
  else
    say "detectron2: GitHub unreachable; using the PyPI source release $D2_SDIST without C++ ops"
    mkdir -p "$CACHE"
    sdist=$(ls "$CACHE"/pb1-detectron2-0.6.tar.gz 2>/dev/null || true)
    if [ -z "$sdist" ]; then
      pip_ download --no-deps --no-build-isolation -d "$CACHE" "$D2_SDIST" || true
      sdist=$(ls "$CACHE"/pb1-detectron2-0.6.tar.gz 2>/dev/null) || die "could not download $D2_SDIST from PyPI"
    fi
    src="$CACHE/pb1-detectron2-0.6"
    rm -rf "$src" && tar -xzf "$sdist" -C "$CACHE" || die "could not unpack $sdist"
    say "detectron2: applying compatibility fixes (tools/patch_detectron2.py):"
    "$PY" tools/patch_detectron2.py "$src" || die "patching $src failed"
    pipi --no-build-isolation "$src" || die "pip install of the patched $D2_SDIST failed"
    say "detectron2: installed $D2_SDIST (upstream v0.6) from PyPI, pure Python, with the fixes above"
  fi
  d2_ok || die "detectron2 was installed but 'import detectron2.engine, detectron2.projects.deeplab' fails"
fi

# 4. OpenCV ------------------------------------------------------------------------------------
# Not in segloss_d2's install_requires (as in detectron2's): a second cv2 wheel next to a user's
# opencv-python would shadow it. Only when none imports is the headless wheel added.
if "$PY" -c "import cv2" >/dev/null 2>&1; then
  say "opencv: keeping cv2 $("$PY" -c 'import cv2; print(cv2.__version__)' 2>/dev/null)"
else
  say "opencv: no importable cv2; installing opencv-python-headless"
  pipi opencv-python-headless || die "pip install opencv-python-headless failed"
  "$PY" -c "import cv2" || die "opencv-python-headless installed but 'import cv2' fails"
fi

# 5. segloss_d2 (editable) --------------------------------------------------------------------
# setup.py and the C++ sources: an editable install does not rebuild segloss_d2._C by itself
fingerprint="$(cat setup.py segloss_d2/csrc/*.cpp segloss_d2/csrc/*.h | sha1sum | cut -c1-16) $EXTRAS ${SEGLOSS_NO_EXT:-0}"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ] && have segloss_d2; then
  say "segloss_d2: keeping $(info segloss_d2) (editable, extras: $EXTRAS)"
else
  if [ "${SEGLOSS_NO_EXT:-0}" = "1" ]; then
    say "segloss_d2: installing editable with extras [$EXTRAS], without segloss_d2._C"
  else
    say "segloss_d2: installing editable with extras [$EXTRAS] (compiles segloss_d2._C, ~30 s)"
  fi
  pipi --no-build-isolation -e ".[$EXTRAS]" || die "pip install -e .[$EXTRAS] failed"
  echo "$fingerprint" > "$STAMP"
  state=$(probe)
  have segloss_d2 && have detectron2 \
    || die "'import segloss_d2, segloss_d2._C, detectron2' fails after install"
fi
say "ready: torch $(info torch) | detectron2 $(info detectron2) | segloss_d2 $(info segloss_d2)"
