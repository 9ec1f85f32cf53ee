"""tools/search_net.py: a run from the command line, and clear errors that overwrite nothing."""
import json
import os

import pytest

pytest.importorskip("detectron2")

from .._tools import load_tool  # noqa: E402
from ._tiny import TINY_OPTS, TINY_SEARCH_CONFIG  # noqa: E402


def _main(out, *extra, resume=False, flags=()):
    argv = ["--config-file", TINY_SEARCH_CONFIG] + (["--resume"] if resume else []) + list(flags)
    opts = TINY_OPTS + ["SEARCH.ITERATIONS", 1, "SEARCH.SAMPLES_PER_ITER", 2,
                        "SEARCH.PROXY.MAX_ITER", 2, "OUTPUT_DIR", str(out)] + list(extra)
    tool = load_tool("search_net")
    return tool.main(tool.argument_parser().parse_args(argv + [str(v) for v in opts]))


def _snapshot(directory):
    """{relative path: bytes} of every file under ``directory``."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    result = _main(out)
    return out, result


@pytest.mark.slow
def test_cli_runs_a_search(finished):
    out, result = finished
    for name in ("trials.jsonl", "best_params.json", "final_mu_params.json", "reward_curve.png",
                 "config.yaml", "log.txt"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "trial 2/2" in log and "ETA" in log and "best_params" in log
    with open(os.path.join(out, "best_params.json")) as f:
        assert json.load(f)["provenance"]["config_file"] == TINY_SEARCH_CONFIG
    assert result.best_trial is not None


@pytest.mark.parametrize("opts,message", [
    (["SEARCH.TARGET_METRIC", "Dice"], "SEARCH.TARGET_METRIC"),
    (["SEARCH.RATIO", "both"], "SEARCH.RATIO"),
    (["SEARCH.BASELINE", "zero"], "SEARCH.BASELINE"),
    (["SEARCH.BACKEND", "dask"], "SEARCH.BACKEND"),
    (["SEARCH.SAMPLES_PER_ITER", 0], "SEARCH.SAMPLES_PER_ITER"),
    (["SEARCH.HOLDOUT.SIZE", 400], "HOLDOUT.SIZE"),
    (["DATASETS.TRAIN", "('voc_missing_dataset',)"], "voc_missing_dataset"),
    (["SEARCH.HOLDOUT.DATASET", "nope_val"], "nope_val"),
    (["SEARCH.NO_SUCH_KEY", 1], "NO_SUCH_KEY"),
])
@pytest.mark.parametrize("resume", [False, True])
def test_bad_config_is_a_clear_error_and_writes_nothing(finished, opts, message, resume, capsys):
    out, _ = finished
    before = _snapshot(out)
    with pytest.raises(SystemExit) as e:
        _main(out, *opts, resume=resume)
    assert message in str(e.value) and "search_net.py: error" in str(e.value)
    assert _snapshot(out) == before


def test_resume_of_a_foreign_or_corrupt_directory(finished, tmp_path):
    out, _ = finished
    before = _snapshot(out)
    with pytest.raises(SystemExit) as e:  # same directory, other seed: another search
        _main(out, "SEARCH.SEED", 2, resume=True)
    assert "belongs to another search" in str(e.value)
    with pytest.raises(SystemExit) as e:  # a finished search without --resume
        _main(out)
    assert "already holds search state" in str(e.value)
    assert _snapshot(out) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        _main(empty, resume=True)
    assert "holds no search state" in str(e.value) and os.listdir(empty) == []

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("meta.json", "trials.jsonl", "controller.pt"):
        with open(os.path.join(out, name), "rb") as src, open(corrupt / name, "wb") as dst:
            dst.write(src.read())
    with open(corrupt / "controller.pt", "wb") as f:
        f.write(b"not a checkpoint")
    before = _snapshot(corrupt)
    with pytest.raises(SystemExit) as e:
        _main(corrupt, resume=True)
    assert "corrupt" in str(e.value)
    assert _snapshot(corrupt) == before


@pytest.mark.parametrize("flags", [["--num-gpus", "2"], ["--num-machines", "2"]])
def test_detectron2_launcher_options_are_rejected(tmp_path, flags):
    with pytest.raises(SystemExit) as e:
        _main(tmp_path, flags=flags)
    message = str(e.value)
    assert "search_net.py: error" in message and f"{flags[0]} 2" in message
    assert "SEARCH.BACKEND ray" in message and "SEARCH.MODELS_PER_WORKER" in message
    assert os.listdir(tmp_path) == []
