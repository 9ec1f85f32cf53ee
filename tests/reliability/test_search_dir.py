"""The search directory under attack: a second process, kill -9, damaged logs, another runtime,
unreachable weights, unwritable directories, a search whose every trial diverges.

Each test reproduces one case of the reliability sweep through ``tools/search_net.py`` (in this
process, or as real subprocesses where another process is the point) on the tiny shapes config.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("detectron2")

from segloss_d2.search import state as state_module  # noqa: E402
from segloss_d2.search.runner import _TensorBoard, search_runtime  # noqa: E402
from segloss_d2.search.state import SearchState  # noqa: E402

from .._tools import load_tool  # noqa: E402
from ..search._tiny import REPO, TINY_OPTS, TINY_SEARCH_CONFIG, settings_of, strip_timing  # noqa: E402

# 2 iterations x 3 candidates, one candidate per group (so a hang or kill lands between trials).
OPTS = TINY_OPTS + ["SEARCH.MODELS_PER_WORKER", 1, "MODEL.DEVICE", "cpu"]
WEIGHTS_URL = "http://127.0.0.1:9/DeepLab/R-103.pkl"  # the discard port: refused, like offline



def _argv(out, *extra, resume=False, flags=()):
    opts = OPTS + ["OUTPUT_DIR", str(out)] + list(extra)
    return (["--config-file", TINY_SEARCH_CONFIG] + (["--resume"] if resume else [])
            + list(flags) + [str(v) for v in opts])


def _search(out, *extra, resume=False, flags=()):
    tool = load_tool("search_net")
    return tool.main(tool.argument_parser().parse_args(_argv(out, *extra, resume=resume,
                                                             flags=flags)))


def _refused(out, *extra, resume=False, flags=()):
    """Run search_net expecting a refusal; returns its message."""
    with pytest.raises(SystemExit) as e:
        _search(out, *extra, resume=resume, flags=flags)
    message = str(e.value)
    assert message.startswith("search_net.py: error: "), message
    return message


def _trials(out):
    with open(os.path.join(out, "trials.jsonl")) as f:
        return [json.loads(line) for line in f]


def _snapshot(directory):
    files = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            files[name] = f.read()
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny search run straight through in this process."""
    out = tmp_path_factory.mktemp("reference")
    _search(out)
    return out


def _copy(reference, tmp_path, name="copy"):
    out = tmp_path / name
    shutil.copytree(reference, out)
    return out


# A search_net process whose third trial hangs (after two trials are logged), until killed.
_HANGING_SEARCH = """
import runpy, sys, time
from segloss_d2.search import backends
real, calls = backends.train_candidates, []
def hang_at_the_third(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        print("SEGLOSS-TEST-HANGING", flush=True)
        time.sleep(3600)
    return real(*args, **kwargs)
backends.train_candidates = hang_at_the_third
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _start_hanging_search(out):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANGING_SEARCH, os.path.join(REPO, "tools", "search_net.py"),
         *_argv(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, hanging = [], threading.Event()

    def read():
        for line in proc.stdout:
            output.append(line)
            if "SEGLOSS-TEST-HANGING" in line:
                hanging.set()

    threading.Thread(target=read, daemon=True).start()
    if not hanging.wait(timeout=300):
        proc.kill()
        raise AssertionError("the search subprocess never reached its third trial:\n"
                             + "".join(output[-40:]))
    return proc


@pytest.mark.slow
def test_second_process_is_refused_and_kill_9_resumes_exactly(reference, tmp_path):
    """Case 1 (two processes on one directory) and the kill -9 + --resume guarantee."""
    out = tmp_path / "raced"
    first = _start_hanging_search(out)
    try:
        assert len(_trials(out)) == 2
        before = _snapshot(out)
        message = _refused(out, resume=True)  # the race: a --resume while it runs
        assert "in use by another search" in message and f"pid {first.pid}" in message
        assert "search_net.py" in message  # the holder's command line
        message = _refused(out)  # a fresh start is refused for the same reason
        assert f"pid {first.pid}" in message
        assert _snapshot(out) == before  # the refused processes wrote nothing
    finally:
        first.kill()  # kill -9
        first.wait()
    _search(out, resume=True)  # the kernel released the lock of the dead process
    assert [strip_timing(r) for r in _trials(out)] == [strip_timing(r)
                                                       for r in _trials(reference)]
    assert not os.path.exists(os.path.join(out, "search.lock"))
    runs = json.load(open(os.path.join(out, "meta.json")))["runs"]
    assert [r["trials_before"] for r in runs] == [0, 2]


def test_damaged_line_of_a_completed_iteration_is_refused(reference, tmp_path):
    """Case 2: ``truncate -s -30 trials.jsonl`` after the search finished."""
    out = _copy(reference, tmp_path)
    path = out / "trials.jsonl"
    os.truncate(path, os.path.getsize(path) - 30)
    before = _snapshot(out)
    message = _refused(out, resume=True)
    assert "lacks trials [(1, 2)]" in message and "line 6" in message
    assert "--overwrite" in message
    assert _snapshot(out) == before
    # a whole line deleted in the middle is refused as well
    lines = (reference / "trials.jsonl").read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    assert "lacks trials [(0, 1)]" in _refused(out, resume=True)


def test_torn_line_of_the_running_iteration_is_dropped_with_a_warning(tmp_path, caplog):
    state = SearchState.create(str(tmp_path), {"a": 1})
    samples = __import__("torch").rand(3, 2)
    state.save_controller(0, {"c": 1}, samples)
    record = {"iteration": 0, "index": 0, "theta": samples[0].tolist(), "control_points": None,
              "reward": 0.5, "metrics": {}, "seconds": None, "status": "ok"}
    state.append_trial(record)
    state.close()
    path = tmp_path / "trials.jsonl"
    line = json.dumps(dict(record, index=1, theta=samples[1].tolist()))
    path.write_bytes(path.read_bytes() + line[:25].encode())
    with caplog.at_level("WARNING", logger=state_module.__name__):
        resumed = SearchState.resume(str(tmp_path), {"a": 1})
    assert sorted(resumed.finished_trials(0)) == [0]
    assert "dropped its torn last line" in caplog.text and "runs again" in caplog.text
    resumed.close()
    # a complete record that lost only its newline is kept (and the newline restored)
    path.write_bytes(path.read_bytes() + line.encode())
    resumed = SearchState.resume(str(tmp_path), {"a": 1})
    assert sorted(resumed.finished_trials(0)) == [0, 1]
    assert path.read_bytes().endswith(b"\n")
    resumed.close()


def test_resume_with_another_runtime_is_recorded_and_warned(tmp_path, caplog):
    """Case 3: another backend or thread count changes the numbers at round-off."""
    config = {"a": 1}
    SearchState.create(str(tmp_path), config, runtime={"backend": "local", "threads": 2}).close()
    with caplog.at_level("WARNING", logger=state_module.__name__):
        state = SearchState.resume(str(tmp_path), config,
                                   runtime={"backend": "ray", "cpus_per_trial": 1.0})
    state.close()
    assert state.runtime_changes == ["backend: 'local' -> 'ray'",
                                     "cpus_per_trial: '<absent>' -> 1.0",
                                     "threads: 2 -> '<absent>'"]
    assert "another runtime" in caplog.text and "bit-identical" in caplog.text
    runs = json.load(open(tmp_path / "meta.json"))["runs"]
    assert [r["runtime"]["backend"] for r in runs] == ["local", "ray"]


def test_runtime_of_a_search_and_threads_of_every_trial(reference):
    from ..search._tiny import tiny_search_cfg

    local = search_runtime(settings_of(tiny_search_cfg()))
    ray = search_runtime(settings_of(tiny_search_cfg(opts=["SEARCH.BACKEND", "ray"])))
    assert local["backend"] == "local" and local["threads"] >= 1 and "host" in local
    assert ray["backend"] == "ray" and ray["cpus_per_trial"] == 1.0 and "threads" not in ray
    assert all(r["threads"] >= 1 for r in _trials(reference))
    meta = json.load(open(reference / "meta.json"))
    assert meta["runs"][0]["runtime"]["threads"] == local["threads"]


class _Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass


def test_tensorboard_best_continues_after_a_resume(tmp_path):
    """Case 4: reward/best after a resume includes the trials logged before it."""
    state = SearchState.create(str(tmp_path), {"a": 1})
    state.save_controller(0, {}, __import__("torch").zeros(2, 1))
    for index, reward in enumerate([0.9, 0.2]):
        state.append_trial({"iteration": 0, "index": index, "theta": [0.0], "reward": reward,
                            "control_points": None, "metrics": {}, "seconds": None,
                            "status": "ok"})
    later = [{"iteration": 1, "index": i, "theta": [0.0], "reward": r, "status": "ok"}
             for i, r in enumerate([0.3, 0.4])]
    for record in later:
        state.append_trial(dict(record, control_points=None, metrics={}, seconds=None))
    board = _TensorBoard.__new__(_TensorBoard)  # a fresh board, as after a resume
    board.writer, board.state = _Writer(), state
    board(1, {"reward_mean": 0.35, "reward_max": 0.4, "baseline": 0.3, "mu": [0.5]}, later)
    assert ("reward/best", 0.9, 1) in board.writer.scalars
    state.close()


def test_unreachable_weights_are_refused_before_anything_is_written(tmp_path):
    """Case 6 (and 7 for the search): MODEL.WEIGHTS offline or missing."""
    out = tmp_path / "search"
    message = _refused(out, "MODEL.WEIGHTS", WEIGHTS_URL)
    assert "MODEL.WEIGHTS" in message and WEIGHTS_URL in message
    assert 'MODEL.WEIGHTS ""' in message and "local path" in message
    assert not out.exists() or os.listdir(out) == []
    message = _refused(out, "MODEL.WEIGHTS", str(tmp_path / "missing.pth"))
    assert "missing.pth" in message and "no such file" in message
    assert not out.exists() or os.listdir(out) == []


def test_train_net_offline_weights_is_one_clear_paragraph(tmp_path):
    """Case 7: tools/train_net.py with unreachable MODEL.WEIGHTS."""
    tool = load_tool("train_net")
    config = os.path.join(REPO, "configs", "shapes", "tiny_deeplab_ce.yaml")
    args = tool.default_argument_parser().parse_args(
        ["--config-file", config, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", WEIGHTS_URL,
         "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        tool.main(args)
    message = str(e.value)
    assert message.startswith("train_net.py: error: MODEL.WEIGHTS")
    assert WEIGHTS_URL in message and 'MODEL.WEIGHTS ""' in message
    assert os.listdir(tmp_path) == []  # not even config.yaml or log.txt


@pytest.mark.slow
def test_overwrite_starts_over_and_is_named_in_refusals(reference, tmp_path):
    """Case 6: a way to start over in a directory on purpose."""
    out = _copy(reference, tmp_path)
    (out / "notes.txt").write_text("mine")
    assert "--overwrite" in _refused(out)  # a new search without it
    assert "--overwrite" in _refused(out, "SEARCH.SEED", 2, resume=True)
    assert "exclude each other" in _refused(out, resume=True, flags=["--overwrite"])
    old_events = {n for n in os.listdir(out) if n.startswith("events.out")}
    _search(out, "SEARCH.SEED", 2, "SEARCH.ITERATIONS", 1, flags=["--overwrite"])
    assert (out / "notes.txt").read_text() == "mine"
    assert [(r["iteration"], r["index"]) for r in _trials(out)] == [(0, 0), (0, 1), (0, 2)]
    assert json.load(open(out / "best_params.json"))["provenance"]["seed"] == 2
    assert not old_events & set(os.listdir(out))  # the old search's TensorBoard events are gone


def test_refused_resume_names_the_exact_differing_keys(reference, tmp_path):
    """Case 9: not just the top-level section."""
    out = _copy(reference, tmp_path)
    message = _refused(out, "SEARCH.SEED", 2, "SOLVER.BASE_LR", 0.02, resume=True)
    assert "SEARCH.SEED: 1 -> 2" in message and "SOLVER.BASE_LR: 0.01 -> 0.02" in message


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    """Case 9: a directory that cannot be created (below a regular file)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    message = _refused(blocker / "search")
    assert "Not a directory" in message or "File exists" in message
    assert "Traceback" not in message


@pytest.mark.slow
def test_full_disk_mid_search_keeps_the_log_and_resumes(reference, tmp_path, monkeypatch):
    """Case 9: the disk fills while trials are logged."""
    out = tmp_path / "full"
    real, calls = SearchState.append_trial, []

    def disk_full_at_the_third(self, record):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, record)

    monkeypatch.setattr(SearchState, "append_trial", disk_full_at_the_third)
    message = _refused(out)
    assert "No space left on device" in message and "--resume" in message
    assert len(_trials(out)) == 2
    monkeypatch.setattr(SearchState, "append_trial", real)
    _search(out, resume=True)
    assert [strip_timing(r) for r in _trials(out)] == [strip_timing(r)
                                                       for r in _trials(reference)]


def test_search_whose_every_trial_diverged_fails(tmp_path):
    """Case 9: exit non-zero, no params file equal to the starting curves."""
    out = tmp_path / "diverged"
    message = _refused(out, "SOLVER.BASE_LR", 1e30, "SEARCH.ITERATIONS", 1)
    assert "every one of the 3 trials diverged" in message
    assert all(r["status"] == "diverged" for r in _trials(out))
    assert not os.path.exists(out / "final_mu_params.json")
    assert not os.path.exists(out / "best_params.json")
    assert os.path.exists(out / "reward_curve.png")


@pytest.mark.slow
def test_killed_ray_search_leaves_no_process_behind(tmp_path):
    """Case 9: Ray's dashboard and runtime-env agents used to outlive a kill -9 by minutes."""
    pytest.importorskip("ray")
    from segloss_d2.search.reaper import _alive, _descendants

    out = tmp_path / "ray"
    argv = _argv(out, "SEARCH.BACKEND", "ray", "SEARCH.PROXY.MAX_ITER", 30)
    search = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "search_net.py"),
                               *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (os.path.exists(out / "trials.jsonl") and _trials(out)):
            assert search.poll() is None and time.monotonic() < deadline, "no trial was logged"
            time.sleep(0.2)
        tree = _descendants(search.pid)
        assert len(tree) >= 4  # reaper, GCS, raylet, agents, workers
    finally:
        search.kill()
        search.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p, s) for p, s in tree.items()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p, s in tree.items() if _alive(p, s)]
    assert not left, f"processes {left} of the killed search are still running"


# ------------------------------------------------------------------------------------------------
# Refused before anything is written (issue 20's cases): one error line, an untouched directory


def _refused_untouched(out, *extra, resume=False):
    before = _snapshot(out) if os.path.isdir(out) else None
    message = _refused(out, *extra, resume=resume)
    assert "\n" not in message.strip(), message
    after = _snapshot(out) if os.path.isdir(out) else None
    assert after == before or (before is None and after == {}), sorted(after or {})
    return message


@pytest.mark.slow
def test_a_bad_loss_key_is_refused_before_the_state(tmp_path):
    message = _refused_untouched(tmp_path / "s", "MODEL.SEM_SEG_HEAD.SURROGATE.STATS", "batch")
    assert "MODEL.SEM_SEG_HEAD.SURROGATE.STATS" in message and "'batch'" in message
    # the corrected command then starts normally
    _search(tmp_path / "s")
    assert len(_trials(tmp_path / "s")) == 6


def test_a_corrupt_weights_file_is_refused_before_anything_is_written(tmp_path):
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"PK\x03\x04 not a checkpoint")
    message = _refused_untouched(tmp_path / "s", "MODEL.WEIGHTS", str(weights))
    assert "MODEL.WEIGHTS" in message and "not a readable checkpoint" in message
    tool = load_tool("train_net")
    out = tmp_path / "train"
    os.makedirs(out)
    args = tool.default_argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, "configs", "shapes", "tiny_deeplab_ce.yaml"),
         "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out)])
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        tool.main(args)
    assert os.listdir(out) == []


def test_a_trainer_that_cannot_build_the_proxy_is_refused_up_front(tmp_path):
    """detectron2's DefaultTrainer does not know DeepLab's WarmupPolyLR schedule."""
    message = _refused_untouched(tmp_path / "s", "SEARCH.TRAINER",
                                 "detectron2.engine.DefaultTrainer")
    assert "SEARCH.TRAINER 'detectron2.engine.DefaultTrainer' cannot build a proxy" in message
    assert "WarmupPolyLR" in message and "build_lr_scheduler" in message


def test_a_corrupt_reward_image_is_refused_naming_it(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    source = DatasetCatalog.get("segloss_shapes_val")[:6]
    dicts = []
    for i, d in enumerate(source):
        image = tmp_path / f"{i}.png"
        shutil.copy(d["file_name"], image)
        dicts.append(dict(d, file_name=str(image)))
    broken = tmp_path / "3.png"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    name = f"corrupt_reward_set_{os.getpid()}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(**{k: v for k, v in MetadataCatalog.get(
        "segloss_shapes_val").as_dict().items() if k != "name"})
    try:
        message = _refused_untouched(tmp_path / "s", "SEARCH.HOLDOUT.DATASET", name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert str(broken) in message and name in message and "image" in message
    assert "disk space" not in message


@pytest.mark.slow
def test_the_target_metric_spelling_does_not_change_the_search(reference, tmp_path):
    """The tiny search's target is "mIoU+BF1": resuming it as "miou+bf1" is the same search."""
    out = _copy(reference, tmp_path)
    _search(out, "SEARCH.TARGET_METRIC", "miou+bf1", resume=True)
    assert [strip_timing(r) for r in _trials(out)] == [strip_timing(r) for r in
                                                         _trials(reference)]


@pytest.mark.slow
def test_ctrl_c_ends_a_search_with_one_line_and_resume_finishes_it(reference, tmp_path,
                                                                   monkeypatch, capsys):
    from segloss_d2.search import backends

    out = tmp_path / "s"
    real, calls = backends.train_candidates, []

    def interrupted_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(backends, "train_candidates", interrupted_at_the_third)
    with pytest.raises(SystemExit) as e:
        _search(out)
    assert e.value.code == 130
    err = [line for line in capsys.readouterr().err.splitlines() if "search_net.py" in line]
    assert err == [f"search_net.py: interrupted; the 2 trials logged in {out} are kept: "
                   "continue with --resume"]
    monkeypatch.setattr(backends, "train_candidates", real)
    _search(out, resume=True)
    assert [strip_timing(r) for r in _trials(out)] == [strip_timing(r) for r in
                                                         _trials(reference)]
