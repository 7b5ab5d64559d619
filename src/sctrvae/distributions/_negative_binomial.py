"""Negative binomial whose log-likelihood skips the log-gamma terms of zero counts."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial
from torch.autograd.function import once_differentiable

from .._threads import few_entries_on_one_thread
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

    :meth:`log_prob_sum` gives the sum over genes, what a training step needs, with its
    gradients written out (:class:`_RowLogLikelihood`) instead of autograd's chain through each
    element-wise step. A dispersion given per gene (one row) stays a row there: its terms
    ``θ log θ`` and ``lgamma(θ)`` are taken once per gene, and the sums over cells are products
    with it.
    """

    #: Devices on which the zero-skipping paths run; elsewhere ``log_prob`` and ``sample`` are
    #: scvi-tools' own.
    sparse_devices = ("cpu",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the dispersion as given: scvi-tools' broadcast_all expands a per-gene row to μ's shape
        self._dispersion = kwargs.get("theta") if kwargs.get("theta") is not None else self.theta

    @torch.inference_mode()
    def sample(self, sample_shape: torch.Size | tuple | None = None) -> torch.Tensor:
        if self.mu.device.type not in self.sparse_devices:
            return super().sample(sample_shape)
        return sample_negative_binomial(self.mu, self.theta, tuple(sample_shape or ()))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.device.type not in self.sparse_devices:
            return super().log_prob(value)
        value, mu, theta, shape = self._rows(value)
        log_d = torch.log(mu + (theta + _EPS))
        zero_terms = theta * (torch.log(theta + _EPS) - log_d)
        count_terms, counts = _count_terms(value, mu, theta, log_d)
        zero_terms = zero_terms.expand(value.shape).reshape(-1)
        return zero_terms.index_put((counts["flat"],), count_terms, accumulate=True).reshape(shape)

    def log_prob_sum(
        self, value: torch.Tensor, nonzero: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log_prob(value).sum(-1)``: the log-likelihood of each cell (and sample of ``μ``).

        ``nonzero``, optional: the flat (row-major) positions of ``value``'s non-zero entries,
        where the caller has them at no cost (the training loaders add them to minibatches
        densified from CSR rows); otherwise ``nonzero()`` finds them, a pass over ``value``.
        Stored zeros among them are harmless: their terms are exactly 0.
        """
        if value.device.type not in self.sparse_devices:
            return super().log_prob(value).sum(-1)
        given_shape = value.shape
        value, mu, theta, shape = self._rows(value)
        nonzero = nonzero if given_shape == shape else None  # μ adds a sample axis: rescan
        return _RowLogLikelihood.apply(mu, theta, value, nonzero).reshape(shape[:-1])

    def _rows(self, value: torch.Tensor):
        """Counts, means and dispersion as rows (sample axes flattened) × genes.

        The dispersion is one row ``(1, genes)`` when given per gene, else one per row. Returns
        them with the broadcast shape.
        """
        if self._validate_args:
            self._validate_sample(value)
        theta = self._dispersion
        shape = torch.broadcast_shapes(value.shape, self.mu.shape, theta.shape)
        n_genes = shape[-1]
        value = value.expand(shape).reshape(-1, n_genes)
        mu = self.mu.expand(shape).reshape(-1, n_genes)
        per_gene = theta.numel() == n_genes
        theta = theta.reshape(1, n_genes) if per_gene else theta.expand(shape).reshape(-1, n_genes)
        return value, mu, theta, shape


def _count_terms(value, mu, theta, log_d, flat=None):
    """The non-zero counts, and their terms beyond the zero count's.

    ``x (log μ - log(θ + μ)) + lgamma(x + θ) - lgamma(θ) - lgamma(x + 1)``, with ``log_d`` the
    dense ``log(θ + μ)``; the log-gamma terms are ``log θ`` for ``x = 1``, and a per-gene ``θ``
    (one row) has its ``lgamma`` taken once per gene. ``flat``: the counts' flat positions, when
    known; found here otherwise. Returns the terms and a dict of the counts' flat positions
    (``flat``), genes, cells, values (``x``), means (``mu``), dispersions (``theta``), the
    positions among them of the counts other than 1 (``rest``) and those counts' values,
    dispersions and genes (``x_rest``, ``theta_rest``, ``genes_rest``). The work on the counts
    runs on one thread where they are few (:func:`~sctrvae._threads.few_entries_on_one_thread`).
    """
    n_genes = value.shape[-1]
    # flat positions: one-dimensional gathers are cheaper than (cell, gene) pairs
    if flat is None:
        flat = value.reshape(-1).nonzero().squeeze(1)
    with few_entries_on_one_thread(flat.numel()):
        cells = flat // n_genes  # one integer division (~3 ns an entry): genes from it
        counts = {"flat": flat, "genes": flat - cells * n_genes, "cells": cells}
        for key, dense in (("x", value), ("mu", mu), ("log_d", log_d)):
            counts[key] = dense.reshape(-1).index_select(0, flat)
        per_gene = theta.shape[0] == 1 < value.shape[0]
        if per_gene:
            counts["theta"] = theta[0].index_select(0, counts["genes"])
        else:
            counts["theta"] = theta.reshape(-1).index_select(0, flat)
        # lgamma(x + θ) - lgamma(θ) - lgamma(x + 1) is log θ for a count of 1 (most non-zero
        # counts): lgamma, ~4 ns an entry, runs on the other counts only
        counts["rest"] = rest = (counts["x"] != 1).nonzero().squeeze(1)
        for key in ("x", "theta", "genes"):  # kept for the backward's digamma terms
            counts[f"{key}_rest"] = counts[key].index_select(0, rest)
        x, theta_x = counts["x_rest"], counts["theta_rest"]
        if per_gene:  # lgamma(θ) once per gene
            lgamma_theta = torch.lgamma(theta[0]).index_select(0, counts["genes_rest"])
        else:
            lgamma_theta = torch.lgamma(theta_x)
        gamma_terms = torch.log(counts["theta"]).index_put_(
            (rest,), torch.lgamma(x + theta_x) - lgamma_theta - torch.lgamma(x + 1)
        )
        log_ratio = torch.log(counts["mu"] + _EPS) - counts.pop("log_d")
        terms = counts["x"] * log_ratio + gamma_terms
    return terms, counts


class _RowLogLikelihood(torch.autograd.Function):
    """Per-row negative binomial log-likelihood of ``value`` (rows × genes), backward written out.

    ``μ`` and ``value`` are rows × genes, ``θ`` one row (per gene) or rows × genes, ``flat``
    the flat positions of ``value``'s non-zero entries or ``None``. Autograd's
    chain through the element-wise formula keeps and revisits a rows × genes array at every step
    (about twenty passes over a 128 × 7k minibatch, forward and backward); here the forward keeps
    ``θ + μ``, its log and the non-zero counts' values, and the backward makes one dense array
    per gradient:

    - ``∂/∂μ = -θ / (θ + μ)``, plus ``x / μ - x / (θ + μ)`` at the non-zero counts;
    - ``∂/∂θ = log θ + 1 - log(θ + μ) - θ / (θ + μ)``, plus ``ψ(x + θ) - ψ(θ) - x / (θ + μ)`` at
      the non-zero counts; summed over rows (products with the upstream gradient) for one ``θ``
      per gene, whose ``ψ(θ)`` is then taken once per gene.
    """

    @staticmethod
    def forward(ctx, mu, theta, value, flat):
        theta_eps = theta + _EPS
        d = mu + theta_eps
        log_d = torch.log(d)
        log_theta = torch.log(theta_eps)
        per_gene = theta.shape[0] == 1 < mu.shape[0]
        if per_gene:  # Σ_g θ_g (log θ_g - log d_cg): one product with the row
            zero_terms = (theta * log_theta).sum() - log_d @ theta[0]
        else:
            zero_terms = (theta * (log_theta - log_d)).sum(-1)
        count_terms, counts = _count_terms(value, mu, theta, log_d, flat)
        ctx.per_gene, ctx.names = per_gene, list(counts)
        ctx.save_for_backward(theta, d, log_d, *counts.values())
        return zero_terms.index_add(0, counts["cells"], count_terms)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        theta, d, log_d, *saved = ctx.saved_tensors
        c = dict(zip(ctx.names, saved, strict=True))
        want_mu, want_theta = ctx.needs_input_grad[:2]
        at_counts = {}
        with few_entries_on_one_thread(c["flat"].numel()):
            c["d"] = c["mu"] + (c["theta"] + _EPS)
            grad_x = grad.index_select(0, c["cells"])
            if want_theta:
                # ψ(x + θ) - ψ(θ): 1 / θ for x = 1, ψ (~14 ns an entry) on the other counts only,
                # ψ(θ) once per gene and gathered there, as lgamma(θ) is in the forward
                x, theta_x = c["x_rest"], c["theta_rest"]
                digamma_theta = (
                    torch.digamma(theta[0]).index_select(0, c["genes_rest"])
                    if ctx.per_gene
                    else torch.digamma(theta_x)
                )
                psi = (
                    c["theta"]
                    .reciprocal()
                    .index_put_((c["rest"],), torch.digamma(x + theta_x) - digamma_theta)
                )
                at_counts["theta"] = grad_x * (psi - c["x"] / c["d"])
            if want_mu:
                x = c["x"]
                at_counts["mu"] = grad_x * (x / (c["mu"] + _EPS) - x / c["d"])
        ratio = theta / d  # θ / (θ + μ)
        grad_mu = grad_theta = None
        if want_theta:
            log_theta = torch.log(theta + _EPS) + theta / (theta + _EPS)
            if ctx.per_gene:
                grad_theta = log_theta[0] * grad.sum() - grad @ log_d - grad @ ratio
                grad_theta = grad_theta.index_add(0, c["genes"], at_counts["theta"]).unsqueeze(0)
            else:
                grad_theta = (log_theta - log_d - ratio) * grad[:, None]
                grad_theta.reshape(-1).index_add_(0, c["flat"], at_counts["theta"])
        if want_mu:
            grad_mu = ratio.mul_(grad.neg()[:, None])
            grad_mu.reshape(-1).index_add_(0, c["flat"], at_counts["mu"])
        return grad_mu, grad_theta, None, None
