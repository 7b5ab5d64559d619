"""Negative binomial whose log-likelihood skips the log-gamma terms of zero counts."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial

from ._nb_sampling import sample_negative_binomial

_EPS = 1e-8


class SparseNegativeBinomial(NegativeBinomial):
    """:class:`scvi.distributions.NegativeBinomial` with a faster, equal ``log_prob`` on CPU.

    ``log p(x) = θ log θ - θ log(θ + μ) + x (log μ - log(θ + μ)) + lgamma(x + θ) - lgamma(θ)
    - lgamma(x + 1)``. Only the first two terms are non-zero for a zero count, so on CPU the rest
    (and the digamma gradients, the bulk of a training step there) are evaluated only where
    ``x > 0``: single-cell count matrices are mostly zeros. Finding those entries takes
    ``nonzero()``, whose output size the host must read; on an accelerator that read would stall
    every step, so there the dense formula of scvi-tools runs instead. Shapes broadcast as in
    scvi-tools (e.g. ``μ`` with a leading sample axis against per-cell counts). On CPU, draws
    come from :func:`~sctrvae.distributions.sample_negative_binomial` (same distribution, a
    fraction of the cost for mostly-zero counts). Everything else (mean, variance) is
    scvi-tools' own.

    :meth:`log_prob_sum` gives the sum over genes, what a training step needs, without forming
    the per-entry array of the count terms.
    """

    #: Devices on which the zero-skipping paths run; elsewhere ``log_prob`` and ``sample`` are
    #: scvi-tools' own.
    sparse_devices = ("cpu",)

    @torch.inference_mode()
    def sample(self, sample_shape: torch.Size | tuple | None = None) -> torch.Tensor:
        if self.mu.device.type not in self.sparse_devices:
            return super().sample(sample_shape)
        return sample_negative_binomial(self.mu, self.theta, tuple(sample_shape or ()))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.device.type not in self.sparse_devices:
            return super().log_prob(value)
        zero_terms, (cells, genes), count_terms, shape = self._terms(value)
        return zero_terms.index_put((cells, genes), count_terms, accumulate=True).reshape(shape)

    def log_prob_sum(self, value: torch.Tensor) -> torch.Tensor:
        """``log_prob(value).sum(-1)``: the log-likelihood of each cell (and sample of ``μ``)."""
        if value.device.type not in self.sparse_devices:
            return super().log_prob(value).sum(-1)
        zero_terms, (cells, _), count_terms, shape = self._terms(value)
        per_cell = zero_terms.sum(-1).index_add(0, cells, count_terms)
        return per_cell.reshape(shape[:-1])

    def _terms(self, value: torch.Tensor):
        """The terms of every entry, as rows of cells (sample axes flattened) × genes.

        Returns the dense ``θ log θ - θ log(θ + μ)``, the positions of the non-zero counts, the
        rest of their terms there, and the broadcast shape.
        """
        if self._validate_args:
            self._validate_sample(value)
        mu, theta = self.mu, self.theta
        shape = torch.broadcast_shapes(value.shape, mu.shape, theta.shape)
        n_genes = shape[-1]
        value = value.expand(shape).reshape(-1, n_genes)
        mu = mu.expand(shape).reshape(-1, n_genes)
        # a dispersion per gene stays a row (broadcast), not an array of cells × genes
        per_gene = theta.numel() == n_genes
        theta = theta.reshape(1, n_genes) if per_gene else theta.expand(shape).reshape(-1, n_genes)
        log_theta_mu = torch.log(mu + (theta + _EPS))
        zero_terms = theta * (torch.log(theta + _EPS) - log_theta_mu)
        # flat positions: one-dimensional gathers are cheaper than (cell, gene) pairs
        flat = value.reshape(-1).nonzero().squeeze(1)
        cells, genes = flat // n_genes, flat % n_genes
        x, mu_x = value.reshape(-1)[flat], mu.reshape(-1)[flat]
        if per_gene:  # lgamma(θ) (and its digamma gradient) once per gene, not per count
            th, lgamma_th = theta[0, genes], torch.lgamma(theta[0])[genes]
        else:
            th = theta[cells, genes]
            lgamma_th = torch.lgamma(th)
        count_terms = (
            x * (torch.log(mu_x + _EPS) - torch.log(mu_x + (th + _EPS)))
            + torch.lgamma(x + th)
            - lgamma_th
            - torch.lgamma(x + 1)
        )
        return zero_terms, (cells, genes), count_terms, shape
