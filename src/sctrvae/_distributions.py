"""Negative binomial whose log-likelihood skips the log-gamma terms of zero counts."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial

_EPS = 1e-8


class SparseNegativeBinomial(NegativeBinomial):
    """:class:`scvi.distributions.NegativeBinomial` with a faster, equal ``log_prob``.

    ``log p(x) = θ log θ - θ log(θ + μ) + x (log μ - log(θ + μ)) + lgamma(x + θ) - lgamma(θ)
    - lgamma(x + 1)``. Only the first two terms are non-zero for a zero count, so the rest (and
    the digamma gradients, the bulk of a training step on CPU) are evaluated only where
    ``x > 0``: single-cell count matrices are mostly zeros. ``θ log θ`` is taken before ``θ`` is
    broadcast to the cells. Everything else (mean, sampling, variance) is scvi-tools' own.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        mu, theta = self.mu, self.theta
        log_theta_mu = torch.log(theta + mu + _EPS)
        log_prob = (theta * (torch.log(theta + _EPS) - log_theta_mu)).expand_as(value)
        nonzero = (value > 0).nonzero(as_tuple=True)
        x = value[nonzero]
        th = theta.expand_as(value)[nonzero]
        count_terms = (
            x * (torch.log(mu.expand_as(value)[nonzero] + _EPS) - log_theta_mu[nonzero])
            + torch.lgamma(x + th)
            - torch.lgamma(th)
            - torch.lgamma(x + 1)
        )
        return log_prob.index_put(nonzero, count_terms, accumulate=True)
