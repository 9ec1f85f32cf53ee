#!/usr/bin/env python
"""Placeholder for `make demo` until the demo lands: a short CPU smoke of detectron2 + segloss_d2."""
import torch

import segloss_d2
from detectron2.config import get_cfg
from detectron2.projects.deeplab import add_deeplab_config

if __name__ == "__main__":
    cfg = get_cfg()
    add_deeplab_config(cfg)
    print(f"segloss_d2 {segloss_d2.__version__}, torch {torch.__version__}: set-up OK")
