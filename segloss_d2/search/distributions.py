"""Truncated normal distribution used by the search controller (docs/method.md §4.2).

Pure torch, device-agnostic, differentiable in ``mu``. Every dimension is an independent truncated
normal ``N(mu, sigma^2)`` restricted to ``[low, high]`` (the search uses ``[0, 1]``).
"""
import math
from typing import Optional, Union

import torch

__all__ = ["TruncatedNormal"]

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# docs/method.md §4.2: 2p - 1 is clamped with the float32 machine epsilon, whatever mu's dtype.
_EPS_F32 = torch.finfo(torch.float32).eps


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate both near 0 and for very negative x."""
    return torch.where(
        x > -math.log(2.0),
        torch.log(-torch.expm1(x)),
        torch.log1p(-torch.exp(x)),
    )


class TruncatedNormal:
    """Independent per-dimension normal ``N(mu, sigma^2)`` truncated to ``[low, high]``.

    Args:
        mu (Tensor): location, any shape ``S`` (the search uses ``(D,)``), floating dtype. May
            require grad; :meth:`log_prob` is differentiable in it. Any finite real value is
            allowed, also outside ``[low, high]``.
        sigma (float or Tensor): scale, > 0, broadcastable to ``S``. It is not differentiated.
        low, high (float): the truncation bounds, ``low < high``.

    The normalizer ``log(Phi(beta) - Phi(alpha))`` is evaluated in log space with ``log_ndtr`` so
    that ``log_prob`` stays finite and accurate when the mass inside ``[low, high]`` is tiny (``mu``
    far outside the interval or ``sigma`` small).
    """

    def __init__(
        self,
        mu: torch.Tensor,
        sigma: Union[float, torch.Tensor],
        low: float = 0.0,
        high: float = 1.0,
    ):
        if not isinstance(mu, torch.Tensor) or not mu.is_floating_point():
            raise TypeError(f"mu must be a floating-point torch.Tensor, got {mu!r}")
        if not torch.isfinite(mu).all():
            raise ValueError(f"mu must be finite, got {mu}")
        sigma = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device)
        if not torch.isfinite(sigma).all() or (sigma <= 0).any():
            raise ValueError(f"sigma must be finite and > 0, got {sigma}")
        if not float(low) < float(high):
            raise ValueError(f"need low < high, got low={low}, high={high}")
        self.mu = mu
        self.sigma = sigma.detach().expand_as(mu)
        self.low = float(low)
        self.high = float(high)

    @property
    def _alpha_beta(self):
        return (self.low - self.mu) / self.sigma, (self.high - self.mu) / self.sigma

    def log_normalizer(self) -> torch.Tensor:
        """``log(Phi(beta) - Phi(alpha))``, shape ``S``: the log of the mass inside the bounds."""
        alpha, beta = self._alpha_beta
        # Reflect (Z(alpha, beta) = Z(-beta, -alpha)) so that only two cases remain.
        flip = beta < 0
        a = torch.where(flip, -beta, alpha)
        b = torch.where(flip, -alpha, beta)
        tail = a > 0  # the interval lies entirely on one side of mu
        # Each branch gets harmless dummy inputs where it is not selected, so that its gradient
        # (multiplied by zero in torch.where) can never be NaN.
        one = torch.ones_like(a)
        # a <= 0 <= b: erf(b) - erf(a) adds two non-negative terms, no cancellation.
        a_m = torch.where(tail, -one, a)
        b_m = torch.where(tail, one, b)
        middle = torch.log(0.5 * (torch.erf(b_m / _SQRT2) - torch.erf(a_m / _SQRT2)))
        # 0 < a < b: log(Phi(-a) - Phi(-b)) = log Phi(-a) + log(1 - Phi(-b) / Phi(-a)).
        a_t = torch.where(tail, a, one)
        b_t = torch.where(tail, b, 2.0 * one)
        log_sf_a = torch.special.log_ndtr(-a_t)
        right = log_sf_a + _log1mexp(torch.special.log_ndtr(-b_t) - log_sf_a)
        return torch.where(tail, right, middle)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-dimension log density (not summed over dimensions).

        Args:
            x (Tensor): values, shape broadcastable with ``S`` (e.g. ``(N, D)`` for ``mu`` of
                shape ``(D,)``).

        Returns:
            Tensor: broadcast shape of ``x`` and ``S``, dtype of ``mu``:
            ``-log(sigma) + log(phi((x - mu) / sigma)) - log(Phi(beta) - Phi(alpha))`` inside
            ``[low, high]`` (bounds included) and ``-inf`` outside. Differentiable in ``mu``.
        """
        x = torch.as_tensor(x, dtype=self.mu.dtype, device=self.mu.device)
        z = (x - self.mu) / self.sigma
        log_p = -torch.log(self.sigma) - _LOG_SQRT_2PI - 0.5 * z * z - self.log_normalizer()
        inside = (x >= self.low) & (x <= self.high)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               antithetic: bool = False) -> torch.Tensor:
        """Draw ``n`` independent samples with the inverse CDF of docs/method.md §4.2.

        ``alpha = (low - mu) / sigma``, ``beta = (high - mu) / sigma``, ``U ~ Uniform(0, 1)``,
        ``p = Phi(alpha) + U (Phi(beta) - Phi(alpha))``,
        ``v = clamp(2p - 1, -1 + eps, 1 - eps)`` (eps: float32 machine epsilon),
        ``x = clamp(mu + sqrt(2) erfinv(v) sigma, low, high)``.
        ``2p - 1`` is evaluated as ``erf(alpha/sqrt2) + U (erf(beta/sqrt2) - erf(alpha/sqrt2))``,
        which is the same number (``2 Phi(t) - 1 = erf(t / sqrt2)``) without rounding ``p`` first.

        Args:
            n (int): number of samples, >= 0.
            generator (torch.Generator, optional): source of ``U``. The uniforms are drawn on the
                generator's device and moved to ``mu``'s device, so a CPU generator gives the same
                samples for a CUDA ``mu``.
            antithetic (bool): draw ``ceil(n / 2)`` uniforms and use each ``U`` and ``1 - U``:
                rows ``2k`` and ``2k + 1`` are a mirrored pair (each other's reflection in
                probability around the median); an odd ``n`` drops the last mirror image.

        Returns:
            Tensor: shape ``(n, *S)``, dtype/device of ``mu``, values in ``[low, high]``; no grad.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        mu = self.mu.detach()
        device = generator.device if generator is not None else mu.device
        if antithetic:
            half = torch.rand(((n + 1) // 2, *mu.shape), generator=generator, dtype=mu.dtype,
                              device=device)
            u = torch.stack([half, 1.0 - half], dim=1).flatten(0, 1)[:n]
        else:
            u = torch.rand((n, *mu.shape), generator=generator, dtype=mu.dtype, device=device)
        u = u.to(mu.device)
        alpha, beta = self._alpha_beta
        erf_a = torch.erf(alpha.detach() / _SQRT2)
        erf_b = torch.erf(beta.detach() / _SQRT2)
        v = (erf_a + u * (erf_b - erf_a)).clamp(-1.0 + _EPS_F32, 1.0 - _EPS_F32)
        x = mu + _SQRT2 * torch.erfinv(v) * self.sigma
        return x.clamp(self.low, self.high)
