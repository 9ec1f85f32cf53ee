"""Config keys of segloss_d2 (detectron2 adapter): ``add_segloss_config`` and ``add_search_config``.

Both compose with detectron2's ``get_cfg()`` and with ``add_deeplab_config`` in any order, and are
idempotent. Every key has a comment; the loss keys are read by
:func:`segloss_d2.modeling.build_sem_seg_loss`, the search keys by ``segloss_d2.search``.
"""
from detectron2.config import CfgNode as CN

LOSS_TYPES = ("cross_entropy", "hard_pixel_mining", "wce", "dice", "lovasz", "naive", "searched")


def add_segloss_config(cfg):
    """Add the loss, evaluation and tiny-backbone keys of segloss_d2 to ``cfg`` (in place)."""
    head = cfg.MODEL.SEM_SEG_HEAD
    # Loss of the segloss heads (DeepLabV3PlusSegLossHead, SemSegFPNSegLossHead) and of
    # build_sem_seg_loss: one of LOSS_TYPES. An existing value is kept, so add_deeplab_config's
    # default ("hard_pixel_mining") survives; otherwise "cross_entropy".
    if "LOSS_TYPE" not in head:
        head.LOSS_TYPE = "cross_entropy"
    # LOSS_TYPE hard_pixel_mining: fraction of the hardest pixels kept (DeepLab's DeepLabCE: 0.2).
    head.HARD_PIXEL_TOP_K = 0.2
    # LOSS_TYPE wce: fixed per-class weights (NUM_CLASSES floats); [] = inverse class frequency of
    # the pixels of each mini-batch.
    head.CLASS_WEIGHTS = []

    # DeepLabV3PlusSegLossHead: ASPP image pooling over the whole feature map. detectron2's head
    # pools with a fixed kernel of INPUT.CROP.SIZE / stride when cropping is on, which only works
    # when every test image is a multiple of the crop (Cityscapes); VOC/ADE20K sizes vary.
    head.ASPP_GLOBAL_POOLING = False

    head.SURROGATE = CN()
    # LOSS_TYPE naive/searched: metrics to optimize, any of mIoU, fwIoU, mACC, pACC, BIoU, BF1
    # (segloss_d2.metric_names; the paper's FWIoU, mAcc, gAcc and any capitalization accepted).
    # [] = the metrics stored in PARAMS (searched) or ["mIoU"] (naive). With PARAMS, a non-empty
    # list must equal the metrics of PARAMS (a guard against a params file for another metric).
    head.SURROGATE.METRICS = []
    # Weight of each metric in the loss sum (same length as METRICS); [] = those stored in PARAMS,
    # else 1.0 each. Loss = LOSS_WEIGHT * sum_k WEIGHTS[k] * (1 - surrogate_k).
    head.SURROGATE.WEIGHTS = []
    # LOSS_TYPE searched: a params JSON file (e.g. a search's best_params.json) or a preset name
    # (voc_miou, voc_fwiou, voc_biou, voc_bf1, voc_macc, voc_gacc). Several, joined by ",", add
    # their surrogates into one loss ("voc_miou,voc_bf1" = the paper's "mIoU + BF1").
    head.SURROGATE.PARAMS = ""
    # LOSS_TYPE naive: Bézier pieces per curve of the identity curves (paper: 2; 1 for BF1).
    head.SURROGATE.NUM_PIECES = 2
    # Boundary tolerance in pixels of the BIoU trimap and the BF1 dilation (reference: 5).
    head.SURROGATE.TOLERANCE = 5
    # Exclude class 0 (background) from the BIoU trimap and the BF1 mean (reference VOC: True for
    # evaluation; the released BF1 loss used False).
    head.SURROGATE.DROP_BACKGROUND = False
    # Average mIoU/BIoU/mACC surrogates over classes present in the mini-batch only, instead of all
    # classes as the reference does (a deviation, off by default).
    head.SURROGATE.PRESENT_CLASSES_ONLY = False
    # Statistics scope of the surrogates (docs/method.md §2.5): "local" = per-class sums over the
    # per-process mini-batch (the reference); "global" = those sums all-reduced over all processes
    # (DDP) inside the forward pass, so loss and gradients equal one process holding the global
    # batch; "image" = every surrogate per image, then averaged over the images.
    head.SURROGATE.STATS = "local"

    cfg.TEST.SEGLOSS = CN()
    # Metrics reported by SegLossEvaluator (subset of mIoU, fwIoU, mACC, pACC, BIoU, BF1,
    # BoundaryIoU); [] = all.
    cfg.TEST.SEGLOSS.METRICS = []
    # Boundary tolerance in pixels of the evaluator's BIoU trimap and BF1 matching.
    cfg.TEST.SEGLOSS.TOLERANCE = 5
    # Evaluate as the reference does on VOC: BIoU trimap from foreground boundaries, BF1 over
    # foreground classes.
    cfg.TEST.SEGLOSS.DROP_BACKGROUND = False

    cfg.MODEL.TINY_BACKBONE = CN()
    # Output channels of res2..res5 of build_tiny_seg_backbone (strides 4, 8, 16, 16), a few-conv
    # backbone for CPU tests, demos and cheap search proxies.
    cfg.MODEL.TINY_BACKBONE.CHANNELS = [16, 32, 64, 96]
    return cfg


def add_search_config(cfg):
    """Add the ``SEARCH`` keys of the Auto Seg-Loss PPO search (docs/method.md §4) to ``cfg``
    (in place)."""
    cfg.SEARCH = CN()
    # Metric(s) the search maximizes on the reward set: mIoU, fwIoU, mACC, pACC, BIoU or BF1
    # (aliases as for SURROGATE.METRICS), or several joined by "+" (e.g. "mIoU+BF1": their
    # surrogates are summed, the reward averaged).
    cfg.SEARCH.TARGET_METRIC = "mIoU"
    # PPO iterations (paper: 12).
    cfg.SEARCH.ITERATIONS = 12
    # Candidates per iteration (paper: 32); with BASELINE "mu" the first one is the mean itself.
    cfg.SEARCH.SAMPLES_PER_ITER = 32
    # Fixed standard deviation of the truncated Gaussian on [0, 1] (paper: 0.2).
    cfg.SEARCH.SIGMA = 0.2
    # Adam learning rate of the mean's logit (paper: 0.2).
    cfg.SEARCH.MU_LR = 0.2
    # Adam steps of the PPO objective per iteration (paper: 60).
    cfg.SEARCH.PPO_STEPS = 60
    # PPO clip epsilon (paper: 0.2).
    cfg.SEARCH.CLIP_EPS = 0.2
    # "per_dim": ratio per dimension, clipped per dimension (reference code); "joint": ratio of the
    # joint density (the paper's formula).
    cfg.SEARCH.RATIO = "per_dim"
    # Advantage baseline: "mu" = reward of the mean (sample 0, reference code) or "mean" reward.
    cfg.SEARCH.BASELINE = "mu"
    # Advantages from rewards (docs/method.md §4.6): "raw" = reward - baseline (paper), "normalized"
    # = that / std of the iteration's rewards, "rank" = centered ranks in [-1/2, 1/2] before the
    # baseline (fitness shaping; needed with PROXY.HALVING).
    cfg.SEARCH.ADVANTAGE = "raw"
    # Mirrored (antithetic) sampling: the random candidates come in pairs drawn from u and 1 - u.
    cfg.SEARCH.MIRRORED = False
    # Linear sigma schedule: SIGMA at the first iteration down to SIGMA_END at the last; 0 = fixed
    # SIGMA (paper).
    cfg.SEARCH.SIGMA_END = 0.0
    # Trust region: the largest move of one coordinate of the mean per iteration, in [0, 1] units;
    # 0 = unbounded (paper).
    cfg.SEARCH.MAX_MU_STEP = 0.0
    # Guarded reward (docs/method.md §4.7): "<metric>>=<fraction>", e.g. "mIoU>=0.98": a candidate
    # whose guard metric on the reward set falls below fraction x the reference loses
    # GUARD_PENALTY x its relative shortfall from the reward; "" = off (paper).
    cfg.SEARCH.REWARD_GUARD = ""
    # Reference value of the guard metric in (0, 1]; 0 = measure it once per search: the proxy
    # trained with cross-entropy (stored in the search directory, reused on resume).
    cfg.SEARCH.GUARD_REFERENCE = 0.0
    # Reward lost per unit of relative shortfall below the guard's threshold.
    cfg.SEARCH.GUARD_PENALTY = 1.0
    # Bézier pieces per curve; 0 = the paper's choice per metric (2, and 1 for BF1).
    cfg.SEARCH.NUM_PIECES = 0
    # Curve parameterization: "all" = the paper's truth-table and monotonicity constraints;
    # "no_truth_table" (free end heights), "no_monotonic" (free y coordinates) or "none" for the
    # constraint ablation (docs/method.md).
    cfg.SEARCH.CONSTRAINTS = "all"
    # "ppo": the paper's PPO update of the mean; "random": random search at the same budget (every
    # iteration samples the initial distribution, the mean never moves; the best sample is kept).
    cfg.SEARCH.METHOD = "ppo"
    # Seed of the controller, of the hold-out split, and of every proxy training (all candidates of
    # one iteration share it, so reward differences come from the loss).
    cfg.SEARCH.SEED = 1
    # Where a search writes its trials, checkpoints and results; "" = OUTPUT_DIR.
    cfg.SEARCH.OUTPUT_DIR = ""

    cfg.SEARCH.PROXY = CN()
    # Training iterations of each proxy network (paper: 1000; the proxy's SOLVER keys apply).
    cfg.SEARCH.PROXY.MAX_ITER = 1000
    # Proxy seeds (initial weights, data order, augmentations): "fixed" = SEARCH.SEED for every
    # proxy of the search; "per_iteration" = a new seed each iteration, shared by all candidates of
    # that iteration (common random numbers within it, no search tuned to one seed's luck).
    cfg.SEARCH.PROXY.SEEDS = "fixed"
    # Successive halving: fractions of MAX_ITER (increasing, in (0, 1)) at which every proxy of a
    # group (MODELS_PER_WORKER candidates trained side by side) is scored on the reward set and the
    # worse half stops; [] = off (paper). Needs SEARCH.ADVANTAGE "rank".
    cfg.SEARCH.PROXY.HALVING = []

    cfg.SEARCH.SELECTION = CN()
    # Answer selection against the winner's curse (docs/method.md §4.6): the TOP_K best sampled
    # candidates and the final mean are re-trained with SEEDS fresh proxy seeds each, and
    # best_params.json is the one with the best mean reward over them; 0 = the best sampled
    # candidate by its one reward (the paper's; the one switch back to the paper's search).
    # Costs (TOP_K + 1) * SEEDS proxy trainings. On by default: the study's retrained mIoU rose
    # by more than the spread over seeds (docs/search_study.md).
    cfg.SEARCH.SELECTION.TOP_K = 3
    # Fresh proxy seeds per re-evaluated candidate.
    cfg.SEARCH.SELECTION.SEEDS = 2

    # Dotted path of the detectron2 DefaultTrainer subclass whose build_model, build_optimizer,
    # build_lr_scheduler and build_train_loader classmethods make every proxy (docs/method.md §4.4):
    # a project's own Trainer (its model, mapper, augmentations, optimizer) drives the search
    # unchanged. SOLVER.AMP.ENABLED and SOLVER.CLIP_GRADIENTS apply as in detectron2's trainers.
    cfg.SEARCH.TRAINER = "segloss_d2.engine.SegLossTrainer"

    cfg.SEARCH.HOLDOUT = CN()
    # Images held out of DATASETS.TRAIN (fixed by SEARCH.SEED) as the reward set (paper: 1500 VOC /
    # 500 Cityscapes); the proxies train on the rest.
    cfg.SEARCH.HOLDOUT.SIZE = 1500
    # A registered dataset to use as the reward set instead of a hold-out split (the reference code
    # used VOC val); "" = hold-out split.
    cfg.SEARCH.HOLDOUT.DATASET = ""

    # "local": candidates run in this process; "ray": each group of MODELS_PER_WORKER candidates is
    # a Ray task with RAY.* resources (needs the `ray` extra).
    cfg.SEARCH.BACKEND = "local"
    # Candidates trained side by side on the same batches by one worker (one data pipeline).
    cfg.SEARCH.MODELS_PER_WORKER = 1

    cfg.SEARCH.RAY = CN()
    # Ray cluster address ("" = start a local Ray instance; "auto" = the running cluster).
    cfg.SEARCH.RAY.ADDRESS = ""
    # CPUs reserved per Ray task.
    cfg.SEARCH.RAY.CPUS_PER_TRIAL = 1
    # GPUs reserved per Ray task (fractions share a GPU).
    cfg.SEARCH.RAY.GPUS_PER_TRIAL = 0.0
    # Retries of a Ray task that failed (worker died, node lost) before its trials count as failed.
    cfg.SEARCH.RAY.MAX_RETRIES = 2
    return cfg
