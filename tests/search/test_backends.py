"""Search backends: local groups of K candidates, and Ray tasks giving the same rewards."""
import json
import os

import pytest
import torch

pytest.importorskip("detectron2")

from segloss_d2.search import backends  # noqa: E402
from segloss_d2.search.backends import LocalBackend, RayBackend, build_backend  # noqa: E402
from segloss_d2.search.loop import run_search  # noqa: E402
from segloss_d2.search.ppo import PPOController  # noqa: E402
from segloss_d2.search.space import SearchSpace  # noqa: E402
from segloss_d2.search.state import SearchState  # noqa: E402

from ._tiny import settings_of, strip_timing, tiny_search_cfg  # noqa: E402


def _thetas(cfg, n, seed=11):
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor(SearchSpace.from_config(cfg).initial_mu())
    return torch.stack([mu] + [(mu + 0.25 * torch.randn(mu.shape, generator=g)).clamp(0, 1)
                               for _ in range(n - 1)])


def _collect(backend, indices, thetas):
    reported = []
    backend(0, indices, thetas, lambda i, r: reported.append((i, r)))
    return reported


def test_local_backend_groups_and_reports_every_trial(monkeypatch):
    cfg = tiny_search_cfg(opts=["SEARCH.MODELS_PER_WORKER", 2])
    calls = []

    def fake_train(cfg, thetas, train_dicts, reward_dicts, seed=None, halving=True):
        calls.append((thetas.shape[0], seed, halving))
        return [{"reward": float(t[0])} for t in thetas]

    monkeypatch.setattr(backends, "train_candidates", fake_train)
    thetas = torch.rand(5, 20)
    reported = _collect(LocalBackend(settings_of(cfg)), [3, 4, 5, 6, 7], thetas)
    assert calls == [(2, None, True), (2, None, True), (1, None, True)]
    assert [i for i, _ in reported] == [3, 4, 5, 6, 7]
    assert [r["reward"] for _, r in reported] == [float(t[0]) for t in thetas]
    # a group never mixes proxy seeds (it trains on one data stream); the selection stage
    # trains every proxy fully
    calls.clear()
    LocalBackend(settings_of(cfg))(3, [0, 1, 2, 3, 4], thetas, lambda i, r: None,
                                   seeds=[5, 5, 5, 7, 7],
                      stage="selection")
    assert calls == [(2, 5, False), (1, 5, False), (2, 7, False)]


def test_build_backend_rejects_unknown():
    with pytest.raises(ValueError, match="SEARCH.BACKEND"):
        build_backend(settings_of(tiny_search_cfg(opts=["SEARCH.BACKEND", "slurm"])))


@pytest.fixture(scope="module")
def local_results():
    """Rewards of 3 candidates with the local backend, one model per group and 1 thread (the
    thread count of a 1-CPU Ray worker, so both run the same float operations)."""
    cfg = tiny_search_cfg(opts=["SEARCH.MODELS_PER_WORKER", 1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _collect(LocalBackend(settings_of(cfg)), [0, 1, 2], _thetas(cfg, 3))
    finally:
        torch.set_num_threads(threads)


class _FakeRay:
    """The part of the ``ray`` API RayBackend uses, run eagerly in this process: a task runs when
    submitted (its exception is kept for ``get``) and ``wait`` hands tasks back newest first."""

    class _Ref:
        def __init__(self, value=None, error=None):
            self.value, self.error = value, error

    def __init__(self, fail_calls=()):
        self.fail_calls, self.calls = set(fail_calls), []

    def is_initialized(self):
        return True

    def remote(self, **options):
        def decorate(fn):
            fake = self

            class Remote:
                @staticmethod
                def remote(*args):
                    fake.calls.append(args[1])
                    if len(fake.calls) - 1 in fake.fail_calls:
                        return _FakeRay._Ref(error=OSError("worker node lost"))
                    return _FakeRay._Ref(value=fn(*args))

            return Remote

        return decorate

    def wait(self, refs, num_returns):
        return refs[-num_returns:], refs[:-num_returns]

    def get(self, ref):
        if ref.error is not None:
            raise ref.error
        return ref.value


def _fake_train(cfg, thetas, train_dicts, reward_dicts, seed=None, halving=True):
    return [{"reward": float(t.mean()), "metrics": {"mean": float(t.mean())}} for t in thetas]


@pytest.fixture
def fake_ray(monkeypatch):
    """RayBackend on a _FakeRay whose tasks run _ray_train_group with _fake_train."""
    monkeypatch.setattr(backends, "train_candidates", _fake_train)
    monkeypatch.setattr(backends, "search_datasets", lambda cfg: ([], []))

    def make(fail_calls=(), models_per_worker=1):
        ray = _FakeRay(fail_calls)
        monkeypatch.setattr(backends, "import_ray", lambda: ray)
        cfg = tiny_search_cfg(opts=["SEARCH.BACKEND", "ray",
                                    "SEARCH.MODELS_PER_WORKER", models_per_worker])
        return RayBackend(settings_of(cfg)), ray

    return make


def test_ray_failed_tasks_report_the_others_then_raise(fake_ray):
    backend, ray = fake_ray(fail_calls=[0, 2], models_per_worker=2)
    thetas = torch.rand(6, 20)
    reported = []
    with pytest.raises(RuntimeError, match=r"iteration 0 failed for trials \[3, 4, 7, 8\]") as e:
        backend(0, [3, 4, 5, 6, 7, 8], thetas, lambda i, r: reported.append((i, r)))
    assert "OSError: worker node lost" in str(e.value)
    assert isinstance(e.value.__cause__, OSError)
    assert [i for i, _ in reported] == [5, 6]  # only the group that succeeded, nothing made up
    assert [r["reward"] for _, r in reported] == pytest.approx([float(thetas[2].mean()),
                                                                float(thetas[3].mean())])


def test_resume_after_ray_failure_reruns_exactly_the_failed_trials(fake_ray, tmp_path):
    config, iters, m = {"synthetic": True}, 2, 4

    def search(directory, backend, fresh):
        state = (SearchState.create if fresh else SearchState.resume)(str(directory), config)
        return run_search(PPOController(20, 0.5, ppo_steps=5, seed=0), state, backend, iters, m,
                          log=lambda line: None)

    reference = search(tmp_path / "ref", fake_ray()[0], True)

    out = tmp_path / "failed"
    backend, ray = fake_ray(fail_calls=[1, 3])  # trials 1 and 3 of iteration 0
    with pytest.raises(RuntimeError, match=r"trials \[1, 3\]"):
        search(out, backend, True)
    state = SearchState.resume(str(out), config)
    assert sorted(state.finished_trials(0)) == [0, 2]
    ckpt = state.load_controller()
    assert ckpt["iteration"] == 0  # the controller was not updated with the partial iteration
    samples = ckpt["samples"]

    backend, ray = fake_ray()
    result = search(out, backend, False)
    assert ray.calls[:2] == [samples[[1]].tolist(), samples[[3]].tolist()]
    assert len(ray.calls) == 2 + m
    assert result == reference
    with open(out / "trials.jsonl") as f, open(tmp_path / "ref" / "trials.jsonl") as g:
        ours, ref = [json.loads(line) for line in f], [json.loads(line) for line in g]
    key = lambda r: (r["iteration"], r["index"])  # noqa: E731
    assert sorted(ours, key=key) == sorted(ref, key=key)


@pytest.fixture(scope="module")
def real_ray():
    if os.environ.get("SEGLOSS_REQUIRE_RAY") == "1":
        import ray
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_backend_equals_local(local_results, real_ray):
    cfg = tiny_search_cfg(opts=["SEARCH.BACKEND", "ray", "SEARCH.MODELS_PER_WORKER", 2,
                                "SEARCH.RAY.CPUS_PER_TRIAL", 1])
    backend = build_backend(settings_of(cfg))
    reported = _collect(backend, [0, 1, 2], _thetas(cfg, 3))
    backend.close()
    assert real_ray.is_initialized()  # a backend leaves an instance it did not start running
    assert sorted(i for i, _ in reported) == [0, 1, 2]
    by_index = {i: strip_timing(r) for i, r in reported}
    assert [by_index[i] for i in range(3)] == [strip_timing(r) for _, r in local_results]
    assert len({r["train_loss"] for _, r in local_results}) == 3


@pytest.mark.slow
def test_ray_task_that_raises_is_not_logged(real_ray):
    cfg = tiny_search_cfg(opts=["SEARCH.BACKEND", "ray", "SEARCH.MODELS_PER_WORKER", 1,
                                "SEARCH.RAY.CPUS_PER_TRIAL", 1])
    thetas = _thetas(cfg, 2)
    thetas[1, 3] = float("nan")  # the task of trial 1 raises in SearchSpace.to_params
    backend = build_backend(settings_of(cfg))
    reported = []
    with pytest.raises(RuntimeError, match=r"(?s)trials \[1\].*theta must be finite"):
        backend(0, [0, 1], thetas, lambda i, r: reported.append((i, r)))
    assert [i for i, _ in reported] == [0] and reported[0][1]["status"] == "ok"
