"""Speed and memory of SegMetrics against detectron2's SemSegEvaluator and a one-hot torch pooling
baseline, measured in one run.

detectron2's ``SemSegEvaluator`` computes mIoU, fwIoU, mACC and pACC from one bincount of the
confusion matrix per image (plus Boundary IoU on detectron2 main): the script times its update as
detectron2 v0.6 writes it (int64 maps, void -> C, one bincount) on the same label maps, and prints
the ratio of SegMetrics (all seven metrics) to it. It also times BF1 and BIoU at several tolerances
(their cost must not grow with the tolerance) and, when detectron2 imports, both evaluators end to
end (``process`` of logits and a GT file, then ``evaluate``).

The baseline is the straightforward implementation of the same definitions, written like the
reference evaluator (Auto-Seg-Loss ``mmseg/core/evaluation/utils.py``): one-hot (C, H, W) float
maps, edges by 3x3 average pooling, tolerance by (2t+1)^2 max pooling, trimap and BF1 counts per
class channel; Boundary IoU by min pooling (as separable (k,1)/(1,k) max pools: a 93x93 2-D max
pool would take minutes per image). Both implementations must give the same numbers; the script
checks it, then prints seconds per image, the speed ratio and the peak RSS.

    python benchmarks/bench_eval.py                   # 1024x2048, 19 classes (Cityscapes-like)
    python benchmarks/bench_eval.py --images 4 --baseline-images 1
"""
import argparse
import math
import resource
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segloss_d2.evaluation.metrics import ALL_METRICS, SegMetrics

IGNORE = 255


def make_scene(rng, num_classes, height, width):
    """A Cityscapes-like (pred, gt) pair of uint8 label maps: large smooth regions, small objects,
    a void band at the bottom and void blobs; the prediction has shifted boundaries and errors."""
    small = (height // 4, width // 4)

    def smooth(cells, scale):
        noise = rng.standard_normal((num_classes, *cells)).astype(np.float32) * scale
        return np.stack([cv2.resize(n, small[::-1], interpolation=cv2.INTER_CUBIC) for n in noise])

    field = smooth((height // 128, width // 128), 1.0)
    gt = field.argmax(0).astype(np.uint8)
    pred = (field + smooth((height // 16, width // 16), 0.35)).argmax(0).astype(np.uint8)
    for _ in range(60):  # small objects (poles, signs, people), sometimes missed or mislabelled
        h, w = rng.integers(3, 25), rng.integers(2, 12)
        y, x = rng.integers(0, small[0] - h), rng.integers(0, small[1] - w)
        cls = rng.integers(0, num_classes)
        gt[y : y + h, x : x + w] = cls
        if rng.random() < 0.7:
            wrong = rng.random() < 0.2
            pred[y : y + h, x + 1 : x + w + 1] = (cls + 1) % num_classes if wrong else cls
    gt = cv2.resize(gt, (width, height), interpolation=cv2.INTER_NEAREST)
    pred = cv2.resize(pred, (width, height), interpolation=cv2.INTER_NEAREST)
    gt[-height // 10 :] = IGNORE  # ego vehicle
    for _ in range(10):
        y, x = rng.integers(0, height - 40), rng.integers(0, width - 40)
        cv2.circle(gt, (int(x), int(y)), int(rng.integers(5, 30)), IGNORE, -1)
    return pred, gt


class OneHotBaseline:
    """Same metrics with one-hot float maps and torch pooling (reference-style)."""

    def __init__(self, num_classes, tolerance, drop_background=False):
        self.c, self.tol, self.drop_bg = num_classes, tolerance, drop_background
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.conf_b = torch.zeros_like(self.conf)
        self.bf1 = torch.zeros(4, num_classes, dtype=torch.int64)
        self.biou = torch.zeros(2, num_classes, dtype=torch.int64)
        self.boundary_iou_seconds = 0.0  # part of the update time spent on Boundary IoU

    def one_hot(self, x):  # (H, W) labels -> (1, C, H, W) float, invalid labels all-zero
        x = torch.where(x < self.c, x, torch.full_like(x, self.c)).long()
        out = torch.zeros(1, self.c + 1, *x.shape)
        return out.scatter_(1, x[None, None], 1.0)[:, :-1]

    @staticmethod
    def edge(y):
        avg = F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
        return (y != avg).float() * y

    def dilate(self, y):
        return F.max_pool2d(y, 2 * self.tol + 1, stride=1, padding=self.tol) if self.tol else y

    @staticmethod
    def band(y, radius):  # Cheng et al.: y minus its erosion, outside = 0
        k = 2 * radius + 1
        neg = -F.pad(y, (radius,) * 4, value=0.0)
        eroded = -F.max_pool2d(F.max_pool2d(neg, (k, 1), stride=1), (1, k), stride=1)
        return y - eroded

    def update(self, pred, gt):
        pred, gt = torch.from_numpy(pred).long(), torch.from_numpy(gt).long()
        valid = gt < self.c
        self.conf += torch.bincount(gt[valid] * self.c + pred[valid], minlength=self.c**2).view(
            self.c, self.c)
        y, p = self.one_hot(gt), self.one_hot(pred)
        gt_edge, pred_edge = self.edge(y), self.edge(p)
        gt_dil, pred_dil = self.dilate(gt_edge), self.dilate(pred_edge)
        trimap = (gt_dil[:, 1:] if self.drop_bg else gt_dil).amax(1)[0] > 0
        mask = valid & trimap
        self.conf_b += torch.bincount(gt[mask] * self.c + pred[mask], minlength=self.c**2).view(
            self.c, self.c)
        dims = (0, 2, 3)
        self.bf1 += torch.stack([
            (pred_edge > 0).sum(dims), (gt_edge > 0).sum(dims),
            ((pred_edge * gt_dil) > 0).sum(dims), ((pred_dil * gt_edge) > 0).sum(dims),
        ])
        start = time.perf_counter()
        radius = max(1, int(round(0.02 * math.hypot(*gt.shape))))
        gb = self.band(y, radius) > 0
        pb = (self.band(p, radius) > 0) & valid
        self.biou += torch.stack([(gb & pb).sum(dims), (gb | pb).sum(dims)])
        self.boundary_iou_seconds += time.perf_counter() - start

    def compute(self):
        def iou(conf):
            tp = conf.diag().double()
            return tp / (conf.sum(0) + conf.sum(1) - conf.diag()).double()

        class_iou = iou(self.conf)
        freq = self.conf.sum(1).double() / self.conf.sum()
        acc = self.conf.diag().double() / self.conf.sum(1).double()
        n_fg, n_gt, m_fg, m_gt = self.bf1.double()
        prec, rec = m_fg / (n_fg + 1e-8), m_gt / n_gt
        bf1 = 2 * prec * rec / (prec + rec + 1e-8)
        bf1 = bf1[1:] if self.drop_bg else bf1
        present = freq > 0
        values = {
            "mIoU": class_iou.nanmean(), "fwIoU": (freq[present] * class_iou[present]).sum(),
            "mACC": acc.nanmean(), "pACC": self.conf.diag().sum().double() / self.conf.sum(),
            "BIoU": iou(self.conf_b).nanmean(), "BF1": bf1.nanmean(),
            "BoundaryIoU": (self.biou[0].double() / self.biou[1].double()).nanmean(),
        }
        return {k: 100 * float(v) for k, v in values.items()}


def d2_update(conf, pred, gt, num_classes):
    """detectron2 v0.6 ``SemSegEvaluator.process``, after the argmax and the file read: int64
    maps, void -> C, one bincount of the (C + 1) x (C + 1) confusion matrix."""
    pred = np.array(pred, dtype=np.int64)
    gt = np.array(gt, dtype=np.int64)
    gt[gt == IGNORE] = num_classes
    conf += np.bincount((num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
                        minlength=conf.size).reshape(conf.shape)


def evaluators_end_to_end(images, num_classes, tolerance, repeat):
    """Seconds per image of detectron2's SemSegEvaluator and SegLossEvaluator (all metrics),
    each fed the same logits and GT files; None if detectron2 does not import."""
    try:
        import tempfile

        from detectron2.data import DatasetCatalog, MetadataCatalog
        from detectron2.evaluation import SemSegEvaluator

        from segloss_d2.evaluation.evaluator import SegLossEvaluator
    except ImportError:
        return None
    name = "bench_eval_end_to_end"
    with tempfile.TemporaryDirectory() as tmp:
        dicts, outputs = [], []
        for i, (pred, gt) in enumerate(images):
            path = f"{tmp}/{i}.png"
            cv2.imwrite(path, gt)
            dicts.append({"file_name": path, "sem_seg_file_name": path,
                          "height": gt.shape[0], "width": gt.shape[1]})
            logits = torch.zeros(num_classes, *pred.shape)
            logits.scatter_(0, torch.from_numpy(pred).long()[None], 1.0)
            outputs.append({"sem_seg": logits})
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(stuff_classes=[str(c) for c in range(num_classes)],
                                      ignore_label=IGNORE, evaluator_type="sem_seg")
        seconds = {}
        for label, make in (
                ("detectron2 SemSegEvaluator", lambda: SemSegEvaluator(name, distributed=False)),
                ("SegLossEvaluator (7 metrics)", lambda: SegLossEvaluator(
                    name, tolerance=tolerance, distributed=False))):
            best = math.inf
            for _ in range(repeat):
                evaluator = make()
                evaluator.reset()
                start = time.perf_counter()
                for d, out in zip(dicts, outputs):
                    evaluator.process([d], [out])
                evaluator.evaluate()
                best = min(best, (time.perf_counter() - start) / len(dicts))
            seconds[label] = best
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    return seconds


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(metrics, images):
    start = time.perf_counter()
    for pred, gt in images:
        metrics.update(pred, gt)
    return (time.perf_counter() - start) / len(images)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images timed for SegMetrics")
    parser.add_argument("--baseline-images", type=int, default=1, help="images for the baseline")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--tolerance", type=int, default=5)
    parser.add_argument("--drop-background", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = [make_scene(rng, args.classes, args.height, args.width) for _ in range(args.images)]
    rss_data = peak_rss_mib()
    print(f"{args.images} images {args.height}x{args.width}, {args.classes} classes, "
          f"tolerance {args.tolerance}; torch threads {torch.get_num_threads()}, "
          f"cv2 threads {cv2.getNumThreads()}")

    settings = dict(tolerance=args.tolerance, drop_background=args.drop_background)
    SegMetrics(args.classes, **settings).update(*images[0])  # warm-up
    ours = SegMetrics(args.classes, **settings)
    ours_s = timed(ours, images)
    conf = np.zeros((args.classes + 1, args.classes + 1), dtype=np.int64)
    start = time.perf_counter()
    for pred, gt in images:
        d2_update(conf, pred, gt, args.classes)
    d2_s = (time.perf_counter() - start) / len(images)
    print(f"  detectron2 SemSegEvaluator update (v0.6, bincount) {d2_s:7.3f} s/image")
    print(f"  SegMetrics, all 7 metrics                          {ours_s:7.3f} s/image: "
          f"{ours_s / d2_s:.1f}x detectron2 (target <= 5x)")
    tolerances = sorted({args.tolerance, 100, 1000, 10**6})
    print("\n  BF1 and BIoU against the tolerance (s/image; must not grow with it):")
    for group in (["BF1"], ["BIoU"]):
        times = [timed(SegMetrics(args.classes, metrics=group, tolerance=t,
                                  drop_background=args.drop_background), images[:2])
                 for t in tolerances]
        print(f"  {group[0]:<5} " + "  ".join(f"tol {t}: {s_:.3f}" for t, s_ in
                                            zip(tolerances, times))
              + f"  (max/min {max(times) / min(times):.1f}x)")
    end_to_end = evaluators_end_to_end(images[:2], args.classes, args.tolerance, repeat=2)
    if end_to_end is None:
        print("\n  evaluators end to end: detectron2 not importable, skipped")
    else:
        d2_e2e = end_to_end["detectron2 SemSegEvaluator"]
        for label, sec in end_to_end.items():
            print(f"  {label:<30} end to end {sec:7.3f} s/image ({sec / d2_e2e:.1f}x)")
    rss_ours = peak_rss_mib()
    six = [m for m in ALL_METRICS if m != "BoundaryIoU"]  # the reference evaluator's metrics
    ours_six_s = timed(SegMetrics(args.classes, metrics=six, **settings), images)
    for group in (["mIoU", "fwIoU", "mACC", "pACC"], ["BIoU"], ["BF1"], ["BoundaryIoU"]):
        part = timed(SegMetrics(args.classes, metrics=group, **settings), images[:2])
        print(f"  SegMetrics {'/'.join(group):<22} {part:7.3f} s/image")

    subset = images[: args.baseline_images]
    baseline = OneHotBaseline(args.classes, args.tolerance, args.drop_background)
    with torch.no_grad():
        base_s = timed(baseline, subset)
    rss_base = peak_rss_mib()

    check = SegMetrics(args.classes, **settings)
    for pred, gt in subset:
        check.update(pred, gt)
    got, want = check.compute(), baseline.compute()
    print(f"\n{'metric':<12} {'SegMetrics':>12} {'baseline':>12}")
    for key in ALL_METRICS:
        print(f"{key:<12} {got[key]:12.6f} {want[key]:12.6f}")
    mismatch = [k for k in ALL_METRICS
                if not math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-9)]

    base_six_s = base_s - baseline.boundary_iou_seconds / len(subset)
    print(f"\n{'s/image':<28} {'SegMetrics':>10} {'baseline':>10} {'speed-up':>9}")
    for name, mine, theirs in [("all 7 metrics", ours_s, base_s),
                               ("6 reference metrics", ours_six_s, base_six_s)]:
        print(f"{name:<28} {mine:10.3f} {theirs:10.3f} {theirs / mine:8.1f}x")
    print(f"(SegMetrics on {args.images} images, baseline on {len(subset)}; "
          "targets: >= 50x, <= 0.3 s/image)")
    print(f"peak RSS:   {rss_data:.0f} MiB after making the data, {rss_ours:.0f} MiB after "
          f"SegMetrics (+{rss_ours - rss_data:.0f}), {rss_base:.0f} MiB after the baseline\n")
    if mismatch:
        raise SystemExit(f"SegMetrics and the baseline disagree on {mismatch}")
    print("SegMetrics and the baseline agree on all metrics.")


if __name__ == "__main__":
    main()
