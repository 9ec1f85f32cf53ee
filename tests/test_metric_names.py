"""segloss_d2.metric_names: one vocabulary, the paper's spellings accepted on input everywhere."""
import pytest

from segloss_d2.metric_names import ALIASES, METRICS, canonical_metric, canonical_metrics


def test_names_are_detectron2s_where_it_has_them():
    assert METRICS == ("mIoU", "fwIoU", "mACC", "pACC", "BIoU", "BF1")


@pytest.mark.parametrize("name,expected", [
    ("mIoU", "mIoU"), ("miou", "mIoU"), (" MIOU ", "mIoU"), ("FWIoU", "fwIoU"),
    ("fwIoU", "fwIoU"), ("mAcc", "mACC"), ("mACC", "mACC"), ("gAcc", "pACC"), ("pACC", "pACC"),
    ("biou", "BIoU"), ("bf1", "BF1"),
])
def test_aliases_and_any_case(name, expected):
    assert canonical_metric(name) == expected


@pytest.mark.parametrize("bad", ["Dice", "", None, 3, "BoundaryIoU"])
def test_unknown_metric_names_the_value_and_the_choices(bad):
    with pytest.raises(ValueError, match=r"SURROGATE.METRICS\[1\]: unknown metric") as e:
        canonical_metrics(["mIoU", bad], "SURROGATE.METRICS")
    assert repr(bad) in str(e.value) and "fwIoU" in str(e.value) and "gAcc" in str(e.value)


def test_every_alias_maps_into_the_vocabulary():
    assert set(ALIASES.values()) <= set(METRICS)


def test_one_vocabulary_everywhere():
    """Params, losses, the evaluator and the search space all speak METRICS."""
    pytest.importorskip("detectron2")
    import torch

    from segloss_d2.evaluation.metrics import ALL_METRICS, SegMetrics
    from segloss_d2.search.space import SearchSpace
    from segloss_d2.surrogate.loss import SurrogateLoss
    from segloss_d2.surrogate.params import identity_params, load_params

    assert ALL_METRICS[:6] == METRICS
    assert load_params("voc_macc").metrics == ["mACC"]  # a preset
    params = identity_params(["gAcc", "FWIoU"])  # the paper's spellings on input
    assert params.metrics == ["pACC", "fwIoU"]
    values, _ = SurrogateLoss(params, num_classes=3).surrogates(
        torch.randn(1, 3, 8, 8), torch.randint(0, 3, (1, 8, 8)))
    assert set(values) == {"pACC", "fwIoU"}
    assert SearchSpace(["mAcc", "BF1"]).metrics == ["mACC", "BF1"]
    assert SegMetrics(3, metrics=["gAcc", "mIoU"]).metrics == ("mIoU", "pACC")


def test_each_metric_record_agrees_with_its_preset_and_the_loss():
    """One record per metric (METRIC_INFO): its preset file holds that metric with its number of
    curves, and the surrogate loss of its identity curves evaluates."""
    torch = pytest.importorskip("torch")
    from segloss_d2.metric_names import METRIC_INFO
    from segloss_d2.surrogate import SurrogateLoss, identity_params, load_params

    assert ALIASES == {"FWIoU": "fwIoU", "mAcc": "mACC", "gAcc": "pACC"}
    logits, labels = torch.randn(1, 3, 8, 8), torch.randint(0, 3, (1, 8, 8))
    for name, info in METRIC_INFO.items():
        preset = load_params(info.preset)
        assert preset.metrics == [name]
        assert len(preset.control_points[0]) == info.curves
        assert identity_params([name]).num_pieces == [info.default_pieces]
        loss = SurrogateLoss(identity_params([name]), num_classes=3, tolerance=1)
        assert torch.isfinite(loss(logits, labels))
