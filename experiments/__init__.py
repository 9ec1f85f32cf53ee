"""The experiment harness of segloss_d2's documentation, outside the library (like detectron2's
``tools/`` and ``dev/``): what ``benchmarks/`` scripts, ``tools/demo.py`` and the tests run to
measure the library, not what a user's project imports.

- :mod:`.study`, :mod:`.study_report`: the search-quality study (``benchmarks/study_search.py``,
  docs/search_study.md);
- :mod:`.compare`: train one config with several losses and tabulate all six metrics (the demo);
- :mod:`.pretrain`: the tiny models' pretrained initial weights on ``segloss_shapes_pretrain``.

Import it from the repository root (the scripts put the root on ``sys.path``); it is not
installed with ``pip install segloss_d2``.
"""
