import json

import pytest

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
    assert [curves_per_metric(m) for m in ("mIoU", "FWIoU", "BIoU", "mAcc", "gAcc", "BF1")] == [
        2, 2, 2, 1, 1, 4]
    assert theta_dim("mIoU") == 12 and theta_dim("mAcc") == 6 and theta_dim("BF1") == 8
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
    params = identity_params(["mAcc", "BF1"])
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
        (lambda d: d["terms"][0].update(metric="mIOU"), r"metrics\[0\]: unknown metric 'mIOU'"),
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
