import math

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm

from segloss_d2.search.distributions import TruncatedNormal

MUS = [1e-4, 0.02, 0.25, 0.5, 0.9, 0.999, -0.5, 1.7, 5.0]
SIGMAS = [0.05, 0.2, 1.0, 5.0]


def _scipy(mu, sigma):
    return truncnorm((0 - mu) / sigma, (1 - mu) / sigma, loc=mu, scale=sigma)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_log_prob_matches_scipy(dtype, tol):
    x = np.linspace(0.0, 1.0, 41)
    for mu in MUS:
        for sigma in SIGMAS:
            dist = TruncatedNormal(torch.tensor(mu, dtype=dtype), sigma)
            got = dist.log_prob(torch.tensor(x, dtype=dtype)).double().numpy()
            ref = _scipy(mu, sigma).logpdf(x)
            # float32 carries ~1e-7 relative error on log-densities of magnitude up to ~1e3
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=f"{mu=} {sigma=}")


def test_log_prob_is_per_dimension_and_broadcasts():
    mu = torch.tensor([0.1, 0.5, 0.95])
    sigma = torch.tensor([0.2, 0.3, 0.1])
    x = torch.rand(7, 3)
    got = TruncatedNormal(mu, sigma).log_prob(x)
    assert got.shape == (7, 3)
    for d in range(3):
        ref = _scipy(mu[d].item(), sigma[d].item()).logpdf(x[:, d].numpy())
        np.testing.assert_allclose(got[:, d].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_log_prob_is_minus_inf_outside_and_finite_on_bounds():
    dist = TruncatedNormal(torch.tensor([0.3]), 0.2)
    out = dist.log_prob(torch.tensor([[-1e-6], [0.0], [1.0], [1.0 + 1e-6]]))[:, 0]
    assert out[0] == -math.inf and out[3] == -math.inf
    assert torch.isfinite(out[1:3]).all()


def test_log_prob_gradient_in_mu_matches_finite_differences():
    x = torch.tensor([0.0, 0.1, 0.5, 0.97, 1.0, 1.5], dtype=torch.float64)
    for mu0 in [1e-3, 0.4, 0.999, -2.0, 3.0]:
        mu = torch.tensor(mu0, dtype=torch.float64, requires_grad=True)
        TruncatedNormal(mu, 0.2).log_prob(x)[:5].sum().backward()
        h = 1e-6
        fd = (
            TruncatedNormal(torch.tensor(mu0 + h, dtype=torch.float64), 0.2).log_prob(x)[:5].sum()
            - TruncatedNormal(torch.tensor(mu0 - h, dtype=torch.float64), 0.2).log_prob(x)[:5].sum()
        ) / (2 * h)
        assert torch.isfinite(mu.grad)
        assert mu.grad.item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-6)


def test_gradient_is_finite_for_extreme_mu():
    # every branch of the normalizer must stay NaN-free, also where it is not selected
    mu = torch.tensor([-40.0, -3.0, 0.0, 0.5, 1.0, 4.0, 40.0], requires_grad=True)
    TruncatedNormal(mu, 0.2).log_prob(torch.full((7,), 0.5)).sum().backward()
    assert torch.isfinite(mu.grad).all()


@pytest.mark.parametrize("mu,sigma", [(0.5, 0.2), (0.02, 0.2), (0.97, 0.2), (0.3, 0.05),
                                      (0.8, 1.0), (-0.3, 0.3)])
def test_samples_in_bounds_and_moments_match_scipy(mu, sigma):
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x = TruncatedNormal(torch.tensor([mu], dtype=torch.float64), sigma).sample(n, gen)
    assert x.shape == (n, 1) and x.dtype == torch.float64
    assert (x >= 0).all() and (x <= 1).all()
    ref = _scipy(mu, sigma)
    se = ref.std() / math.sqrt(n)
    assert abs(x.mean().item() - ref.mean()) < 5 * se
    assert x.std().item() == pytest.approx(ref.std(), rel=0.01)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 5e-5)])
def test_sample_follows_spec_inverse_cdf(dtype, tol):
    # spec 4.2 written out literally in float64 with the same uniforms
    mu = torch.tensor([0.01, 0.4, 0.99, 0.5], dtype=dtype)
    sigma = torch.tensor([0.2, 0.1, 0.2, 0.05], dtype=dtype)
    x = TruncatedNormal(mu, sigma).sample(1000, torch.Generator().manual_seed(3))
    u = torch.rand((1000, 4), generator=torch.Generator().manual_seed(3), dtype=dtype).double()
    mu, sigma = mu.double(), sigma.double()
    cdf = torch.special.ndtr
    p = cdf(-mu / sigma) + u * (cdf((1 - mu) / sigma) - cdf(-mu / sigma))
    eps = torch.finfo(torch.float32).eps
    v = (2 * p - 1).clamp(-1 + eps, 1 - eps)
    ref = (mu + math.sqrt(2) * torch.erfinv(v) * sigma).clamp(0, 1)
    assert x.dtype == dtype
    torch.testing.assert_close(x.double(), ref, rtol=0, atol=tol)


def test_sample_is_seeded_and_device_independent_shape():
    mu = torch.full((4,), 0.5)
    a = TruncatedNormal(mu, 0.2).sample(5, torch.Generator().manual_seed(7))
    b = TruncatedNormal(mu, 0.2).sample(5, torch.Generator().manual_seed(7))
    c = TruncatedNormal(mu, 0.2).sample(5, torch.Generator().manual_seed(8))
    assert a.shape == (5, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert TruncatedNormal(mu, 0.2).sample(0).shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs,err",
    [
        (dict(mu=torch.tensor([0.5]), sigma=0.0), ValueError),
        (dict(mu=torch.tensor([0.5]), sigma=-1.0), ValueError),
        (dict(mu=torch.tensor([0.5]), sigma=0.2, low=1.0, high=0.0), ValueError),
        (dict(mu=torch.tensor([float("nan")]), sigma=0.2), ValueError),
        (dict(mu=torch.tensor([1]), sigma=0.2), TypeError),
        (dict(mu=[0.5], sigma=0.2), TypeError),
    ],
)
def test_bad_arguments(kwargs, err):
    with pytest.raises(err):
        TruncatedNormal(**kwargs)


def test_bad_sample_count():
    with pytest.raises(ValueError, match="n must be"):
        TruncatedNormal(torch.tensor([0.5]), 0.2).sample(-1)
