import json
import os

import numpy as np
import pytest
import torch

from segloss_d2.search.ppo import PPOController
from segloss_d2.search.state import SearchState, config_fingerprint

CONFIG = {"target_metric": "mIoU", "iterations": 2, "samples_per_iter": 3, "seed": 1}


def _record(iteration, index, theta, reward=0.5, **extra):
    record = {
        "iteration": iteration,
        "index": index,
        "theta": [float(v) for v in theta],
        "control_points": {"and": [[0.25, 0.25]]},
        "reward": reward,
        "metrics": {"mIoU": reward, "mACC": 0.7},
        "seconds": 1.5,
        "status": "ok",
    }
    record.update(extra)
    return record


def _snapshot(directory):
    """File name -> (bytes, mtime_ns) of everything in ``directory``."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            out[name] = (f.read(), os.stat(path).st_mtime_ns)
    return out


@pytest.fixture
def started(tmp_path):
    """A search directory with a checkpoint of iteration 0 and two of its three trials logged."""
    state = SearchState.create(str(tmp_path), CONFIG)
    controller = PPOController(2, 0.5, seed=0)
    samples = controller.sample(3)
    state.save_controller(0, controller.state_dict(), samples)
    state.append_trial(_record(0, 0, samples[0].tolist(), reward=0.4))
    state.append_trial(_record(0, 2, samples[2].tolist(), reward=0.6))
    return tmp_path, samples


def test_fingerprint_is_canonical():
    assert config_fingerprint({"a": 1, "b": [1, 2]}) == config_fingerprint({"b": (1, 2), "a": 1})
    assert config_fingerprint({"a": 1}) != config_fingerprint({"a": 2})
    with pytest.raises(TypeError):
        config_fingerprint({"a": object()})


def test_create_writes_meta_and_empty_log(tmp_path):
    out = tmp_path / "run"
    state = SearchState.create(str(out), CONFIG)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["fingerprint"] == config_fingerprint(CONFIG) and meta["config"] == CONFIG
    assert (out / "trials.jsonl").read_bytes() == b""
    assert state.all_trials() == [] and state.best_trial() is None
    assert state.load_controller() is None


def test_resume_round_trip(started):
    directory, samples = started
    state = SearchState.resume(str(directory), CONFIG)
    assert sorted(state.finished_trials(0)) == [0, 2]
    assert state.finished_trials(1) == {}
    ckpt = state.load_controller()
    assert ckpt["iteration"] == 0 and torch.equal(ckpt["samples"], samples)
    restored = PPOController(2, 0.5, seed=0)
    restored.load_state_dict(ckpt["controller"])
    assert restored.iteration == 0
    # the restored log keeps growing in place
    state.append_trial(_record(0, 1, samples[1].tolist(), reward=0.1))
    again = SearchState.resume(str(directory), CONFIG)
    assert [r["index"] for r in again.all_trials()] == [0, 2, 1]
    assert again.all_trials()[2]["control_points"] == {"and": [[0.25, 0.25]]}


def test_append_trial_validates_and_converts(tmp_path):
    state = SearchState.create(str(tmp_path), CONFIG)
    theta = [0.1, 0.2]
    state.append_trial(_record(0, 0, theta, reward=np.float32(0.25), metrics={"x": np.float64(1)}))
    assert state.all_trials()[0]["reward"] == 0.25
    before = (tmp_path / "trials.jsonl").read_bytes()
    bad = [
        _record(0, 0, theta),  # duplicate
        _record(0, 1, theta, reward=float("nan")),
        _record(0, 1, theta, status="exploded"),
        _record(-1, 1, theta),
        {"iteration": 0, "index": 1, "theta": theta},
    ]
    for record in bad:
        with pytest.raises(ValueError):
            state.append_trial(record)
    with pytest.raises(TypeError):
        state.append_trial(_record(0, 1, theta, extra=object()))
    assert (tmp_path / "trials.jsonl").read_bytes() == before


def test_best_trial_prefers_ok_and_later_on_ties(tmp_path):
    state = SearchState.create(str(tmp_path), CONFIG)
    state.append_trial(_record(0, 2, [0.1], reward=0.7))
    state.append_trial(_record(0, 0, [0.2], reward=0.9, status="diverged"))
    state.append_trial(_record(1, 1, [0.3], reward=0.7))
    state.append_trial(_record(0, 1, [0.4], reward=0.3))
    best = state.best_trial()
    assert (best["iteration"], best["index"]) == (1, 1)


def test_torn_last_line_is_dropped_on_resume(started):
    directory, samples = started
    path = directory / "trials.jsonl"
    complete = path.read_bytes()
    torn = json.dumps(_record(0, 1, samples[1].tolist()))[:37]
    path.write_bytes(complete + torn.encode())
    state = SearchState.resume(str(directory), CONFIG)
    assert sorted(state.finished_trials(0)) == [0, 2]
    assert path.read_bytes() == complete  # repaired, so that the next append starts a fresh line
    state.append_trial(_record(0, 1, samples[1].tolist()))
    assert sorted(SearchState.resume(str(directory), CONFIG).finished_trials(0)) == [0, 1, 2]


def test_save_controller_is_atomic_and_monotone(started):
    directory, samples = started
    state = SearchState.resume(str(directory), CONFIG)
    state.append_trial(_record(0, 1, samples[1].tolist()))  # iteration 0 complete
    controller = PPOController(2, 0.5, seed=0)
    state.save_controller(1, controller.state_dict(), None)
    assert not (directory / "controller.pt.tmp").exists()
    with pytest.raises(ValueError, match="older"):
        state.save_controller(0, controller.state_dict(), samples)
    assert SearchState.resume(str(directory), CONFIG).load_controller()["iteration"] == 1


def test_fresh_start_in_used_directory_raises_and_keeps_files(started):
    directory, _ = started
    (directory / "log.txt").write_text("detectron2 log")  # foreign files are fine
    before = _snapshot(directory)
    with pytest.raises(FileExistsError, match="already holds search state"):
        SearchState.create(str(directory), CONFIG)
    assert _snapshot(directory) == before


def test_overwrite_discards_only_search_files(started):
    directory, _ = started
    (directory / "log.txt").write_text("detectron2 log")
    state = SearchState.create(str(directory), CONFIG, overwrite=True)
    assert state.all_trials() == [] and state.load_controller() is None
    state.close()
    assert sorted(os.listdir(directory)) == ["log.txt", "meta.json", "trials.jsonl"]


def test_create_in_directory_with_other_files_only(tmp_path):
    (tmp_path / "config.yaml").write_text("a: 1")
    SearchState.create(str(tmp_path), CONFIG)


def test_resume_foreign_config_raises_and_keeps_files(started):
    directory, _ = started
    before = _snapshot(directory)
    other = dict(CONFIG, target_metric="BF1")
    with pytest.raises(ValueError, match=r"another search.*target_metric"):
        SearchState.resume(str(directory), other)
    assert _snapshot(directory) == before


def test_resume_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no search state"):
        SearchState.resume(str(tmp_path / "nothing"), CONFIG)


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d: (d / "controller.pt").write_bytes(b"\x00garbage"), "controller.pt is corrupt"),
        (lambda d: (d / "controller.pt").write_bytes(
            (d / "controller.pt").read_bytes()[:200]), "controller.pt is corrupt"),
        (lambda d: torch.save({"something": 1}, str(d / "controller.pt")), "not a controller"),
        (lambda d: (d / "meta.json").write_text("{not json"), "meta.json is corrupt"),
        (lambda d: (d / "trials.jsonl").write_bytes(
            b"{bad line}\n" + (d / "trials.jsonl").read_bytes()), "line 1 is corrupt"),
        (lambda d: os.remove(d / "trials.jsonl"), "missing"),
        (lambda d: os.remove(d / "controller.pt"), "no controller.pt"),
    ],
)
def test_resume_corrupt_directory_raises_and_keeps_files(started, damage, match):
    directory, _ = started
    damage(directory)
    before = _snapshot(directory)
    with pytest.raises(ValueError, match=match):
        SearchState.resume(str(directory), CONFIG)
    assert _snapshot(directory) == before


def test_resume_rejects_trials_inconsistent_with_checkpoint(started):
    directory, samples = started
    path = directory / "trials.jsonl"
    good = path.read_bytes()
    for record in (_record(1, 0, samples[0].tolist()),  # ahead of the checkpoint
                   _record(0, 1, [0.123, 0.456])):  # not the checkpointed sample
        path.write_bytes(good + (json.dumps(record) + "\n").encode())
        with pytest.raises(ValueError, match="cannot resume"):
            SearchState.resume(str(directory), CONFIG)


def test_resume_rejects_checkpoint_of_other_search(started, tmp_path_factory):
    directory, _ = started
    other_dir = tmp_path_factory.mktemp("other")
    other = SearchState.create(str(other_dir), dict(CONFIG, seed=2))
    other.save_controller(0, PPOController(2, 0.5).state_dict(), None)
    os.replace(other_dir / "controller.pt", directory / "controller.pt")
    with pytest.raises(ValueError, match="another search"):
        SearchState.resume(str(directory), CONFIG)
