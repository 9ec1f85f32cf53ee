import json

import pytest
import torch

from segloss_d2.surrogate.params import (
    SurrogateParams,
    curves_per_metric,
    identity_params,
    list_presets,
    load_params,
    save_params,
    theta_dim,
)


def test_presets_exist_and_load():
    assert list_presets() == ["voc_bf1", "voc_biou", "voc_fwiou", "voc_gacc", "voc_macc",
                              "voc_miou"]
    assert load_params("voc_bf1").num_pieces == [1]
    fwiou = load_params("voc_fwiou")
    assert fwiou.control_points[0][0][0] == pytest.approx(0.11907931)
    assert "BIoU" in fwiou.provenance["note"]
    assert "0.221453928" in load_params("voc_gacc").provenance["note"]
    assert load_params("voc_gacc").control_points == load_params("voc_macc").control_points
    assert load_params("voc_miou").control_points[0][0][0] == pytest.approx(5.69728440e-04)


def test_sizes():
    assert [curves_per_metric(m) for m in ("mIoU", "fwIoU", "BIoU", "mACC", "pACC", "BF1")] == [
        2, 2, 2, 1, 1, 4]
    assert theta_dim("mIoU") == 12 and theta_dim("mACC") == 6 and theta_dim("BF1") == 8
    assert theta_dim("mIoU", 3) == 20
    with pytest.raises(ValueError, match="unknown metric 'IoU'"):
        curves_per_metric("IoU")


def test_round_trip_from_theta(tmp_path):
    params = SurrogateParams.from_theta(["mIoU", "BF1"], [[0.3] * 12, [[0.5, 0.4]] * 4],
                                        weights=[1.0, 0.5], reward=0.7, provenance={"seed": 1})
    assert params.num_pieces == [2, 1]
    assert params.control_points[0][0][:4] == pytest.approx([0.3, 0.3, 0.51, 0.51])
    path = tmp_path / "sub" / "best.json"
    save_params(params, path)
    loaded = load_params(path)
    assert loaded == params
    assert json.loads(path.read_text())["format_version"] == 1
    assert load_params(str(path), expected_metrics=["BF1", "mIoU"]).reward == 0.7


def test_identity_params():
    params = identity_params(["mACC", "BF1"])
    assert params.control_points[0] == [[0.25, 0.25, 0.5, 0.5, 0.75, 0.75]]
    assert params.control_points[1] == [[0.5, 0.5]] * 4


def _write(tmp_path, data):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(format_version=2), "format_version must be 1, got 2"),
        (lambda d: d.pop("format_version"), "format_version must be 1, got None"),
        (lambda d: d["terms"][0].update(metric="mIoUU"), r"metrics\[0\]: unknown metric 'mIoUU'"),
        (lambda d: d["terms"][0].update(num_pieces=3), r"control_points\[0\]\[0\].*needs 10"),
        (lambda d: d["terms"][0]["control_points"][0].pop(), r"needs 6 numbers .*, got 5"),
        (lambda d: d["terms"][0]["control_points"].pop(), "must hold 2 curve"),
        (lambda d: d["terms"][0]["control_points"][1].__setitem__(2, 0.1), "strictly increasing"),
        (lambda d: d["terms"][0]["control_points"][0].__setitem__(1, 1.5), "outside"),
        (lambda d: d["terms"][0].update(weight="one"), "weights"),
        (lambda d: d["terms"][0].update(theta=[[0.5] * 6]), "thetas"),
        (lambda d: d["terms"][0].pop("theta"), "exactly the fields"),
        (lambda d: d.update(terms=[]), "non-empty"),
        (lambda d: d.update(extra=1), "unknown top-level"),
    ],
)
def test_corrupt_files_raise_naming_file_and_field(tmp_path, edit, match):
    data = load_params("voc_miou").to_dict()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=match) as info:
        load_params(path)
    assert path in str(info.value)


def test_not_json_and_missing(tmp_path):
    path = _write(tmp_path, "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_params(path)
    with pytest.raises(FileNotFoundError, match="presets"):
        load_params("voc_nonexistent")


def test_expected_metric_and_pieces(tmp_path):
    with pytest.raises(ValueError, match=r"holds parameters for \['BIoU'\], expected \['mIoU'\]"):
        load_params("voc_biou", expected_metrics="mIoU")
    with pytest.raises(ValueError, match="expected 2"):
        load_params("voc_bf1", expected_num_pieces=2)


# ----------------------------------------------------------------------------------------------
# Curve constraints

CONSTRAINTS = ("all", "no_truth_table", "no_monotonic", "none")


def test_theta_dim_under_constraints():
    # 4n-2 numbers per curve with the truth table, 4n without (free end heights)
    for c, extra in (("all", 0), ("no_monotonic", 0), ("no_truth_table", 2), ("none", 2)):
        assert theta_dim("BF1", None, c) == 4 * (2 + extra)
        assert theta_dim("mIoU", None, c) == 2 * (6 + extra)
        assert theta_dim("mACC", 3, c) == 10 + extra


def _random_params(constraints, seed=0, metrics=("mIoU", "BF1", "mACC")):
    gen = torch.Generator().manual_seed(seed)
    thetas = [torch.rand(theta_dim(m, None, constraints), generator=gen).tolist() for m in metrics]
    return SurrogateParams.from_theta(list(metrics), thetas, constraints=constraints, reward=0.5)


@pytest.mark.parametrize("constraints", CONSTRAINTS)
def test_from_theta_and_json_round_trip_keep_constraints(tmp_path, constraints):
    params = _random_params(constraints)
    assert params.constraints == [constraints] * 3
    free_ends = constraints in ("no_truth_table", "none")
    assert [len(c) for c in params.control_points[1]] == [2 + 2 * free_ends] * 4  # BF1, 1 piece
    assert [len(c) for c in params.thetas[0]] == [6 + 2 * free_ends] * 2  # mIoU, 2 pieces
    path = tmp_path / "p.json"
    save_params(params, path)
    terms = json.loads(path.read_text())["terms"]
    if constraints == "all":  # the paper's files stay as they were
        assert all("constraints" not in t for t in terms)
    else:
        assert [t["constraints"] for t in terms] == [constraints] * 3
    loaded = load_params(path)
    assert loaded == params and loaded.constraints == [constraints] * 3


def test_mixed_constraints_per_metric_round_trip(tmp_path):
    a, b = _random_params("none", 1, ["mIoU"]), _random_params("all", 2, ["BF1"])
    params = SurrogateParams(metrics=["mIoU", "BF1"], weights=[1.0, 0.5], num_pieces=[2, 1],
                             thetas=a.thetas + b.thetas,
                             control_points=a.control_points + b.control_points,
                             constraints=["none", "all"])
    save_params(params, tmp_path / "mixed.json")
    assert load_params(tmp_path / "mixed.json").constraints == ["none", "all"]
    # the constraints decide which layout is valid: swapped, the curves do not fit
    with pytest.raises(ValueError, match=r"control_points\[0\]\[0\] \(mIoU\).*needs 6 numbers"):
        SurrogateParams(metrics=["mIoU", "BF1"], weights=[1.0, 0.5], num_pieces=[2, 1],
                        thetas=[None, None], control_points=params.control_points,
                        constraints=["all", "none"])


def test_file_without_constraints_field_loads_as_all(tmp_path):
    data = load_params("voc_miou").to_dict()
    assert "constraints" not in data["terms"][0]
    path = _write(tmp_path, data)
    assert load_params(path).constraints == ["all"]
    # an explicit "all" is the same
    data["terms"][0]["constraints"] = "all"
    assert load_params(_write(tmp_path, data)) == load_params(path)
    # without the field, free-end-height curves are read under "all", and rejected
    free = _random_params("no_truth_table", metrics=["mIoU"]).to_dict()
    del free["terms"][0]["constraints"]
    with pytest.raises(ValueError, match=r"needs 6 numbers .*\(constraints 'all'\), got 8"):
        load_params(_write(tmp_path, free))


def test_non_monotone_curves_need_a_setting_without_monotonicity(tmp_path):
    data = _random_params("no_monotonic", 3, ["mACC"]).to_dict()
    data["terms"][0]["theta"] = None
    data["terms"][0]["control_points"] = [[0.1, 0.5, 0.3, 0.4, 0.7, 0.9]]
    assert load_params(_write(tmp_path, data)).constraints == ["no_monotonic"]
    del data["terms"][0]["constraints"]
    with pytest.raises(ValueError, match="non-decreasing"):
        load_params(_write(tmp_path, data))


@pytest.mark.parametrize("bad", ["monotone", "", 3, None])
def test_bad_constraints_value_raises_naming_it(tmp_path, bad):
    with pytest.raises(ValueError, match=rf"got {bad!r}"):
        SurrogateParams.from_theta(["mACC"], [[0.5] * 6], constraints=bad)
    with pytest.raises(ValueError, match=rf"constraints\[0\] \(mACC\): .*got {bad!r}"):
        SurrogateParams(metrics=["mACC"], weights=[1.0], num_pieces=[2], thetas=[None],
                        control_points=[[[0.25, 0.25, 0.5, 0.5, 0.75, 0.75]]], constraints=[bad])
    data = load_params("voc_macc").to_dict()
    data["terms"][0]["constraints"] = bad
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=rf"constraints\[0\] \(mACC\): .*got {bad!r}") as info:
        load_params(path)
    assert path in str(info.value)


def test_constraints_list_must_match_metrics():
    params = _random_params("none", metrics=["mIoU"])
    with pytest.raises(ValueError, match="constraints must be a list with one entry per metric"):
        SurrogateParams(metrics=["mIoU"], weights=[1.0], num_pieces=[2], thetas=params.thetas,
                        control_points=params.control_points, constraints=["none", "none"])


def test_theta_length_follows_constraints():
    with pytest.raises(ValueError, match="theta for mACC with 2 piece"):
        SurrogateParams.from_theta(["mACC"], [[0.5] * 6], constraints="none")
    params = _random_params("none", metrics=["mACC"])
    params.thetas[0][0] = params.thetas[0][0][:6]
    with pytest.raises(ValueError, match=r"thetas\[0\]\[0\] \(mACC\) must be 8 numbers"):
        params.validate()


@pytest.mark.parametrize("constraints", CONSTRAINTS)
def test_theta_must_describe_the_stored_control_points(tmp_path, constraints):
    params = _random_params(constraints, seed=3)
    data = params.to_dict()
    # written with ~7 significant digits (float32, or another tool): still the same curves
    rounded = json.loads(json.dumps(data))
    for term in rounded["terms"]:
        term["control_points"] = [[float(f"{v:.7g}") for v in cp] for cp in term["control_points"]]
    load_params(_write(tmp_path, rounded))
    # one control point of the BF1 term's third curve moved: θ and control points disagree
    data["terms"][1]["control_points"][2][0] += 1e-3
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=r"terms\[1\] \(BF1\): theta\[2\] and control_points\[2\] "
                                         r"describe different curves: .*control point 0.*"
                                         r"\|difference\| 0\.001 > 1e-06") as info:
        load_params(path)
    assert path in str(info.value) and "theta to null" in str(info.value)
    data["terms"][1]["theta"] = None  # control points alone are fine
    assert load_params(_write(tmp_path, data)).thetas[1] is None
    # the same check on construction
    with pytest.raises(ValueError, match=r"SurrogateParams: terms\[0\] \(mIoU\): theta\[1\]"):
        SurrogateParams(metrics=["mIoU"], weights=[1.0], num_pieces=[2],
                        thetas=[params.thetas[0]],
                        control_points=[[params.control_points[0][0]] * 2],  # curve 0 twice
                        constraints=[constraints])


@pytest.mark.parametrize("weights, match", [
    ([-0.5, 1.0], r"weights\[0\] \(mIoU\) must be a finite number >= 0, got -0\.5"),
    ([1.0, float("inf")], r"weights\[1\] \(BF1\) must be a finite number >= 0, got inf"),
    ([0.0, 0.0], r"weights are all 0 \(\{'mIoU': 0\.0, 'BF1': 0\.0\}\): the loss would be "
                 r"identically 0"),
])
def test_weights_must_be_nonnegative_and_not_all_zero(tmp_path, weights, match):
    data = _random_params("all", metrics=("mIoU", "BF1")).to_dict()
    for term, w in zip(data["terms"], weights):
        term["weight"] = w
    path = _write(tmp_path, json.loads(json.dumps(data).replace("Infinity", "1e999")))
    with pytest.raises(ValueError, match=match) as info:
        load_params(path)
    assert path in str(info.value)
    data["terms"][0]["weight"], data["terms"][1]["weight"] = 0.0, 2.0  # one zero weight is fine
    assert load_params(_write(tmp_path, data)).weights == [0.0, 2.0]


def test_every_shipped_params_file_loads():
    import glob
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = [f for pattern in ("segloss_d2/**/*.json", "configs/**/*.json", "docs/**/*.json")
             for f in glob.glob(os.path.join(root, pattern), recursive=True)
             if '"terms"' in open(f, encoding="utf-8").read()]
    assert len(files) >= len(list_presets())
    for f in files:
        load_params(f)
