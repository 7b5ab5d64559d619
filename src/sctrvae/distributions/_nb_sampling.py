"""Negative binomial draws for mostly-small means: inverse CDF, gamma-Poisson for the rest."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial

#: Entries drawn by inverse CDF: mean at most this, and ``μ / (θ + μ)`` (the ratio of the
#: probability recursion) at most :data:`MAX_RATIO`. Their variance is then at most twice the
#: mean, so a few dozen steps of the recursion resolve millions of draws. The walk takes a step
#: per count: on CPU it costs as much as a gamma-Poisson draw at a mean of about 1.5 and twice as
#: much at 4.
MAX_INVERSE_MEAN = 1.0
MAX_RATIO = 0.5


def sample_negative_binomial(
    mu: torch.Tensor, theta: torch.Tensor, sample_shape: tuple[int, ...] = ()
) -> torch.Tensor:
    """Draws of NB(mean ``μ``, inverse dispersion ``θ``), shaped ``sample_shape + μ/θ broadcast``.

    The gamma-Poisson mixture (scvi-tools' sampler) costs a gamma draw per entry, which torch
    computes one entry at a time on CPU. Decoded single-cell means are mostly far below one
    count, so here most entries take one uniform draw against ``P(0) = (θ / (θ + μ))^θ`` and only
    the non-zero ones walk up the recursion ``P(k) = P(k - 1) (k - 1 + θ) / k · μ / (θ + μ)``;
    entries with large means or long tails keep scvi-tools' gamma-Poisson draw. Both are exact up to
    float rounding.
    """
    shape = torch.Size(sample_shape) + torch.broadcast_shapes(mu.shape, theta.shape)
    mu = mu.expand(shape).reshape(-1)
    theta = theta.expand(shape).reshape(-1)
    counts = torch.zeros_like(mu)
    ratio = mu / (theta + mu)
    by_inverse = (mu <= MAX_INVERSE_MEAN) & (ratio <= MAX_RATIO)

    rest = (~by_inverse).nonzero().squeeze(1)
    counts[rest] = NegativeBinomial(mu=mu[rest], theta=theta[rest]).sample()

    uniform = torch.rand_like(mu)
    p_zero = torch.exp(theta * torch.log1p(-ratio))
    walking = (by_inverse & (uniform >= p_zero)).nonzero().squeeze(1)
    # float64 along the walk, P(0) included: the cumulative sum must reach every uniform draw
    u, th, r = (t[walking].double() for t in (uniform, theta, ratio))
    pk = torch.exp(th * torch.log1p(-r))
    cdf = pk.clone()
    k = 0
    while walking.numel():
        found = u < cdf
        counts[walking[found]] = k
        left = ~found
        walking, u, th, r, pk, cdf = (t[left] for t in (walking, u, th, r, pk, cdf))
        k += 1
        pk = pk * ((k - 1 + th) / k) * r
        cdf = cdf + pk
    return counts.reshape(shape)
