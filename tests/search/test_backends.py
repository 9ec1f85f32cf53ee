"""Search backends: local groups of K candidates, and Ray tasks giving the same rewards."""
import os

import pytest
import torch

pytest.importorskip("detectron2")

from segloss_d2.search import backends  # noqa: E402
from segloss_d2.search.backends import LocalBackend, build_backend  # noqa: E402
from segloss_d2.search.trial import initial_mu  # noqa: E402

from ._tiny import strip_timing, tiny_search_cfg  # noqa: E402


def _thetas(cfg, n, seed=11):
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor(initial_mu(cfg))
    return torch.stack([mu] + [(mu + 0.25 * torch.randn(mu.shape, generator=g)).clamp(0, 1)
                               for _ in range(n - 1)])


def _collect(backend, indices, thetas):
    reported = []
    backend(0, indices, thetas, lambda i, r: reported.append((i, r)))
    return reported


def test_local_backend_groups_and_reports_every_trial(monkeypatch):
    cfg = tiny_search_cfg(opts=["SEARCH.MODELS_PER_WORKER", 2])
    calls = []

    def fake_train(cfg, thetas, train_dicts, reward_dicts):
        calls.append(thetas.shape[0])
        return [{"reward": float(t[0])} for t in thetas]

    monkeypatch.setattr(backends, "train_candidates", fake_train)
    thetas = torch.rand(5, 20)
    reported = _collect(LocalBackend(cfg), [3, 4, 5, 6, 7], thetas)
    assert calls == [2, 2, 1]
    assert [i for i, _ in reported] == [3, 4, 5, 6, 7]
    assert [r["reward"] for _, r in reported] == [float(t[0]) for t in thetas]


def test_build_backend_rejects_unknown():
    with pytest.raises(ValueError, match="SEARCH.BACKEND"):
        build_backend(tiny_search_cfg(opts=["SEARCH.BACKEND", "slurm"]))


@pytest.fixture(scope="module")
def local_results():
    """Rewards of 3 candidates with the local backend, one model per group and 1 thread (the
    thread count of a 1-CPU Ray worker, so both run the same float operations)."""
    cfg = tiny_search_cfg(opts=["SEARCH.MODELS_PER_WORKER", 1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _collect(LocalBackend(cfg), [0, 1, 2], _thetas(cfg, 3))
    finally:
        torch.set_num_threads(threads)


def test_ray_backend_equals_local(local_results):
    if os.environ.get("SEGLOSS_REQUIRE_RAY") == "1":
        import ray
    else:
        ray = pytest.importorskip("ray")
    cfg = tiny_search_cfg(opts=["SEARCH.BACKEND", "ray", "SEARCH.MODELS_PER_WORKER", 2,
                                "SEARCH.RAY.CPUS_PER_TRIAL", 1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        backend = build_backend(cfg)
        reported = _collect(backend, [0, 1, 2], _thetas(cfg, 3))
        backend.close()
        assert ray.is_initialized()  # a backend leaves an instance it did not start running
    finally:
        ray.shutdown()
    assert sorted(i for i, _ in reported) == [0, 1, 2]
    by_index = {i: strip_timing(r) for i, r in reported}
    assert [by_index[i] for i in range(3)] == [strip_timing(r) for _, r in local_results]
    assert len({r["train_loss"] for _, r in local_results}) == 3
