"""The Auto Seg-Loss search (docs/method.md §4).

Importing this package imports nothing else. Its modules come in two rings:

Pure core (torch/numpy only, no detectron2; usable from any framework):
    ``space``          :class:`~.space.SearchSpace`: target metrics, curves, θ -> loss params,
                       reward (the search space)
    ``distributions``  the truncated Gaussian the candidates are drawn from
    ``ppo``            the PPO controller and random search (``CONTROLLERS``)
    ``loop``           :func:`~.loop.run_search`: sample, evaluate, log, update, resume
    ``state``          :class:`~.state.SearchState`: the durable, locked search directory
    ``lock``           the exclusive directory lock
    ``selection``      the answer chosen by re-evaluation with fresh proxy seeds
    ``seeds``          which proxy seed trains which proxy
    ``guard``          the guarded reward (a second metric kept above a reference)
    ``reaper``         stops a killed search's leftover processes (Ray)
    ``plots``          PNGs of a search's results (matplotlib ``Figure``)

detectron2 adapters (where the search calls detectron2):
    ``settings``       :class:`~.settings.SearchSettings`: every key a search uses, read and
                       validated once from a detectron2 config (the only reader of the config)
    ``trial``          trains proxy models through a detectron2 Trainer and scores them
    ``holdout``        the proxies' training images and the reward set from detectron2 datasets
    ``backends``       local and Ray evaluation of candidates (``evaluate_fn`` of the loop)
    ``runner``         :class:`~.runner.SearchRunner`: a whole search from its settings

The search-quality study that measures all this is not part of the library: ``experiments.study``
(benchmarks/study_search.py).
"""
