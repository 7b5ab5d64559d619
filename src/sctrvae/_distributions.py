"""Negative binomial whose log-likelihood skips the log-gamma terms of zero counts."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial

_EPS = 1e-8


class SparseNegativeBinomial(NegativeBinomial):
    """:class:`scvi.distributions.NegativeBinomial` with a faster, equal ``log_prob`` on CPU.

    ``log p(x) = θ log θ - θ log(θ + μ) + x (log μ - log(θ + μ)) + lgamma(x + θ) - lgamma(θ)
    - lgamma(x + 1)``. Only the first two terms are non-zero for a zero count, so on CPU the rest
    (and the digamma gradients, the bulk of a training step there) are evaluated only where
    ``x > 0``: single-cell count matrices are mostly zeros. Finding those entries takes
    ``nonzero()``, whose output size the host must read; on an accelerator that read would stall
    every step, so there the dense formula of scvi-tools runs instead. Shapes broadcast as in
    scvi-tools (e.g. ``μ`` with a leading sample axis against per-cell counts). Everything else
    (mean, sampling, variance) is scvi-tools' own.
    """

    #: Devices on which the zero-skipping path runs; elsewhere ``log_prob`` is scvi-tools' own.
    sparse_devices = ("cpu",)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.device.type not in self.sparse_devices:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        mu, theta = self.mu, self.theta
        if value.shape != mu.shape:  # e.g. μ with a leading sample axis: broadcast as scvi-tools
            shape = torch.broadcast_shapes(value.shape, mu.shape)
            value, mu, theta = value.expand(shape), mu.expand(shape), theta.expand(shape)
        log_theta_mu = torch.log(theta + mu + _EPS)
        log_prob = theta * (torch.log(theta + _EPS) - log_theta_mu)
        nonzero = (value > 0).nonzero(as_tuple=True)
        x = value[nonzero]
        th = theta[nonzero]
        count_terms = (
            x * (torch.log(mu[nonzero] + _EPS) - log_theta_mu[nonzero])
            + torch.lgamma(x + th)
            - torch.lgamma(th)
            - torch.lgamma(x + 1)
        )
        return log_prob.index_put(nonzero, count_terms, accumulate=True)
